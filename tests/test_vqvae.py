"""VQ-VAE: parity with the original Jukebox code, checkpoint formats, other configurations."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from lass_cli import vqvae
from lass_cli.checkpoint import CheckpointError
from lass_cli.vqvae import VQVAE, VQVAEConfig, exact_float32, float32_precision

from .conftest import fixture_keys, jukebox_fixture

DECODE_ATOL = 1e-5


@pytest.fixture(scope="module")
def fixture_model() -> VQVAE:
    return VQVAE.from_checkpoint(jukebox_fixture("vqvae.pth.tar"))


@pytest.fixture(scope="module")
def fixture_audio() -> torch.Tensor:
    return torch.from_numpy(np.load(jukebox_fixture("input_audio.npy")))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_tokens_match_reference_exactly(fixture_model, fixture_audio, vqvae_reference, level):
    tokens = fixture_model.encode(fixture_audio, level)
    assert tokens.dtype == torch.long
    np.testing.assert_array_equal(tokens.numpy(), vqvae_reference[f"tokens_level{level}"])
    latents = fixture_model.encoder_output(fixture_audio, level).numpy()
    np.testing.assert_allclose(latents, vqvae_reference[f"encoder_out_level{level}"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_decoded_audio_matches_reference(fixture_model, vqvae_reference, level):
    tokens = torch.from_numpy(vqvae_reference[f"tokens_level{level}"])
    audio = fixture_model.decode(tokens, level).numpy()
    reference = vqvae_reference[f"decoded_from_level{level}"]
    assert audio.shape == reference.shape
    assert np.abs(audio - reference).max() <= DECODE_ATOL


def test_top_level_is_default_and_one_row_matches_lass(fixture_model, fixture_audio, vqvae_reference):
    np.testing.assert_array_equal(fixture_model.encode(fixture_audio).numpy(), vqvae_reference["tokens_level2"])
    row0 = torch.from_numpy(vqvae_reference["tokens_level2"][:1])
    decoded = fixture_model.decode(row0)[0].numpy()
    assert np.abs(decoded - vqvae_reference["decoded_top_lass_row0"]).max() <= DECODE_ATOL
    assert fixture_model.hop_length() == 128
    assert list(fixture_model.config.hop_lengths) == list(vqvae_reference["hop_lengths"])


def test_state_dict_matches_original_keys(fixture_model):
    expected = fixture_keys("vqvae_state_dict_keys.tsv")
    ours = fixture_model.state_dict()
    assert list(ours) == list(expected)
    for key, (shape, _) in expected.items():
        assert list(ours[key].shape) == shape, key


def test_config_from_shapes_equals_saved_hps():
    raw = torch.load(jukebox_fixture("vqvae.pth.tar"), weights_only=True)
    from_hps = VQVAEConfig.from_hps(raw["hps"])
    from_shapes = VQVAEConfig.from_state_dict(raw["model"])
    assert from_shapes == VQVAEConfig(**{**from_hps.to_dict(), "sr": from_shapes.sr})


def _tiny_config(**overrides) -> VQVAEConfig:
    settings = dict(
        levels=2,
        downs_t=(1, 2),
        strides_t=(4, 2),
        emb_width=6,
        l_bins=16,
        width=4,
        depth=3,
        m_conv=0.5,
        dilation_growth_rate=2,
        dilation_cycle=2,
        hvqvae_multipliers=(1, 2),
    )
    return VQVAEConfig(**{**settings, **overrides})


def _random_model(config: VQVAEConfig, seed: int = 0) -> VQVAE:
    torch.manual_seed(seed)
    model = VQVAE(config)
    with torch.no_grad():
        for codebook in model.bottleneck.level_blocks:
            codebook.k.normal_()
    return model


def test_other_configuration_lengths_and_batching():
    config = _tiny_config()
    assert config.hop_lengths == (4, 16)
    model = _random_model(config)
    audio = torch.randn(3, 1000)
    for level, hop in ((0, 4), (1, 16), (-1, 16)):
        tokens = model.encode(audio, level)
        assert tokens.shape == (3, 1000 // hop)
        assert 0 <= int(tokens.min()) and int(tokens.max()) < config.l_bins
        np.testing.assert_array_equal(model.encode(audio[1:2], level).numpy(), tokens[1:2].numpy())
        assert model.decode(tokens, level).shape == (3, (1000 // hop) * hop)
    # Encoding is deterministic and decoding depends on the tokens.
    tokens = model.encode(audio)
    np.testing.assert_array_equal(model.encode(audio).numpy(), tokens.numpy())
    other = (tokens + 1) % config.l_bins
    assert not torch.allclose(model.decode(tokens), model.decode(other))


def test_decoder_dilations_are_reversed():
    model = VQVAE(_tiny_config(dilation_cycle=None, depth=2, dilation_growth_rate=3))
    stack = model.decoders[1].level_blocks[0].model[1][0].model  # level 1 has depth 2 * 2
    dilations = [block.model[1].dilation[0] for block in stack]
    assert dilations == [27, 9, 3, 1]
    encoder_stack = model.encoders[1].level_blocks[0].model[0][1].model
    assert [block.model[1].dilation[0] for block in encoder_stack] == [1, 3, 9, 27]


def test_checkpoint_formats_round_trip(tmp_path):
    config = _tiny_config(dilation_cycle=None, dilation_growth_rate=3)
    model = _random_model(config, seed=1)
    audio = torch.randn(2, 640)
    expected = model.encode(audio)
    state = model.state_dict()

    torch.save(
        {"hps": {**config.to_dict(), "prior": False}, "model": state, "opt": None, "step": 7}, tmp_path / "orig.pth.tar"
    )
    torch.save(state, tmp_path / "plain.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    model.save(tmp_path / "model.safetensors")
    (tmp_path / "renamed.bin").write_bytes((tmp_path / "model.safetensors").read_bytes())

    for name in ("orig.pth.tar", "plain.pt", "ddp.pt", "model.safetensors", "renamed.bin"):
        loaded = VQVAE.from_checkpoint(tmp_path / name)
        assert loaded.config.hop_lengths == config.hop_lengths, name
        np.testing.assert_array_equal(loaded.encode(audio).numpy(), expected.numpy(), err_msg=name)


def test_original_checkpoint_with_foreign_objects_loads_without_running_them(tmp_path, monkeypatch):
    """Real training files pickle Jukebox's Hyperparams and numpy metrics; nothing may execute."""
    jukebox = types.ModuleType("jukebox")
    hparams = types.ModuleType("jukebox.hparams")

    class Hyperparams(dict):
        pass

    Hyperparams.__module__ = "jukebox.hparams"
    Hyperparams.__qualname__ = "Hyperparams"
    hparams.Hyperparams = Hyperparams
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    monkeypatch.setitem(sys.modules, "jukebox", jukebox)
    monkeypatch.setitem(sys.modules, "jukebox.hparams", hparams)
    config = _tiny_config()
    model = _random_model(config, seed=2)
    hps = Hyperparams(config.to_dict())
    torch.save(
        {"hps": hps, "model": model.state_dict(), "loss": np.float32(0.5), "trap": Payload()},
        tmp_path / "training.pth.tar",
    )
    monkeypatch.delitem(sys.modules, "jukebox")
    monkeypatch.delitem(sys.modules, "jukebox.hparams")

    loaded = VQVAE.from_checkpoint(tmp_path / "training.pth.tar")
    assert not marker.exists()
    assert loaded.config == config
    audio = torch.randn(1, 320)
    np.testing.assert_array_equal(loaded.encode(audio).numpy(), model.encode(audio).numpy())


def test_mismatched_or_broken_checkpoints_fail_clearly(tmp_path):
    model = _random_model(_tiny_config())
    model.save(tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="wrong shape"):
        VQVAE.from_checkpoint(tmp_path / "tiny.safetensors", _tiny_config(emb_width=8))
    with pytest.raises(CheckpointError, match="missing"):
        VQVAE.from_checkpoint(
            tmp_path / "tiny.safetensors",
            _tiny_config(levels=3, downs_t=(1, 1, 1), strides_t=(2, 2, 2), hvqvae_multipliers=(1, 1, 1)),
        )
    (tmp_path / "broken.pth.tar").write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        VQVAE.from_checkpoint(tmp_path / "broken.pth.tar")
    with pytest.raises(CheckpointError, match="not found"):
        VQVAE.from_checkpoint(tmp_path / "absent.pth.tar")


def test_bad_arguments_are_rejected():
    model = _random_model(_tiny_config())
    with pytest.raises(ValueError, match="batch, samples"):
        model.encode(torch.zeros(100))
    with pytest.raises(ValueError, match="shorter than one token"):
        model.encode(torch.zeros(1, 15))
    with pytest.raises(ValueError, match="out of range"):
        model.encode(torch.zeros(1, 64), level=2)
    with pytest.raises(ValueError, match="entries for 2 levels"):
        VQVAEConfig(levels=2, downs_t=(1,), strides_t=(2, 2), hvqvae_multipliers=(1, 1))
    with pytest.raises(ValueError, match="even"):
        VQVAEConfig(levels=1, downs_t=(1,), strides_t=(3,), hvqvae_multipliers=(1,))


def test_encoding_runs_in_exact_float32_and_decoding_in_the_default():
    """Tokens must not depend on the device: the encoder runs with TF32 off, whatever the process
    set, which is restored after, also when the work fails; the decoder keeps the process's setting."""
    model, seen = _random_model(_tiny_config()), {}
    model.encoders[-1].register_forward_hook(lambda *_: seen.__setitem__("encoder", float32_precision()))
    model.decoders[-1].register_forward_hook(lambda *_: seen.__setitem__("decoder", float32_precision()))
    saved = float32_precision()
    with exact_float32():
        exact = float32_precision()
    tf32 = ("tf32", "tf32") if isinstance(exact[0], str) else (True, True)
    assert exact in {("ieee", "ieee"), (False, False)} and float32_precision() == saved
    try:
        vqvae._set_float32_precision(*tf32)
        model.decode(model.encode(torch.randn(1, 256)))
        assert seen == {"encoder": exact, "decoder": tf32} and float32_precision() == tf32
        with pytest.raises(RuntimeError), exact_float32():
            raise RuntimeError
        assert float32_precision() == tf32
    finally:
        vqvae._set_float32_precision(*saved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(fixture_model, fixture_audio, vqvae_reference):
    model = VQVAE.from_checkpoint(jukebox_fixture("vqvae.pth.tar"), device="cuda")
    np.testing.assert_array_equal(model.encode(fixture_audio.cuda()).cpu().numpy(), vqvae_reference["tokens_level2"])
    tokens = torch.from_numpy(vqvae_reference["tokens_level2"]).cuda()
    reference = vqvae_reference["decoded_from_level2"]
    with exact_float32():
        assert np.abs(model.decode(tokens).cpu().numpy() - reference).max() <= 1e-4
    # cuDNN's default, TF32 from Ampere on: 9e-4 off on an H200, the output's peak 2.6
    tf32_eps = 2.0**-10
    assert np.abs(model.decode(tokens).cpu().numpy() - reference).max() <= 4 * tf32_eps * np.abs(reference).max()


def test_saved_files_follow_the_umask(tmp_path):
    import os

    _random_model(_tiny_config()).save(tmp_path / "m.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("levels,downs,strides,depth,growth", [(1, (5,), (2,), 1, 3), (3, (3, 2, 2), (2, 2, 2), 4, 3),
                                                               (2, (2, 3), (4, 2), 3, 2)])  # fmt: skip
def test_decoder_reach_bounds_where_a_token_changes_the_audio(levels, downs, strides, depth, growth):
    config = VQVAEConfig(levels=levels, downs_t=downs, strides_t=strides, emb_width=8, l_bins=16, width=8,
                         depth=depth, dilation_growth_rate=growth, hvqvae_multipliers=(1,) * levels)  # fmt: skip
    model = _random_model(config, seed=1)
    level, reach = levels - 1, model.decoder_reach(levels - 1)
    hop, length, where = model.hop_length(level), 4 * reach + 8, 2 * reach + 4
    tokens = torch.randint(0, 16, (1, length))
    changed = tokens.clone()
    changed[0, where] = (tokens[0, where] + 1) % 16
    moved = ((model.decode(tokens, level) - model.decode(changed, level)).abs()[0] > 0).nonzero()[:, 0]
    first, last = int(moved[0]) // hop, int(moved[-1]) // hop
    assert where - reach <= first and last <= where + reach  # the change stays within the reach
    assert where - first >= reach // 3  # and the bound is not wildly loose


@pytest.mark.parametrize(("stride", "length"), [(2, 37), (4, 9), (3, 11), (2, 3), (2, 2)])
def test_phased_upsampling_equals_the_transposed_conv(stride, length):
    """The decoder's transposed conv by phases, alone and fused with the output conv, equals the
    plain transposed conv (and then the conv) within float rounding, edges included, and so do the
    gradients (training); odd strides (other shapes) and inputs too short to fuse take the plain path."""
    from lass_cli.vqvae import _as_image, _as_signal, _Conv, _Upsample, _upsample_then_conv

    torch.manual_seed(stride * 100 + length)
    up = _Upsample(6, 5, 2 * stride, stride, stride // 2)
    conv = torch.nn.Conv1d(5, 2, 3, 1, 1)
    x = torch.randn(3, 6, length, requires_grad=True)
    plain = torch.nn.ConvTranspose1d.forward(up, x)
    assert up.phases() is None if stride % 2 else len(up.phases()) == stride
    torch.testing.assert_close(up(x), plain, atol=1e-6, rtol=0)
    expected = conv(plain)
    grads = torch.autograd.grad(expected.square().sum(), (x, up.weight, up.bias, conv.weight, conv.bias))
    fused = _upsample_then_conv(up, conv, x)
    torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)
    for ours, theirs in zip(torch.autograd.grad(fused.square().sum(), (x, up.weight, up.bias, conv.weight, conv.bias)),
                            grads, strict=True):  # fmt: skip
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # The same on the channels-last image the decoder runs on (_as_image), gradients included.
    image = _as_image(x)
    torch.testing.assert_close(_as_signal(up(image)), plain, atol=1e-6, rtol=0)
    conv_of_images = _Conv(5, 2, 3, 1, 1)
    conv_of_images.load_state_dict(conv.state_dict())
    fused = _upsample_then_conv(up, conv_of_images, image)
    torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)
    parameters = (x, up.weight, up.bias, conv_of_images.weight, conv_of_images.bias)
    for ours, theirs in zip(torch.autograd.grad(fused.square().sum(), parameters), grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_last_stage_without_upsampling_decodes_as_before(monkeypatch):
    """downs_t[0] = 0 leaves the last decoder stage without a transposed conv: nothing to fuse, the
    plain path (as with every phase turned off) runs."""
    from lass_cli import vqvae as vqvae_module

    config = VQVAEConfig(levels=2, downs_t=(0, 1), strides_t=(2, 2), emb_width=4, l_bins=8, width=4, depth=1,
                         hvqvae_multipliers=(1, 1))  # fmt: skip
    torch.manual_seed(0)
    model = VQVAE(config)
    tokens = torch.randint(0, 8, (2, 5))
    phased = model.decode(tokens, 1)
    monkeypatch.setattr(vqvae_module._Upsample, "phases", lambda self: None)
    torch.testing.assert_close(phased, model.decode(tokens, 1), atol=1e-6, rtol=0)
    assert phased.shape == (2, 5 * model.hop_length(1))
