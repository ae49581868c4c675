"""The compiled CPU product (lass_cli/cpu_kernel.c): exact enough, built once, optional."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lass_cli import cpu_kernel

KERNEL = pytest.mark.skipif(
    cpu_kernel.load() is None, reason="the CPU kernel does not run here (needs Linux x86-64, a C compiler, AVX-512)"
)


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x.double() @ weight.double()
    return (out if bias is None else out + bias.double()).float()


@KERNEL
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "rows, n_in, n_out",
    [(1, 7, 5), (3, 64, 33), (10, 100, 64), (11, 256, 84), (40, 1024, 768), (41, 33, 47), (64, 512, 2048)],
)
def test_product_equals_the_matmul_for_every_tile_and_panel_remainder(rows, n_in, n_out, threads):
    generator = torch.Generator().manual_seed(rows * n_out)
    weight = torch.randn(n_in, n_out, generator=generator)
    x, bias = torch.randn(rows, n_in, generator=generator), torch.randn(n_out, generator=generator)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        panels = cpu_kernel.pack(weight)
        with_bias, without = cpu_kernel.product(x, panels, n_out, bias), cpu_kernel.product(x, panels, n_out, None)
    finally:
        torch.set_num_threads(previous)
    assert panels.shape == (-(-n_out // 32), n_in, 32)
    assert torch.count_nonzero(panels.transpose(0, 1).reshape(n_in, -1)[:, n_out:]) == 0
    for out, expected in ((with_bias, reference(x, weight, bias)), (without, reference(x, weight, None))):
        assert out.shape == (rows, n_out)
        assert (out - expected).abs().max() <= 2e-6 * expected.abs().max()


@KERNEL
def test_product_reads_strided_rows_a_transposed_weight_and_empty_inputs():
    weight = torch.randn(96, 70).t()  # (70, 96), not contiguous
    wide = torch.randn(9, 150)
    x = wide[:, 10:80]  # rows 150 floats apart
    out = cpu_kernel.product(x, cpu_kernel.pack(weight), 96, None)
    assert torch.allclose(out, reference(x, weight, None), atol=1e-5, rtol=0)
    bias = torch.randn(96)
    assert torch.equal(cpu_kernel.product(x[:0], cpu_kernel.pack(weight), 96, bias), torch.empty(0, 96))
    assert torch.equal(cpu_kernel.product(x[:, :0], cpu_kernel.pack(weight[:0]), 96, bias), bias.expand(9, 96))


@KERNEL
def test_kernel_shares_torchs_openmp_runtime():
    loaded = [line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line]
    assert len(set(loaded)) == 1  # no second runtime with its own threads spinning beside torch's


LOAD = "from lass_cli import cpu_kernel; print(cpu_kernel.load() is not None)"
# Two priors stepping side by side ask for the kernel from two threads at once.
LOAD_TWICE_AT_ONCE = """
from concurrent.futures import ThreadPoolExecutor
from lass_cli import cpu_kernel
with ThreadPoolExecutor(2) as pool:
    print(all(library is not None for library in pool.map(lambda _: cpu_kernel.load(), range(2))))
"""


def load_in_a_fresh_process(tmp_path: Path, code: str = LOAD, **env: str) -> list[str]:
    """What ``code`` prints in a new interpreter with the lass cache in ``tmp_path``, and the files the
    cache then holds."""
    environment = {**os.environ, "LASS_CACHE": str(tmp_path), **env}
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    files = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())
    return [done.stdout.strip(), *files]


@KERNEL
def test_kernel_is_built_once_into_the_cache_and_reused(tmp_path):
    first = load_in_a_fresh_process(tmp_path, LOAD_TWICE_AT_ONCE)
    assert first[0] == "True" and len(first) == 2 and first[1].startswith("kernels/cpu_kernel-")
    built = tmp_path / first[1]
    stamp = built.stat().st_mtime_ns
    assert load_in_a_fresh_process(tmp_path) == first  # no temporary or object file left behind
    assert built.stat().st_mtime_ns == stamp


def test_a_failing_compiler_no_compiler_or_the_switch_leave_the_product_to_torch(tmp_path):
    assert load_in_a_fresh_process(tmp_path / "a", CC="false") == ["False"]  # and nothing half-written
    assert load_in_a_fresh_process(tmp_path / "b", CC="", PATH="/nonexistent") == ["False"]
    assert load_in_a_fresh_process(tmp_path / "c", LASS_CPU_KERNEL="0") == ["False"]
