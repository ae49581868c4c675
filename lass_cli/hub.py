"""Getting model files onto the machine, and publishing them.

- Hub files: ``hf_hub_download`` at the pinned revision into the standard Hugging Face cache (honours
  ``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``), sha256 checked where known; a
  mismatching download is deleted.
- The Jukebox VQ-VAE lives inside the transformers ``JukeboxModel`` shards of
  ``openai/jukebox-1b-lyrics`` (10 GB). Only its ~7.5 MB of ``vqvae.*`` tensors are read, with HTTP
  range requests on the safetensors shards, renamed to the original keys, checked by loading, and
  saved once in the lass cache as ``vqvae.safetensors``.
- ``import_archive``: the LASS authors' ``lass-slakh-ckpts.tar`` (not on the Hub) into the lass cache.
- ``export_bundle``: a folder of safetensors + counts + model card + registry snippet to upload.
Every file is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from .checkpoint import load_strict
from .likelihood import Counts
from .prior import Prior, PriorConfig
from .registry import FILELESS, FileSpec, ModelSpec, hub_cache, locate, model_dir
from .separate import load_parts, sha256_of
from .vqvae import VQVAE, VQVAEConfig, from_transformers_keys

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
Say = Callable[[str], None]


class FetchError(RuntimeError):
    """A file that could not be fetched or imported; the message names it and the alternative."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def endpoint() -> str:
    """The Hub's address, read at call time (``HF_ENDPOINT``) so the environment always applies."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _check_reachable(what: str, alternative: str) -> None:
    """Fail at once, in one line, when the Hub cannot be reached (the client would retry ~20 s)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return
    url = urlsplit(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=10).close()
    except OSError as exc:
        raise FetchError(f"cannot get {what}: the Hub at {endpoint()} is not reachable ({exc}){alternative}") from None


def _quiet_hub_logs() -> None:
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _alternative(model: ModelSpec, spec: FileSpec) -> str:
    if spec.archive_member:
        archive = model.archive or "ARCHIVE"
        return f"; without network, import the authors' archive: lass fetch {model.name} --import {archive}"
    return ""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_sha256(path: Path, expected: str | None, what: str) -> str:
    actual = sha256_of(path)
    if expected and actual != expected:
        raise FetchError(f"{what}: checksum mismatch (expected sha256 {expected}, got {actual}); the file was removed")
    return actual


def _remove_hub_file(path: Path) -> None:
    """Delete a cached Hub file: the snapshot link and the blob it points to."""
    target = path.resolve()
    path.unlink(missing_ok=True)
    target.unlink(missing_ok=True)


def _download(model: ModelSpec, spec: FileSpec) -> Path:
    from huggingface_hub import hf_hub_download

    what = f"{model.name} {spec.role} ({spec.repo}/{spec.filename}@{spec.revision})"
    _check_reachable(what, _alternative(model, spec))
    try:
        path = Path(
            hf_hub_download(
                spec.repo, spec.filename, revision=spec.revision, cache_dir=hub_cache(), endpoint=endpoint()
            )
        )
    except Exception as exc:  # network, offline mode, missing repo or file: all one line
        raise FetchError(f"cannot get {what}: {_short(exc)}{_alternative(model, spec)}") from exc
    try:
        _check_sha256(path, spec.sha256, what)
    except FetchError:
        _remove_hub_file(path)
        raise
    return path


def _get_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``start .. end - 1`` of a Hub file."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = {**build_hf_headers(), "Range": f"bytes={start}-{end - 1}"}
    response = get_session().get(url, headers=headers, follow_redirects=True, timeout=60)
    hf_raise_for_status(response)
    data = response.content
    if response.status_code == 200 and len(data) > end - start:  # server ignored the range
        data = data[start:end]
    if len(data) != end - start:
        raise OSError(f"short read from {url}: {len(data)} of {end - start} bytes")
    return data


def read_remote_safetensors(repo: str, filename: str, revision: str | None, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix`` from a safetensors file on the Hub, by range
    requests: the 8-byte header length, the JSON header, then one span covering those tensors."""
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint())
    header_len = int.from_bytes(_get_range(url, 0, 8), "little")
    header = json.loads(_get_range(url, 8, 8 + header_len))
    wanted = {k: v for k, v in header.items() if k.startswith(prefix) and k != "__metadata__"}
    if not wanted:
        return {}
    start = min(v["data_offsets"][0] for v in wanted.values())
    end = max(v["data_offsets"][1] for v in wanted.values())
    base = 8 + header_len
    blob = _get_range(url, base + start, base + end)
    tensors = {}
    for key, info in wanted.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{filename}: tensor {key} has unsupported dtype {info['dtype']}")
        a, b = (o - start for o in info["data_offsets"])
        flat = torch.frombuffer(bytearray(blob[a:b]), dtype=_DTYPES[info["dtype"]])
        tensors[key] = flat.reshape(info["shape"]).clone()
    return tensors


def _convert_transformers_vqvae(model: ModelSpec, spec: FileSpec) -> Path:
    from huggingface_hub import hf_hub_download

    what = f"{model.name} {spec.role} ({spec.repo}/{spec.filename}@{spec.revision})"
    _check_reachable(what, _alternative(model, spec))
    try:
        if spec.filename.endswith(".index.json"):
            index_file = hf_hub_download(
                spec.repo, spec.filename, revision=spec.revision, cache_dir=hub_cache(), endpoint=endpoint()
            )
            index = json.loads(Path(index_file).read_text())
            shards = sorted({f for k, f in index["weight_map"].items() if k.startswith("vqvae.")})
        else:
            shards = [spec.filename]
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(read_remote_safetensors(spec.repo, shard, spec.revision, "vqvae."))
    except Exception as exc:
        raise FetchError(f"cannot get {what}: {_short(exc)}{_alternative(model, spec)}") from exc
    vqvae = VQVAE(VQVAEConfig(**spec.config))
    load_strict(vqvae, from_transformers_keys(tensors), what)
    target = model_dir(model.name) / f"{spec.role}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    vqvae.save(target)
    if spec.sha256:
        try:
            _check_sha256(target, spec.sha256, what)
        except FetchError:
            target.unlink(missing_ok=True)
            raise
    return target


def fetch(model: ModelSpec, say: Say = lambda _: None) -> list[dict[str, Any]]:
    """Bring every file of ``model`` onto this machine; files already here are not fetched again."""
    _quiet_hub_logs()
    results = []
    for spec in model.files:
        entry: dict[str, Any] = {"role": spec.role}
        found = locate(model, spec)
        if spec.format in FILELESS:
            entry["status"] = "generated"
        elif found is not None:
            entry.update(status="present", path=str(found))
        elif spec.path is not None:
            raise FetchError(f"model {model.name}: {spec.role} file {spec.path} does not exist")
        elif not spec.on_hub:
            raise FetchError(
                f"model {model.name}: {spec.role} is not on the Hub; "
                f"run: lass fetch {model.name} --import {model.archive or 'ARCHIVE'}"
            )
        elif _offline():
            raise FetchError(
                f"cannot get {model.name} {spec.role} ({spec.repo}/{spec.filename}): HF_HUB_OFFLINE is set and it is "
                f"not in the cache{_alternative(model, spec)}"
            )
        else:
            say(f"fetching {model.name} {spec.role} from {spec.repo}")
            if spec.format == "transformers-jukebox":
                entry.update(status="converted", path=str(_convert_transformers_vqvae(model, spec)))
            else:
                entry.update(status="downloaded", path=str(_download(model, spec)))
        say(f"{model.name} {spec.role}: {entry['status']}" + (f" ({entry['path']})" if "path" in entry else ""))
        results.append(entry)
    return results


def _verify_loadable(spec: FileSpec, path: Path) -> None:
    """Raise if ``path`` is not a usable file for ``spec`` (wrong kind, shapes or counts)."""
    if spec.role == "likelihood":
        Counts.load(path)
    elif spec.role == "vqvae":
        VQVAE.from_checkpoint(path, VQVAEConfig(**spec.config) if spec.config else None)
    else:
        Prior.from_checkpoint(path, PriorConfig(**spec.config) if spec.config else None)


def import_archive(model: ModelSpec, archive: str | Path, say: Say = lambda _: None) -> list[dict[str, Any]]:
    """Install the files of ``model`` found in a tar archive (any compression) into the lass cache,
    each checked (sha256 where known, and loaded) before it is put in place."""
    archive = Path(archive)
    if not archive.is_file():
        raise FetchError(f"archive {archive} does not exist")
    wanted = [s for s in model.files if s.archive_member]
    if not wanted:
        raise FetchError(f"model {model.name} has no files to import from an archive")
    results = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [s.archive_member for s in wanted if Path(s.archive_member).name not in members]
            if missing:
                raise FetchError(f"{archive} lacks {', '.join(missing)} for model {model.name}")
            target_dir = model_dir(model.name)
            target_dir.mkdir(parents=True, exist_ok=True)
            for spec in wanted:
                name = Path(spec.archive_member).name
                target = target_dir / name
                partial = target_dir / f".{name}.partial"
                try:
                    with tar.extractfile(members[name]) as source, open(partial, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                    _verify_loadable(spec, partial)
                    os.replace(partial, target)
                except FetchError:
                    raise
                except Exception as exc:
                    raise FetchError(f"{archive}: {name} is not a usable {spec.role} file ({_short(exc)})") from exc
                finally:
                    partial.unlink(missing_ok=True)
                say(f"{model.name} {spec.role}: imported ({target})")
                results.append({"role": spec.role, "status": "imported", "path": str(target)})
    except tarfile.TarError as exc:
        raise FetchError(f"{archive} is not a readable tar archive ({exc})") from exc
    return results


def export_bundle(model: ModelSpec, out_dir: str | Path, repo: str) -> list[Path]:
    """Write the model as a Hub-ready folder: safetensors weights, the counts, a model card and the
    models.toml snippet naming them (sha256 and sizes filled in; the revision after upload)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = load_parts(model)
    written = {"vqvae": out / "vqvae.safetensors"}
    parts.vqvae.save(written["vqvae"])
    for stem, prior in zip(model.stems, parts.priors):
        written[f"prior.{stem}"] = out / f"prior_{stem}.safetensors"
        prior.save(written[f"prior.{stem}"])
    if parts.counts is not None:
        written["likelihood"] = out / "sum_frequencies.npz"
        parts.counts.save(written["likelihood"])
    lines = [
        f"[models.{model.name}]",
        f'description = "{model.description}"',
        f"sample_rate = {model.sample_rate}",
        f"window_tokens = {model.window_tokens}",
        f"level = {model.level}",
        f"stems = {json.dumps(list(model.stems))}",
        f"likelihood_weight = {model.likelihood_weight}",
    ]
    for role, path in written.items():
        header = f"[models.{model.name}.{role.replace('prior.', 'priors.')}]"
        fmt = "sparse-npz" if role == "likelihood" else "safetensors"
        lines += ["", header, f'format = "{fmt}"', f'repo = "{repo}"', f'filename = "{path.name}"',
                  'revision = "<commit after upload>"', f'sha256 = "{sha256_of(path)}"',
                  f"size = {path.stat().st_size}"]  # fmt: skip
    if parts.counts is None:
        config = ", ".join(f"{k} = {json.dumps(v)}" for k, v in model.likelihood.config.items())
        lines += ["", f"[models.{model.name}.likelihood]", 'format = "latent"', f"config = {{ {config} }}"]
        about = "Likelihood: the LQ-VAE latent likelihood (no file; " + (config or "defaults") + ")."
    else:
        summary = parts.counts.summary()
        about = (f"Likelihood counts: K = {summary['bins']}, {summary['nnz']} nonzeros, "
                 f"density {summary['density']:.3g}.")  # fmt: skip
    snippet = out / "models.toml"
    snippet.write_text("\n".join(lines) + "\n")
    card = out / "README.md"
    card.write_text(
        f"---\nlibrary_name: lass-cli\ntags: [audio, source-separation, lass]\n---\n\n# {model.name}\n\n"
        f"{model.description}\n\nLatent Autoregressive Source Separation bundle for `lass` (stems: "
        f"{', '.join(model.stems)}; {model.sample_rate} Hz; windows of {model.window_tokens} tokens).\n\n"
        "| file | bytes | sha256 |\n|---|---|---|\n"
        + "".join(f"| {p.name} | {p.stat().st_size} | {sha256_of(p)} |\n" for p in written.values())
        + f"\n{about}\n\n"
        f"Use: add `models.toml` from this folder to a registry (`lass separate --registry models.toml ...`) "
        f"after filling in the revision.\n"
    )
    return [*written.values(), snippet, card]


__all__ = ["FetchError", "export_bundle", "fetch", "import_archive", "read_remote_safetensors"]
