"""Soft masks from decoded stems: they split the mixture exactly and follow the stems' spectra."""

from __future__ import annotations

import numpy as np
import torch

from lass_cli import masks as masks_module
from lass_cli.masks import TAIL_STEP, mean_power, wiener
from lass_cli.metrics import sdr


def tones(rate: int = 22050, seconds: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(int(rate * seconds)) / rate
    low = 0.5 * torch.sin(2 * torch.pi * 80 * t)[None]
    high = 0.3 * torch.sin(2 * torch.pi * 3000 * t)[None] * (t[None] % 0.25 < 0.1)
    return low, high


def power(x: torch.Tensor) -> torch.Tensor:
    return mean_power(lambda audio: audio, x[:, None], x.shape[-1])


def test_masks_split_the_mixture_exactly_and_by_the_estimates_spectra():
    low, high = tones()
    mixture = low + high
    # Estimates with the right spectra but the wrong phase and level: the masks still find the sources.
    estimates = [2.0 * torch.roll(low, 7, -1), 0.5 * torch.roll(high, 3, -1)]
    a, b = wiener(mixture, [power(e) for e in estimates])
    torch.testing.assert_close(a + b, mixture, atol=1e-5, rtol=0)
    assert sdr(low[0].numpy(), a[0].numpy()) > 20 and sdr(high[0].numpy(), b[0].numpy()) > 20


def test_silent_estimates_split_evenly_and_short_signals_work():
    mixture = torch.randn(2, 700, generator=torch.Generator().manual_seed(0))
    silent = torch.zeros(2, 700)
    a, b = wiener(mixture, [power(silent), power(silent)])
    torch.testing.assert_close(a, mixture / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, mixture / 2, atol=1e-5, rtol=0)


def test_mean_power_averages_the_candidates():
    low, high = tones(seconds=0.5)
    table = torch.cat([low, high])  # "token" 0 decodes to the low tone, 1 to the high one

    def decode(tokens: torch.Tensor) -> torch.Tensor:
        return table[tokens[:, 0]]

    candidates = torch.tensor([[[0], [1], [1]]])  # one window, three candidates
    length = low.shape[-1]
    expected = (power(low) + 2 * power(high)) / 3
    torch.testing.assert_close(mean_power(decode, candidates, length), expected)
    assert np.isfinite(expected.numpy()).all()


def test_beam_candidates_decoded_from_where_they_differ_give_the_full_decode_power(monkeypatch):
    """Final beams share all but their last tokens: decoding only their tails (the decoder's reach
    before the first difference on) gives the power of decoding each candidate whole. Tails that
    start at one token are decoded together, up to DECODE_TOKENS tokens a call."""
    from lass_cli.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    config = VQVAEConfig(levels=2, downs_t=(2, 2), strides_t=(2, 2), emb_width=8, l_bins=16, width=8, depth=3,
                         hvqvae_multipliers=(1, 1))  # fmt: skip
    vqvae = VQVAE(config)
    with torch.no_grad():
        vqvae.bottleneck.level_blocks[1].k.normal_()
    best = torch.randint(0, 16, (2, 1, 300))
    candidates = best.repeat(1, 5, 1)
    candidates[0, 1, 280:] = 3  # differs late in one window (the other's is the best one again)
    candidates[1, 2, 170:] = 5  # earlier in the other
    candidates[:, 3, 0] = 7  # from the first token: decoded whole
    # candidate 4 is the best one again, candidate 5 candidate 3 again: neither is decoded
    candidates = torch.cat((candidates, candidates[:, 3:4]), 1)
    decoded = []

    def decode(tokens):
        decoded.append(tuple(tokens.shape))
        return vqvae.decode(tokens, level=1)

    length, reach = 300 * vqvae.hop_length(1), vqvae.decoder_reach(1)
    whole = mean_power(decode, candidates, length)
    assert decoded == [(2, 300), (4, 300)]  # the first ones, then every other one whole, together
    decoded.clear()
    monkeypatch.setattr(masks_module, "DECODE_TOKENS", 3 * 300)  # rows a call: powers of two (fewer shapes)
    torch.testing.assert_close(mean_power(decode, candidates, length), whole, rtol=1e-4, atol=1e-6)
    assert decoded == [(2, 300), (2, 300), (2, 300)]
    monkeypatch.undo()
    decoded.clear()
    tails = mean_power(decode, candidates, length, reach=reach)
    starts = [(d - 2 * reach) // TAIL_STEP * TAIL_STEP for d in (280, 170)]
    assert decoded == [(2, 300), (1, 300 - starts[0]), (1, 300 - starts[1]), (2, 300)] and 0 < starts[1] < starts[0]
    torch.testing.assert_close(tails, whole, rtol=1e-4, atol=1e-6)
    # The repeats count as often as they occur: the mean over every candidate decoded whole.
    one_by_one = [power(vqvae.decode(candidates[:, n], level=1)) for n in range(6)]
    torch.testing.assert_close(whole, sum(one_by_one) / 6, rtol=1e-4, atol=1e-6)
