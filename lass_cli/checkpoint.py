"""Read and write model checkpoints without running code from the file.

Accepted inputs, detected from the file's bytes rather than its name:

- the original Jukebox/LASS layout, a ``torch.save``d dict ``{'hps': dict, 'model': state_dict,
  'opt': ..., 'step': ...}``;
- a plain ``torch.save``d state_dict;
- a safetensors file (ours carry the model's hyper-parameters as JSON in the metadata).

Pickled files are read with ``weights_only=True`` first. Real training checkpoints can also hold
objects that torch refuses there (numpy scalars among the metrics, a ``Hyperparams`` dict subclass);
those are read by a restricted unpickler that rebuilds tensors and replaces every other class with an
inert stand-in, so nothing from the file is ever executed.
"""

from __future__ import annotations

import json
import os
import pickle
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SAFETENSORS_FORMAT = "lass-cli"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


class _Inert(dict):
    """Stand-in for any class a checkpoint names that is not a tensor helper.

    It is a dict so that pickled dict subclasses (Jukebox's ``Hyperparams``) keep their items.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass


class _RestrictedUnpickler(pickle.Unpickler):
    _ALLOWED = {("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device")}

    def find_class(self, module: str, name: str) -> Any:
        rebuild = module == "torch._utils" and name.startswith("_rebuild_")
        if rebuild or (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        return _Inert


_RESTRICTED_PICKLE = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler, load=pickle.load, __name__="lass_restricted_pickle"
)


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len < path.stat().st_size


def _load_pickled(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            pass
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Return ``(state_dict, hps)`` of a checkpoint file.

    ``hps`` is the saved hyper-parameter dict, or None where the file carries none. A leading
    ``module.`` (DistributedDataParallel) is stripped from every key, as the original loader does.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    hps: dict[str, Any] | None = None
    try:
        if _is_safetensors(path):
            with safe_open(str(path), framework="pt") as f:
                state = {key: f.get_tensor(key) for key in f.keys()}
                metadata = f.metadata() or {}
            if "config" in metadata:
                hps = json.loads(metadata["config"])
        else:
            obj = _load_pickled(path)
            if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
                state, saved = obj["model"], obj.get("hps")
                hps = dict(saved) if isinstance(saved, dict) and saved else None
            else:
                state = obj
    except CheckpointError:
        raise
    except Exception as exc:  # torch and safetensors raise many kinds for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, hps


def write_safetensors(path: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any], kind: str) -> None:
    """Save a state_dict with its hyper-parameters; tensors that share memory are saved once."""
    seen: set[int] = set()
    unique = {}
    for key, tensor in state_dict.items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        unique[key] = tensor.detach().contiguous().cpu()
    metadata = {"format": SAFETENSORS_FORMAT, "kind": kind, "config": json.dumps(config)}
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    save_file(unique, str(partial), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)  # safetensors creates files private to their owner
    os.replace(partial, path)


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load every key exactly (no missing, extra or misshapen tensor) or raise one clear error.

    Tensors are cast to the receiving parameter's dtype (Jukebox priors store float16 weights).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", misshapen)):
        if items:
            shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
            problems.append(f"{len(items)} {label} ({shown})")
    if problems:
        raise CheckpointError(
            f"{source} does not fit a {type(module).__name__} with this config: " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True)
