"""A prior step's float32 CPU product that hides the weight's transfer behind its compute.

At a few dozen rows a full-size prior step reads its weights from memory, and MKL's packed product
then costs its compute plus that transfer; ``cpu_kernel.c`` prefetches each thread's next panel of
32 columns while it multiplies the current one (1.2-1.4x on streamed 40-row products, as fast hot;
``docs/benchmarks.md``). It is compiled on first use with the system's C compiler into the lass
cache (``kernels/``) and loaded with ctypes, linked against the OpenMP runtime torch has loaded so
that both share one pool of threads. Where any of that cannot be done (not Linux x86-64, no
compiler, no AVX-512, torch without GNU OpenMP, ``LASS_CPU_KERNEL=0``), :func:`load` returns None
and the step keeps MKL's pack: the kernel is an optimisation, never a requirement.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from .registry import cache_dir

SOURCE = Path(__file__).with_name("cpu_kernel.c")
PANEL = 32  # columns of a panel (cpu_kernel.c)
# Rows up to which a step uses the kernel: with more, each weight byte feeds enough arithmetic that
# the product hardly waits on memory, and MKL's own kernel was as fast or up to 7 % faster.
MAX_ROWS = 64
_FLAGS = ("-O3", "-fPIC", "-fopenmp")
_LOADING = threading.Lock()  # two priors stepping side by side ask at once; one build


def _torch_openmp() -> str | None:
    """The GNU OpenMP library this process has loaded (torch's), None if none or another runtime too."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    mapped = (line.split(None, 5) for line in maps.splitlines())
    libraries = {fields[5] for fields in mapped if len(fields) == 6 and ".so" in fields[5]}  # the file's path
    names = {Path(path).name for path in libraries}
    gomp = sorted(path for path in libraries if Path(path).name.startswith("libgomp"))
    if len(gomp) != 1 or any(name.startswith(("libiomp", "libomp")) for name in names):
        return None
    return gomp[0]


C_COMPILER = ("CC", "cc", "gcc", "clang")  # the variable naming it first, then programs on the PATH


def find_compiler(variable: str, *programs: str) -> str | None:
    """The compiler ``$variable`` names, else the first of ``programs`` on the PATH (None: none)."""
    found = (shutil.which(name) for name in (os.environ.get(variable), *programs) if name)
    return next((path for path in found if path), None)


def _build(compiler: str, openmp: str) -> Path:
    """The compiled library in the cache, built once per source, compiler and OpenMP runtime; written
    to a temporary name of its own and renamed, so that processes starting together (on several
    machines sharing the cache too) never load half a file."""
    inputs = [SOURCE.read_bytes(), compiler.encode(), openmp.encode(), *map(str.encode, _FLAGS)]
    digest = hashlib.sha256(b"\0".join(inputs))
    target = cache_dir() / "kernels" / f"cpu_kernel-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)  # unique on a shared cache
    os.close(handle)
    temporary, objects = Path(name), Path(f"{name}.o")
    try:  # compiled with OpenMP, linked against torch's runtime itself rather than the compiler's
        compile_ = [compiler, *_FLAGS, "-c", str(SOURCE), "-o", str(objects)]
        link = [compiler, "-shared", str(objects), openmp, "-o", str(temporary)]  # torch has it loaded already
        for command in (compile_, link):
            subprocess.run(command, check=True, capture_output=True, timeout=300)
        os.replace(temporary, target)
    finally:
        objects.unlink(missing_ok=True)
        temporary.unlink(missing_ok=True)
    return target


def load() -> ctypes.CDLL | None:
    """The kernel's library, or None where it cannot run here (then the reason is not an error)."""
    with _LOADING:
        return _load()


@functools.cache
def _load() -> ctypes.CDLL | None:
    if os.environ.get("LASS_CPU_KERNEL", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    compiler, openmp = find_compiler(*C_COMPILER), _torch_openmp()
    if compiler is None or openmp is None:
        return None
    try:
        library = ctypes.CDLL(str(_build(compiler, openmp)))
    except (OSError, subprocess.SubprocessError):  # no cache to write, a failed or stuck compiler
        return None
    if not library.lass_kernel_supported():
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_long
    library.lass_panel_product.argtypes = [pointer, size, ctypes.c_int, ctypes.c_int, pointer, ctypes.c_int,
                                           pointer, pointer, size, ctypes.c_int]  # fmt: skip
    library.lass_panel_product.restype = None
    return library


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (n_in, n_out) as the kernel's panels (ceil(n_out / 32), n_in, 32), zero past n_out."""
    n_in, n_out = weight.shape
    count = -(-n_out // PANEL)
    padded = weight.new_zeros(n_in, count * PANEL)
    padded[:, :n_out] = weight
    return padded.view(n_in, count, PANEL).transpose(0, 1).contiguous()


def product(x: torch.Tensor, panels: torch.Tensor, n_out: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight + bias`` for x (rows, n_in) float32 on the CPU, the weight as :func:`pack` gave it,
    on as many threads as torch uses in this thread."""
    library = _load()  # already loaded, as a pack exists: the cached answer, without the lock
    assert library is not None, "the CPU kernel is not available here"
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows, n_in = x.shape
    if rows == 0 or n_in == 0:  # nothing to multiply (the kernel expects some)
        return torch.zeros(rows, n_out) if bias is None else bias.expand(rows, n_out).clone()
    out = torch.empty(rows, n_out)
    bias = None if bias is None else bias.contiguous()  # held until the call returns
    library.lass_panel_product(x.data_ptr(), x.stride(0), rows, n_in, panels.data_ptr(), n_out,
                               None if bias is None else bias.data_ptr(),
                               out.data_ptr(), n_out, torch.get_num_threads())  # fmt: skip
    return out


__all__ = ["MAX_ROWS", "load", "pack", "product"]
