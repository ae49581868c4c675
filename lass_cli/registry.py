"""The model registry: ``models.toml`` entries -> model specs, and where each file lives.

A model names its sample rate, window length in tokens, stems and files (a VQ-VAE, one prior per
stem, the likelihood counts). A file is found, in this order: a local ``path`` from the entry, the
lass cache (``$LASS_CACHE``, else ``$XDG_CACHE_HOME/lass``, else ``~/.cache/lass``: files converted or
imported there), the Hugging Face cache (downloads, pinned by revision). Files of format ``random``
are made from a seed (the tiny test model) and need nothing on disk.

The packaged registry (``lass_cli/models.toml``, the repository's ``models.toml``) is read first;
user registries (``--registry PATH`` or ``LASS_REGISTRY``, several joined by ``os.pathsep``) add
models or replace them by name. Relative paths in a registry are relative to that registry file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FORMATS = ("jukebox", "safetensors", "transformers-jukebox", "sparse-npz", "random", "latent")
# Formats with no file: ``random`` is made from a seed, ``latent`` (the LQ-VAE likelihood) from the VQ-VAE.
FILELESS = ("random", "latent")


class RegistryError(ValueError):
    """A registry that cannot be read or a model that is not in it."""


class MissingFileError(RuntimeError):
    """A model file that is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a model and where to get it.

    Args:
        role: ``vqvae``, ``prior.<stem>`` or ``likelihood``.
        format: how the file is stored (one of FORMATS).
        repo, filename, revision: Hugging Face Hub coordinates (revision pinned).
        sha256, size: expected checksum and size in bytes, where known.
        path: a local file instead of the Hub.
        archive_member: the member holding this file in an archive for ``lass fetch --import``.
        config: the model's hyper-parameters (upstream names).
        seed: for format ``random``.
    """

    role: str
    format: str
    repo: str | None = None
    filename: str | None = None
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    path: Path | None = None
    archive_member: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def on_hub(self) -> bool:
        return bool(self.repo and self.filename)

    @property
    def cache_names(self) -> list[str]:
        """File names this file may have in the lass cache: converted first, then imported."""
        names = [f"{self.role}.safetensors"] if self.format == "transformers-jukebox" else []
        return names + ([Path(self.archive_member).name] if self.archive_member else [])


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    sample_rate: int
    window_tokens: int
    stems: tuple[str, ...]
    likelihood_weight: float
    vqvae: FileSpec
    priors: dict[str, FileSpec]
    likelihood: FileSpec
    level: int = -1
    input_rms: float | None = None
    wiener: bool = False
    search: dict[str, Any] = field(default_factory=dict)  # default search options (method, samples, ...)
    archive: str | None = None
    source: Path | None = None

    @property
    def files(self) -> list[FileSpec]:
        return [self.vqvae, *(self.priors[s] for s in self.stems), self.likelihood]


def cache_dir() -> Path:
    """Where lass keeps converted and imported model files."""
    if os.environ.get("LASS_CACHE"):
        return Path(os.environ["LASS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lass"


def hub_cache() -> str:
    """The Hugging Face cache folder, read at call time (``HF_HUB_CACHE``, else ``HF_HOME``/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _file_spec(role: str, table: dict[str, Any], base: Path | None, model: str) -> FileSpec:
    if not isinstance(table, dict):
        raise RegistryError(f"model {model}: '{role}' must be a table")
    fmt = table.get("format")
    if fmt not in FORMATS:
        raise RegistryError(f"model {model}: {role} has format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = table.get("path")
    if path is not None:
        path = Path(os.path.expanduser(path))
        if not path.is_absolute() and base is not None:
            path = base / path
    known = {"format", "repo", "filename", "revision", "sha256", "size", "path", "archive_member", "config", "seed"}
    unknown = set(table) - known
    if unknown:
        raise RegistryError(f"model {model}: {role} has unknown keys {sorted(unknown)}")
    spec = FileSpec(
        role=role,
        format=fmt,
        repo=table.get("repo"),
        filename=table.get("filename"),
        revision=table.get("revision"),
        sha256=(table.get("sha256") or None) and str(table["sha256"]).lower(),
        size=table.get("size"),
        path=path,
        archive_member=table.get("archive_member"),
        config=dict(table.get("config", {})),
        seed=int(table.get("seed", 0)),
    )
    if fmt not in FILELESS and not (spec.path or spec.on_hub or spec.archive_member):
        raise RegistryError(f"model {model}: {role} needs a path, Hub coordinates or an archive member")
    return spec


SEARCH_KEYS = ("method", "beams", "samples", "top_k", "select")


def _search_defaults(model: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict) or set(table) - set(SEARCH_KEYS):
        raise RegistryError(f"model {model}: 'search' must be a table of {', '.join(SEARCH_KEYS)}")
    return dict(table)


def _model_spec(name: str, table: dict[str, Any], source: Path | None) -> ModelSpec:
    base = source.parent if source else None
    try:
        stems = tuple(table["stems"])
        priors_table = table["priors"]
        if set(priors_table) != set(stems) or len(stems) != 2:
            raise RegistryError(f"model {name}: needs exactly two stems, each with a prior")
        return ModelSpec(
            name=name,
            description=str(table.get("description", "")),
            sample_rate=int(table["sample_rate"]),
            window_tokens=int(table["window_tokens"]),
            stems=stems,
            likelihood_weight=float(table.get("likelihood_weight", 3.0)),
            vqvae=_file_spec("vqvae", table["vqvae"], base, name),
            priors={s: _file_spec(f"prior.{s}", priors_table[s], base, name) for s in stems},
            likelihood=_file_spec("likelihood", table["likelihood"], base, name),
            level=int(table.get("level", -1)),
            input_rms=float(table["input_rms"]) if "input_rms" in table else None,
            wiener=bool(table.get("wiener", False)),
            search=_search_defaults(name, table.get("search", {})),
            archive=table.get("archive"),
            source=source,
        )
    except KeyError as exc:
        raise RegistryError(f"model {name}: missing setting {exc}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, RegistryError):
            raise
        raise RegistryError(f"model {name}: {exc}") from None


def _read(text: str, source: Path | None) -> dict[str, ModelSpec]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{source or 'registry'}: not valid TOML ({exc})") from None
    models = data.get("models", {})
    return {name: _model_spec(name, table, source) for name, table in models.items()}


def packaged_registry_text() -> str:
    return resources.files("lass_cli").joinpath("models.toml").read_text()


def load_registry(extra: list[str | Path] | None = None) -> dict[str, ModelSpec]:
    """The packaged models, then each user registry (``extra``, then ``LASS_REGISTRY``) on top."""
    # Relative paths of the packaged registry point into the package (the embedded model's assets).
    models = _read(packaged_registry_text(), Path(__file__).with_name("models.toml"))
    paths = [Path(p) for p in extra or []]
    paths += [Path(p) for p in os.environ.get("LASS_REGISTRY", "").split(os.pathsep) if p]
    for path in paths:
        if not path.is_file():
            raise RegistryError(f"registry {path}: no such file")
        models.update(_read(path.read_text(), path.resolve()))
    return models


def get_model(models: dict[str, ModelSpec], name: str) -> ModelSpec:
    if name not in models:
        raise RegistryError(f"unknown model {name!r}; known models: {', '.join(sorted(models))}")
    return models[name]


def _hub_cached(spec: FileSpec) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.repo, spec.filename, cache_dir=hub_cache(), revision=spec.revision)
    return Path(found) if isinstance(found, str) else None


def locate(model: ModelSpec, spec: FileSpec) -> Path | None:
    """The local file of ``spec`` if it is on this machine, else None (FILELESS formats need none)."""
    if spec.format in FILELESS:
        return None
    if spec.path is not None:
        return spec.path if spec.path.is_file() else None
    for name in spec.cache_names:
        cached = model_dir(model.name) / name
        if cached.is_file():
            return cached
    if spec.on_hub and spec.format != "transformers-jukebox":
        return _hub_cached(spec)
    return None


def is_present(model: ModelSpec, spec: FileSpec) -> bool:
    return spec.format in FILELESS or locate(model, spec) is not None


def require(model: ModelSpec, spec: FileSpec) -> Path | None:
    """Like :func:`locate` but raises a one-line error saying how to get a missing file."""
    if spec.format in FILELESS:
        return None
    found = locate(model, spec)
    if found is not None:
        return found
    if spec.path is not None:
        raise MissingFileError(f"model {model.name}: {spec.role} file {spec.path} does not exist")
    how = f"run `lass fetch {model.name}`" if spec.on_hub else ""
    if spec.archive_member:
        archive = model.archive or "ARCHIVE"
        alternative = f"`lass fetch {model.name} --import {archive}`"
        how = f"{how} or {alternative}" if how else f"run {alternative}"
    raise MissingFileError(f"model {model.name}: {spec.role} is not on this machine; {how}")


def model_size(model: ModelSpec) -> int:
    """Bytes on disk of the model's present files."""
    return sum(p.stat().st_size for s in model.files if (p := locate(model, s)) is not None)


__all__ = [
    "FORMATS", "FileSpec", "MissingFileError", "ModelSpec", "RegistryError", "cache_dir", "get_model",
    "hub_cache", "is_present", "load_registry", "locate", "model_dir", "model_size", "require",
]  # fmt: skip
