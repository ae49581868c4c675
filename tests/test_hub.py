"""`lass fetch`, `--import` and `lass export` against a real local HTTP server standing in for the Hub."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save as safetensors_bytes

from lass_cli.registry import load_registry
from lass_cli.separate import load_parts
from lass_cli.vqvae import from_transformers_keys, to_transformers_keys

from .conftest import jukebox_fixture
from .hub_server import FakeHub
from .test_cli import lass, mix

BUNDLE = "lass-test/hub-tiny"
JUKEBOX = "openai-test/jukebox"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    """The tiny random model's files as a maintainer would publish them, plus a transformers-style
    Jukebox checkpoint (two shards and an index) holding its VQ-VAE among other tensors."""
    folder = tmp_path_factory.mktemp("tiny")
    parts = load_parts(load_registry()["tiny-random"])
    parts.priors[0].save(folder / "prior_drums.safetensors")
    parts.priors[1].save(folder / "prior_bass.safetensors")
    parts.counts.save(folder / "sum_frequencies.npz")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    vqvae = to_transformers_keys(parts.vqvae.state_dict())
    other = {"priors.0.prior.x_emb.weight": torch.randn(32, 8), "priors.0.prior.start_token": torch.randn(1, 8)}
    files["model-00001-of-00002.safetensors"] = safetensors_bytes({**vqvae, "priors.1.extra": torch.ones(3)})
    files["model-00002-of-00002.safetensors"] = safetensors_bytes(other)
    weight_map = {k: "model-00001-of-00002.safetensors" for k in [*vqvae, "priors.1.extra"]}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in other})
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    buffer = io.BytesIO()
    torch.save({"hps": parts.vqvae.config.to_dict(), "model": parts.vqvae.state_dict(), "opt": None}, buffer)
    files["vqvae.pth.tar"] = buffer.getvalue()
    for name, prior in (("drums", parts.priors[0]), ("bass", parts.priors[1])):
        buffer = io.BytesIO()
        torch.save({"hps": prior.config.to_dict(), "model": prior.state_dict()}, buffer)
        files[f"prior_{name}_44100.pth.tar"] = buffer.getvalue()
    return files


def write_registry(path: Path, files: dict[str, bytes], bad_sha: bool = False) -> Path:
    tiny = load_registry()["tiny-random"]

    def sha(name: str) -> str:
        return "0" * 64 if bad_sha else hashlib.sha256(files[name]).hexdigest()

    def inline(config: dict) -> str:
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + " }"

    lines = ['[models.hub-tiny]', 'sample_rate = 22050', 'window_tokens = 128', 'stems = ["drums", "bass"]',
             'archive = "ckpts.tar"', '', '[models.hub-tiny.vqvae]', 'format = "transformers-jukebox"',
             f'repo = "{JUKEBOX}"', 'filename = "model.safetensors.index.json"', 'revision = "refs/pr/12"',
             'archive_member = "vqvae.pth.tar"', f"config = {inline(tiny.vqvae.config)}"]  # fmt: skip
    for stem in ("drums", "bass"):
        name = f"prior_{stem}.safetensors"
        lines += ["", f"[models.hub-tiny.priors.{stem}]", 'format = "safetensors"', f'repo = "{BUNDLE}"',
                  f'filename = "{name}"', 'revision = "main"', f'sha256 = "{sha(name)}"',
                  f'archive_member = "prior_{stem}_44100.pth.tar"',
                  f"config = {inline(tiny.priors[stem].config)}"]  # fmt: skip
    lines += ["", "[models.hub-tiny.likelihood]", 'format = "sparse-npz"', f'repo = "{BUNDLE}"',
              'filename = "sum_frequencies.npz"', 'revision = "main"', f'sha256 = "{sha("sum_frequencies.npz")}"',
              'archive_member = "sum_frequencies.npz"']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def hub(tiny_files):
    with FakeHub() as server:
        for name in ("prior_drums.safetensors", "prior_bass.safetensors", "sum_frequencies.npz"):
            server.add(BUNDLE, name, tiny_files[name])
        server.add(JUKEBOX, "model.safetensors.index.json", tiny_files["model.safetensors.index.json"])
        server.add(JUKEBOX, "model-00001-of-00002.safetensors", tiny_files["model-00001-of-00002.safetensors"])
        yield server  # shard 2 is not served: fetching it would fail the test


def hub_env(tmp_path: Path, hub: FakeHub | None = None, **extra: str) -> dict[str, str]:
    env = {"HF_HOME": str(tmp_path / "hf"), "LASS_CACHE": str(tmp_path / "lass-cache"), **extra}
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    return env


def test_fetch_from_the_hub_then_separate_offline(tmp_path, hub, tiny_files):
    registry = write_registry(tmp_path / "models.toml", tiny_files)
    env = hub_env(tmp_path, hub)
    fetched = lass("fetch", "hub-tiny", "--registry", str(registry), "--json", env=env, cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    statuses = {e["role"]: e["status"] for e in json.loads(fetched.stdout)["hub-tiny"]}
    assert statuses == {"vqvae": "converted", "prior.drums": "downloaded", "prior.bass": "downloaded",
                        "likelihood": "downloaded"}  # fmt: skip
    assert not any("model-00002-of" in g for g in hub.gets)  # only the shard holding the VQ-VAE was read
    assert any("model-00001-of" in g for g in hub.gets)
    requests = len(hub.gets)
    again = lass("fetch", "hub-tiny", "--registry", str(registry), "--json", env=env, cwd=tmp_path)
    assert again.returncode == 0 and len(hub.gets) == requests  # nothing downloaded the second time
    assert {e["status"] for e in json.loads(again.stdout)["hub-tiny"]} == {"present"}

    sf.write(tmp_path / "a.wav", mix(22050, 1.0, 1).T, 22050)
    offline = hub_env(tmp_path, None, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    ours = lass("separate", "a.wav", "-o", "hub", "--model", "hub-tiny", "--registry", str(registry), env=offline,
                cwd=tmp_path)  # fmt: skip
    assert ours.returncode == 0, ours.stderr
    reference = lass("separate", "a.wav", "-o", "ref", "--model", "tiny-random", env=offline, cwd=tmp_path)
    assert reference.returncode == 0
    for stem in ("drums", "bass"):  # same weights, converted from the transformers layout: same stems
        np.testing.assert_array_equal(
            sf.read(tmp_path / f"hub/a/{stem}.wav")[0], sf.read(tmp_path / f"ref/a/{stem}.wav")[0]
        )
    listing = lass("models", "--registry", str(registry), "--json", env=offline, cwd=tmp_path)
    assert {r["name"]: r["status"] for r in json.loads(listing.stdout)}["hub-tiny"] == "ready"


def test_checksum_mismatch_removes_the_download(tmp_path, hub, tiny_files):
    registry = write_registry(tmp_path / "models.toml", tiny_files, bad_sha=True)
    result = lass("fetch", "hub-tiny", "--registry", str(registry), env=hub_env(tmp_path, hub), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "checksum mismatch" in result.stderr and "prior.drums" in result.stderr
    assert not [p for p in (tmp_path / "hf").rglob("*prior_drums*") if p.exists()]
    good = hashlib.sha256(tiny_files["prior_drums.safetensors"]).hexdigest()
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() != good for p in (tmp_path / "hf").rglob("blobs/*"))


def test_without_network_fetch_fails_in_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = lass("fetch", "slakh-drums-bass", env=hub_env(tmp_path, None, HF_ENDPOINT=closed), cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    line = result.stderr.strip()
    assert "model.safetensors.index.json" in line and "not reachable" in line
    assert "lass fetch slakh-drums-bass --import lass-slakh-ckpts.tar" in line
    offline = lass("fetch", "slakh-drums-bass", env=hub_env(tmp_path, None, HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert offline.returncode == 1 and offline.stderr.count("\n") == 1 and "HF_HUB_OFFLINE" in offline.stderr


def test_import_archive_installs_verified_files(tmp_path, tiny_files):
    registry = write_registry(tmp_path / "models.toml", tiny_files)
    archive = tmp_path / "ckpts.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("vqvae.pth.tar", "prior_drums_44100.pth.tar", "prior_bass_44100.pth.tar", "sum_frequencies.npz"):
            info = tarfile.TarInfo(f"lass-slakh-ckpts/{name}")
            info.size = len(tiny_files[name])
            tar.addfile(info, io.BytesIO(tiny_files[name]))
    env = hub_env(tmp_path, None, HF_HUB_OFFLINE="1")
    result = lass("fetch", "hub-tiny", "--registry", str(registry), "--import", str(archive), "--json", env=env,
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [e["status"] for e in json.loads(result.stdout)["hub-tiny"]] == ["imported"] * 4
    sf.write(tmp_path / "a.wav", mix(22050, 0.5, 1).T, 22050)
    separated = lass("separate", "a.wav", "--model", "hub-tiny", "--registry", str(registry), env=env, cwd=tmp_path)
    assert separated.returncode == 0, separated.stderr

    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as tar:
        for name in ("vqvae.pth.tar", "prior_drums_44100.pth.tar", "prior_bass_44100.pth.tar", "sum_frequencies.npz"):
            data = b"garbage" if name == "sum_frequencies.npz" else tiny_files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    env = hub_env(tmp_path / "second", None)
    bad = lass("fetch", "hub-tiny", "--registry", str(registry), "--import", str(broken), env=env, cwd=tmp_path)
    assert bad.returncode == 1 and "sum_frequencies.npz is not a usable likelihood file" in bad.stderr
    assert not (tmp_path / "second/lass-cache/models/hub-tiny/sum_frequencies.npz").exists()
    missing = lass("fetch", "hub-tiny", "--registry", str(registry), "--import", "nope.tar", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_export_writes_a_bundle_the_registry_can_use(tmp_path):
    result = lass("export", "tiny-random", "bundle", "--repo", "me/tiny", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        ["vqvae.safetensors", "prior_drums.safetensors", "prior_bass.safetensors", "sum_frequencies.npz",
         "models.toml", "README.md"])  # fmt: skip
    snippet = (bundle / "models.toml").read_text()
    for name in ("vqvae.safetensors", "prior_drums.safetensors", "sum_frequencies.npz"):
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() in snippet
    local = snippet.replace('repo = "me/tiny"\n', "").replace('revision = "<commit after upload>"\n', "")
    for name in ("vqvae.safetensors", "prior_drums.safetensors", "prior_bass.safetensors", "sum_frequencies.npz"):
        local = local.replace(f'filename = "{name}"', f'path = "{name}"')
    (bundle / "local.toml").write_text(local.replace("[models.tiny-random", "[models.local-tiny"))
    sf.write(tmp_path / "a.wav", mix(22050, 0.5, 1).T, 22050)
    run = lass("separate", "a.wav", "--model", "local-tiny", "--registry", "bundle/local.toml", "-o", "x", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    base = lass("separate", "a.wav", "--model", "tiny-random", "-o", "y", cwd=tmp_path)
    assert base.returncode == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "x/a/drums.wav")[0], sf.read(tmp_path / "y/a/drums.wav")[0])


def test_transformers_key_mapping_both_ways_on_the_fixture():
    state = torch.load(jukebox_fixture("vqvae.pth.tar"), weights_only=True)["model"]
    renamed = to_transformers_keys(state)
    assert "vqvae.encoders.2.level_blocks.2.proj_out.weight" in renamed
    assert "vqvae.encoders.0.level_blocks.0.downsample_block.1.resnet_block.3.conv1d_2.weight" in renamed
    assert "vqvae.decoders.1.level_blocks.0.upsample_block.2.resnet_block.1.conv1d_1.bias" in renamed
    assert "vqvae.decoders.0.level_blocks.0.proj_in.weight" in renamed and "vqvae.decoders.0.out.weight" in renamed
    assert "vqvae.bottleneck.level_blocks.1.codebook" in renamed
    assert not [k for k in renamed if ".model." in k]
    back = from_transformers_keys({**renamed, "priors.0.x": torch.zeros(1)})
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)
