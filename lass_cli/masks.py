"""Mixture-consistent soft masks: the decoded stems say how the mixture's energy splits.

A decoded stem is a plausible signal of its source, not the mixture's own samples: its phase and
fine detail come from the VQ-VAE's decoder. Used as a Wiener-like mask on the mixture's STFT
(``P_i^a / sum_j P_j^a``, P the power spectrum, a = ``SHARPNESS``) it keeps the mixture's phase
and detail, and the stems add up to the mixture exactly. P is averaged over every candidate the
search kept (the final beams, or all samples): a posterior-mean mask, steadier than the power of
one guess. It is a per-model setting (``wiener = true`` in the registry) with
``--wiener/--no-wiener`` to override; the gains on our embedded model are in docs/quality.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# Chosen on held-out mixtures (docs/quality.md): against 2048 and a = 1 (Wiener), 4096 and a = 1.5
# gained 0.15 dB per stem; a = 2 or 3 EM iterations of the Wiener filter gained less or lost.
N_FFT = 4096  # 186 ms at 22.05 kHz: resolves bass notes
SHARPNESS = 1.5
EPSILON = 1e-10
# Tails are decoded from a multiple of this many tokens: a few tokens more to decode, and a few
# shapes the CPU convolution library keeps a plan (and memory) for, where every tail length would
# add plans window after window (measured: 100 MB more retained a batch of 12 windows).
TAIL_STEP = 64
# Tokens decoded at once (rows x length) where several candidates' tails are: on 2 Xeon cores the
# embedded decoder ran 32-45 ms per 1024 tokens at 4096 a call, 50 at 1024-2048, 58-69 at 8192 (its
# activations leave the cache).
DECODE_TOKENS = 4096


def _frame(length: int) -> int:
    return N_FFT if length >= N_FFT else max(16, 1 << (length.bit_length() - 1))


def _stft(x: torch.Tensor, length: int) -> torch.Tensor:
    n_fft = _frame(length)
    x = x.float()
    x = x[..., :length] if x.shape[-1] >= length else F.pad(x, (0, length - x.shape[-1]))
    window = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x.reshape(-1, length), n_fft, n_fft // 4, window=window, return_complex=True).view(
        *x.shape[:-1], n_fft // 2 + 1, -1
    )


def mean_power(
    decode: Callable[[torch.Tensor], torch.Tensor], candidates: torch.Tensor, length: int, reach: int | None = None
) -> torch.Tensor:
    """Power spectrogram of the decoded candidates (W, N, S) tokens, averaged over N: (W, F, frames).
    A candidate equal to an earlier one of its window is not decoded again but counted with that
    one's power: where the final beams differ only in the other stem's tokens they repeat this
    stem's (on our model about 40 % of the bass candidates and 10 % of the drums ones).

    With ``reach`` (the decoder's receptive field in tokens, :meth:`VQVAE.decoder_reach`) a
    candidate that agrees with the first one up to token d is decoded only from token
    ``d - 2 reach`` on (rounded down to a multiple of ``TAIL_STEP``), and the first one's samples
    are kept before that start + reach: the final beams of a beam search differ only in their last
    few dozen tokens, so this decodes a fraction. Tails that start at one token are decoded
    together, up to :data:`DECODE_TOKENS` tokens a call."""
    windows, count, size = candidates.shape
    first = decode(candidates[:, 0])
    powers: dict[tuple[int, int], torch.Tensor] = {}
    first_power = _stft(first, length).abs().pow(2)
    for w in range(windows):
        powers[0, w] = first_power[w]
    starts: dict[int, list[tuple[int, int]]] = {}  # tails to decode, by the token they start at
    repeats = []
    for n in range(1, count):
        same = (candidates[:, :n] == candidates[:, n : n + 1]).all(2)  # (W, n): equal to an earlier rank
        for w in range(windows):
            if same[w].any():
                repeats.append((n, w, int(same[w].int().argmax())))  # the first equal rank: not a repeat itself
                continue
            differs = (candidates[w, n] != candidates[w, 0]).nonzero()
            start = 0 if reach is None else max(0, int(differs[0]) - 2 * reach) // TAIL_STEP * TAIL_STEP
            starts.setdefault(start, []).append((n, w))
    for start, tails in starts.items():
        for chunk in _in_powers_of_two(tails, max(1, DECODE_TOKENS // (size - start))):
            ranks, rows = (torch.tensor(index, device=candidates.device) for index in zip(*chunk))
            signal = _decoded_from(decode, candidates[rows, ranks], first[rows], start, reach)
            for key, power in zip(chunk, _stft(signal, length).abs().pow(2)):
                powers[key] = power
    for n, w, rank in repeats:
        powers[n, w] = powers[rank, w]
    return torch.stack([sum(powers[n, w] for n in range(count)) for w in range(windows)]) / count


def _in_powers_of_two(items: list, most: int) -> list[list]:
    """``items`` in consecutive parts of a power of two each, at most ``most`` (largest first):
    the convolution library keeps memory for every input shape it meets (on the embedded decoder
    every rows x length of a tail, 1-16 x 64-1,024, took 1.8 GB, the powers of two 1.2 GB)."""
    largest, parts = 1 << (most.bit_length() - 1), []
    while items:
        count = min(largest, 1 << (len(items).bit_length() - 1))
        parts.append(items[:count])
        items = items[count:]
    return parts


def _decoded_from(
    decode: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, first: torch.Tensor, start: int,
    reach: int | None,
) -> torch.Tensor:  # fmt: skip
    """``decode(tokens)`` (rows, S) where they agree with the first candidate before token ``start
    + 2 reach``: only the tail from ``start`` is decoded, the first one's samples ``first`` serve
    before it (see :func:`mean_power`)."""
    if start == 0 or reach is None:
        return decode(tokens)
    hop = first.shape[-1] // tokens.shape[-1]
    keep = start + reach  # from here on the tail's samples have their whole context
    tail = decode(tokens[:, start:])
    return torch.cat((first[:, : keep * hop], tail[:, reach * hop :]), dim=-1)


def wiener(mixture: torch.Tensor, powers: list[torch.Tensor]) -> list[torch.Tensor]:
    """Split (W, T) ``mixture`` by the (W, F, frames) power spectrograms of its sources."""
    length = mixture.shape[-1]
    n_fft = _frame(length)
    window = torch.hann_window(n_fft, device=mixture.device)
    spectrum = _stft(mixture, length)
    powers = [(p + EPSILON) ** SHARPNESS for p in powers]  # silent bins: an even split
    total = sum(powers)
    return [torch.istft(spectrum * (p / total), n_fft, n_fft // 4, window=window, length=length) for p in powers]


__all__ = ["mean_power", "wiener"]
