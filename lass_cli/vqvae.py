"""Jukebox-compatible VQ-VAE: loads the original checkpoints key for key and encodes/decodes audio.

Each level has its own full encoder and decoder (level l downsamples the waveform by itself);
LASS uses only the top level (hop 128 at 44.1 kHz, K = 2048 for the Jukebox 5B VQ-VAE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_strict, read_checkpoint, write_safetensors

# Rows of the (rows x K) distance matrix computed at once when quantising.
_QUANTISE_CHUNK = 8192


@dataclass(frozen=True)
class VQVAEConfig:
    """Hyper-parameters under their upstream Jukebox names; defaults are the Jukebox 5B VQ-VAE.

    Args:
        levels: number of levels; level 0 is the finest, ``levels - 1`` the top.
        downs_t: per level, how many strided convolutions its stage has.
        strides_t: per level, the stride of those convolutions (kernel ``2 * stride``).
        emb_width: width of the latent vectors and codebook entries.
        l_bins: codebook size K of every level.
        width, depth: channels and residual blocks of each stage, before the multipliers.
        m_conv: hidden channels of a residual block relative to ``width``.
        dilation_growth_rate, dilation_cycle: residual block d has dilation
            ``growth ** (d % cycle)`` (no cycle: ``growth ** d``).
        hvqvae_multipliers: per level, scales both width and depth of that level's coder.
        vqvae_reverse_decoder_dilation: decoders run the dilations largest first.
        sr: sample rate the model was trained at (no effect on the computation).
    """

    levels: int = 3
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    emb_width: int = 64
    l_bins: int = 2048
    width: int = 32
    depth: int = 4
    m_conv: float = 1.0
    dilation_growth_rate: int = 3
    dilation_cycle: int | None = None
    hvqvae_multipliers: tuple[int, ...] = (2, 1, 1)
    vqvae_reverse_decoder_dilation: bool = True
    sr: int = 44100

    def __post_init__(self) -> None:
        for name in ("downs_t", "strides_t", "hvqvae_multipliers"):
            value = tuple(int(v) for v in getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != self.levels:
                raise ValueError(f"{name} has {len(value)} entries for {self.levels} levels")
        if any(s < 2 or s % 2 for s in self.strides_t):
            raise ValueError(f"strides_t must be even numbers, got {self.strides_t}")

    @classmethod
    def from_hps(cls, hps: dict[str, Any]) -> VQVAEConfig:
        """Build from an upstream hyper-parameter dict; keys that are not VQ-VAE settings are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in hps.items() if k in names})

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> VQVAEConfig:
        """Read the hyper-parameters off the tensor shapes of a state_dict.

        Dilations leave no trace in the weights: ``dilation_growth_rate`` keeps Jukebox's 3 and
        ``dilation_cycle`` None. Pass a config explicitly for models trained otherwise.
        """
        try:
            levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoders\.(\d+)\.", k)))
            l_bins, emb_width = state["bottleneck.level_blocks.0.k"].shape
            top = f"encoders.{levels - 1}.level_blocks"
            downs, strides = [], []
            for i in range(levels):
                n = sum(1 for k in state if re.fullmatch(rf"{top}\.{i}\.model\.\d+\.0\.weight", k))
                downs.append(n)
                strides.append(state[f"{top}.{i}.model.0.0.weight"].shape[-1] // 2)
            widths, depths = [], []
            for level in range(levels):
                stack = f"encoders.{level}.level_blocks.0.model.0.1.model"
                widths.append(state[f"encoders.{level}.level_blocks.0.model.0.0.weight"].shape[0])
                depths.append(sum(1 for k in state if re.fullmatch(rf"{stack}\.\d+\.model\.1\.weight", k)))
            hidden = state["encoders.0.level_blocks.0.model.0.1.model.0.model.1.weight"].shape[0]
        except (KeyError, ValueError, IndexError) as exc:
            raise CheckpointError(f"state_dict is not a Jukebox VQ-VAE (missing {exc})") from None
        width = min(widths)
        multipliers = [w // width for w in widths]
        depth = depths[widths.index(width)]
        if any(m * width != w or m * depth != d for m, w, d in zip(multipliers, widths, depths, strict=False)):
            raise CheckpointError(
                f"cannot derive width/depth multipliers from widths {widths} and depths {depths}; pass a VQVAEConfig"
            )
        return cls(
            levels=levels,
            downs_t=tuple(downs),
            strides_t=tuple(strides),
            emb_width=int(emb_width),
            l_bins=int(l_bins),
            width=width,
            depth=depth,
            m_conv=hidden / widths[0],
            hvqvae_multipliers=tuple(multipliers),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        """Samples per token at each level (8, 32, 128 for Jukebox)."""
        hops, hop = [], 1
        for down, stride in zip(self.downs_t, self.strides_t, strict=False):
            hop *= stride**down
            hops.append(hop)
        return tuple(hops)


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """A signal (batch, channels, length) as the channels-last image (batch, channels, 1, length)
    that the encoder and decoder run on: oneDNN's 1-D convolutions of these few channels (32-64)
    reorder their input and output to a blocked layout at every call, and a width-48 layer over
    32,768 samples took 11-14 ms that way, against 1.2-3.6 ms as a 2-D convolution of a
    channels-last image (2 Xeon cores, ``docs/benchmarks.md``). The same sums, within float rounding."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _as_signal(x: torch.Tensor) -> torch.Tensor:
    """:func:`_as_image` undone: (batch, channels, length), contiguous."""
    return x.squeeze(2).contiguous()


class _Conv(nn.Conv1d):
    """``nn.Conv1d`` (same parameters and keys) that also takes a signal as :func:`_as_image` lays it out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        (stride,), (padding,), (dilation,) = self.stride, self.padding, self.dilation
        weight = self.weight.unsqueeze(2)
        return F.conv2d(x, weight, self.bias, (1, stride), (0, padding), (1, dilation), self.groups)


class _ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3_dilated(relu(x))))``; keys ``model.1`` and ``model.3``."""

    def __init__(self, width: int, hidden: int, dilation: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            _Conv(width, hidden, 3, 1, padding=dilation, dilation=dilation),
            nn.ReLU(),
            _Conv(hidden, width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.model(x)


def _dilations(config: VQVAEConfig, depth: int) -> list[int]:
    growth, cycle = config.dilation_growth_rate, config.dilation_cycle
    return [growth ** (d % cycle if cycle else d) for d in range(depth)]


class _ResidualStack(nn.Module):
    def __init__(self, width: int, depth: int, config: VQVAEConfig, reverse: bool) -> None:
        super().__init__()
        dilations = _dilations(config, depth)
        if reverse:
            dilations.reverse()
        hidden = int(config.m_conv * width)
        self.model = nn.Sequential(*(_ResidualBlock(width, hidden, d) for d in dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _level_size(config: VQVAEConfig, level: int) -> tuple[int, int]:
    multiplier = config.hvqvae_multipliers[level]
    return config.width * multiplier, config.depth * multiplier


class _EncoderStage(nn.Module):
    """Strided conv + residual stack, ``downs_t[i]`` times, then a conv to ``emb_width``."""

    def __init__(self, config: VQVAEConfig, level: int, stage: int) -> None:
        super().__init__()
        width, depth = _level_size(config, level)
        stride, emb = config.strides_t[stage], config.emb_width
        layers: list[nn.Module] = []
        for j in range(config.downs_t[stage]):
            channels_in = (1 if stage == 0 else emb) if j == 0 else width
            down = _Conv(channels_in, width, 2 * stride, stride, stride // 2)
            layers.append(nn.Sequential(down, _ResidualStack(width, depth, config, reverse=False)))
        layers.append(_Conv(width, emb, 3, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Encoder(nn.Module):
    def __init__(self, config: VQVAEConfig, level: int) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(_EncoderStage(config, level, i) for i in range(level + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_image(x)
        for stage in self.level_blocks:
            x = stage(x)
        return _as_signal(x)


class _Upsample(nn.ConvTranspose1d):
    """The decoder's transposed conv (kernel 2s, stride s, padding s / 2), computed as s phases.

    Output sample ``s n + r`` is ``P_r x[n + q_r - 1] + Q_r x[n + q_r] + b`` (``r + s / 2 = s q_r +
    c``, ``P_r = W_{c+s}^T``, ``Q_r = W_c^T``): one ordinary two-tap conv gives every phase, and the
    phases are interleaved. On CPU 1.8-1.9x the transposed conv at the embedded decoder's two
    longest outputs, where most of its time was oneDNN reordering its output (``docs/benchmarks.md``);
    equal within float rounding. Other shapes run the transposed conv itself."""

    def phases(self) -> list[tuple[int, torch.Tensor, torch.Tensor]] | None:
        """``(q_r, P_r, Q_r)`` of each phase r, each weight (out, in); None for other shapes."""
        (stride,), (kernel,), (padding,) = self.stride, self.kernel_size, self.padding
        plain = self.output_padding != (0,) or self.dilation != (1,) or self.groups != 1
        if plain or kernel != 2 * stride or 2 * padding != stride:
            return None
        out = []
        for r in range(stride):
            q, c = divmod(r + padding, stride)
            out.append((q, self.weight[:, :, c + stride].T, self.weight[:, :, c].T))
        return out

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.dim() == 4 and output_size is None:
            return self._image_forward(x)
        phases = self.phases()
        if phases is None or output_size is not None or x.dim() != 3:
            return super().forward(x, output_size)
        stride, length = len(phases), x.shape[-1]
        weight = torch.cat([torch.stack((p, q), -1) for _, p, q in phases])  # taps at x[m - 1], x[m]
        bias = None if self.bias is None else self.bias.repeat(stride)
        taps = F.conv1d(F.pad(x, (1, 1)), weight, bias).unflatten(1, (stride, self.out_channels))
        return _interleave([taps[:, r, :, q : q + length] for r, (q, _, _) in enumerate(phases)])

    def _image_forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of a signal laid out by :func:`_as_image`; the phases interleave as a
        channels-last image, each output sample's channels side by side."""
        phases, stride = self.phases(), self.stride[0]
        if phases is None:
            padding, output_padding, dilation = self.padding[0], self.output_padding[0], self.dilation[0]
            weight = self.weight.unsqueeze(2)
            return F.conv_transpose2d(x, weight, self.bias, (1, stride), (0, padding), (0, output_padding),
                                      self.groups, (1, dilation))  # fmt: skip
        batch, _, _, length = x.shape
        weight = torch.cat([torch.stack((p, q), -1) for _, p, q in phases])[:, :, None]  # taps at x[m - 1], x[m]
        bias = None if self.bias is None else self.bias.repeat(stride)
        taps = F.conv2d(x, weight, bias, padding=(0, 1)).permute(0, 2, 3, 1)  # (batch, 1, length + 1, s C)
        channels = self.out_channels
        out = torch.stack([taps[..., q : q + length, r * channels : (r + 1) * channels]
                           for r, (q, _, _) in enumerate(phases)], 3)  # fmt: skip
        return out.view(batch, 1, length * stride, channels).permute(0, 3, 1, 2)


def _interleave(phases: list[torch.Tensor]) -> torch.Tensor:
    """(batch, channels, L) phases r -> (batch, channels, s L) with sample ``s n + r`` from phase r."""
    return torch.stack(phases, -1).flatten(-2)


def _upsample_then_conv(up: _Upsample, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(up(x))`` for the decoder's last transposed conv and its output conv (kernel 3,
    padding 1), as one conv from x to each output phase: the E-channel signal at the full rate
    between them is never made (on CPU its conv and interleave were a third of a decode). Where
    the output conv reads its zero padding (the first and the last sample) that is computed
    apart, from the first and the last three inputs. x is a signal (batch, E, L) or laid out by
    :func:`_as_image`; the result is a signal (batch, C, s L)."""
    phases = up.phases()
    plain = conv.kernel_size != (3,) or conv.padding != (1,) or conv.stride != (1,) or conv.dilation != (1,)
    if phases is None or plain or conv.groups != 1 or conv.padding_mode != "zeros" or x.shape[-1] < 3:
        y = conv(up(x))
        return _as_signal(y) if y.dim() == 4 else y
    stride, v = len(phases), conv.weight  # v: (C, E, 3), taps at y[o - 1], y[o], y[o + 1]
    weight = v.new_zeros(stride, v.shape[0], x.shape[1], 5)  # taps at x[n - 2] .. x[n + 2]
    bias = conv.bias.clone() if conv.bias is not None else v.new_zeros(v.shape[0])
    if up.bias is not None:
        bias += v.sum(2) @ up.bias
    for r in range(stride):
        for t in (-1, 0, 1):
            shift, rho = divmod(r + t, stride)  # y[s n + r + t] is phase rho at n + shift
            q, p, w = phases[rho]
            weight[r, :, :, shift + q + 1] += v[:, :, t + 1] @ p
            weight[r, :, :, shift + q + 2] += v[:, :, t + 1] @ w
    channels = v.shape[0]
    if x.dim() == 4:  # laid out by _as_image: output sample s n + r's channels are those of phase r at n
        z = F.conv2d(x, weight.flatten(0, 1)[:, :, None], bias.repeat(stride), padding=(0, 2))
        z = z.permute(0, 2, 3, 1).reshape(len(x), -1, channels).transpose(1, 2)
        x = x[:, :, 0]
    else:
        z = F.conv1d(x, weight.flatten(0, 1), bias.repeat(stride), padding=2).unflatten(1, (stride, channels))
        z = _interleave(list(z.unbind(1)))
    z[..., 0] = conv(up(x[..., :3]))[..., 0]
    z[..., -1] = conv(up(x[..., -3:]))[..., -1]
    return z


class _DecoderStage(nn.Module):
    """A conv from ``emb_width``, then residual stack + transposed conv, ``downs_t[i]`` times."""

    def __init__(self, config: VQVAEConfig, level: int, stage: int) -> None:
        super().__init__()
        width, depth = _level_size(config, level)
        stride, emb, downs = config.strides_t[stage], config.emb_width, config.downs_t[stage]
        reverse = config.vqvae_reverse_decoder_dilation
        layers: list[nn.Module] = [_Conv(emb, width, 3, 1, 1)]
        for j in range(downs):
            channels_out = emb if j == downs - 1 else width
            up = _Upsample(width, channels_out, 2 * stride, stride, stride // 2)
            layers.append(nn.Sequential(_ResidualStack(width, depth, config, reverse), up))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Decoder(nn.Module):
    def __init__(self, config: VQVAEConfig, level: int) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(_DecoderStage(config, level, i) for i in range(level + 1))
        self.out = _Conv(config.emb_width, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_image(x)
        *stages, last = reversed(self.level_blocks)
        for stage in stages:
            x = stage(x)
        *body, final = last.model
        if not isinstance(final, nn.Sequential):  # downs_t[0] = 0: no transposed conv to fuse
            return _as_signal(self.out(last(x)))
        for module in body:
            x = module(x)
        stack, up = final  # the last transposed conv meets the output conv
        return _upsample_then_conv(up, self.out, stack(x))


class _Codebook(nn.Module):
    def __init__(self, bins: int, width: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(bins, width))


class _Bottleneck(nn.Module):
    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(_Codebook(config.l_bins, config.emb_width) for _ in range(config.levels))


# torch >= 2.9 sets TF32 per operator; its legacy ``allow_tf32`` flags raise when read once the two
# ways were mixed (a user's or a library's setting), so the newer one is used where it exists.
_PER_OPERATOR = hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def float32_precision() -> tuple[Any, Any]:
    """Whether CUDA may run float32 convolutions (cuDNN) and products in TF32: the ``fp32_precision``
    settings (torch >= 2.9; ``ieee`` is exact), else the legacy ``allow_tf32`` flags."""
    if _PER_OPERATOR:
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _set_float32_precision(convolutions: Any, products: Any) -> None:
    if _PER_OPERATOR:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = convolutions, products
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = convolutions, products


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """float32 convolutions and products in full float32 on CUDA, as on a CPU. cuDNN runs float32
    convolutions in TF32 by default (10 bits of mantissa; an H200 decoded the parity fixture 9e-4
    off the CPU's): encoding decides discrete tokens, which a near tie would let the device change,
    so encoding runs exact. Decoding, whose output is audio, keeps cuDNN's faster default."""
    saved = float32_precision()
    _set_float32_precision(*(("ieee", "ieee") if _PER_OPERATOR else (False, False)))
    try:
        yield
    finally:
        _set_float32_precision(*saved)


@exact_float32()
def nearest_codes(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for each latent row: (N, E), (K, E) -> (N,).

    Uses the reference's ``|x|^2 - 2 x.k + |k|^2`` and its first-index tie rule.
    """
    k_sq = codebook.pow(2).sum(1)
    codes = [
        (rows.pow(2).sum(1, keepdim=True) - 2 * rows @ codebook.T + k_sq).argmin(1)
        for rows in latents.split(_QUANTISE_CHUNK)
    ]
    return torch.cat(codes) if codes else latents.new_zeros(0, dtype=torch.long)


class VQVAE(nn.Module):
    """Jukebox VQ-VAE with the original module tree, so its state_dict keys match the original.

    Audio is float (batch, samples), mono, not normalised. A level's tokens cover
    ``samples // hop`` whole hops; a partial hop at the end is dropped, as in the original.
    """

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleList(_Encoder(config, lvl) for lvl in range(config.levels))
        self.decoders = nn.ModuleList(_Decoder(config, lvl) for lvl in range(config.levels))
        self.bottleneck = _Bottleneck(config)
        self.eval()

    def _level(self, level: int) -> int:
        levels = self.config.levels
        if not -levels <= level < levels:
            raise ValueError(f"level {level} out of range for a {levels}-level VQ-VAE")
        return level % levels

    def hop_length(self, level: int = -1) -> int:
        return self.config.hop_lengths[self._level(level)]

    def decoder_reach(self, level: int = -1) -> int:
        """Tokens either side of a token that can change its decoded samples (the decoder's
        receptive field, rounded up): two token sequences that agree within that distance of a
        token decode to the same samples there."""
        config, level = self.config, self._level(level)
        depth = _level_size(config, level)[1]
        reach, step = 0.0, 1.0  # in tokens; step: one sample of the current resolution
        for stage in reversed(range(level + 1)):
            reach += step  # the kernel-3 conv from emb_width
            for _ in range(config.downs_t[stage]):
                reach += step * sum(_dilations(config, depth))  # kernel-3 dilated convs
                reach += 2 * step  # the transposed conv reads up to two inputs each side
                step /= config.strides_t[stage]
        return math.ceil(reach + step) + 1  # the output conv, and a token to spare

    def codebook(self, level: int = -1) -> torch.Tensor:
        """(K, emb_width) code vectors of a level."""
        return self.bottleneck.level_blocks[self._level(level)].k

    @torch.inference_mode()
    def encoder_output(self, audio: torch.Tensor, level: int = -1) -> torch.Tensor:
        """Continuous latents before quantisation: (batch, samples) -> (batch, emb_width, S)."""
        level = self._level(level)
        if audio.dim() != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        if audio.shape[1] < self.hop_length(level):
            raise ValueError(f"audio of {audio.shape[1]} samples is shorter than one token")
        weight = self.encoders[level].level_blocks[0].model[0][0].weight
        x = audio.to(device=weight.device, dtype=weight.dtype)[:, None, :]
        with exact_float32():
            return self.encoders[level](x)

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor, level: int = -1) -> torch.Tensor:
        """Tokens of a level: (batch, samples) float -> (batch, samples // hop) long."""
        latents = self.encoder_output(audio, level)
        batch, width, length = latents.shape
        rows = latents.permute(0, 2, 1).reshape(-1, width)
        return nearest_codes(rows, self.codebook(level)).view(batch, length)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, level: int = -1) -> torch.Tensor:
        """Audio from one level's tokens: (batch, S) long -> (batch, S * hop) float."""
        level = self._level(level)
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, S), got shape {tuple(tokens.shape)}")
        codebook = self.codebook(level)
        latents = codebook[tokens.to(codebook.device)].permute(0, 2, 1)
        return self.decoders[level](latents)[:, 0, :]

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config: VQVAEConfig | None = None, device: str | torch.device = "cpu"
    ) -> VQVAE:
        """Load an original checkpoint dict, a plain state_dict or a safetensors file.

        The config comes from the argument, else the file's saved hyper-parameters, else the
        tensor shapes.
        """
        state, hps = read_checkpoint(path)
        if config is None:
            config = VQVAEConfig.from_hps(hps) if hps else VQVAEConfig.from_state_dict(state)
        model = cls(config)
        load_strict(model, state, path)
        return model.to(device)

    def save(self, path: str | Path) -> None:
        """Write weights and config as safetensors (readable by ``from_checkpoint``)."""
        write_safetensors(path, self.state_dict(), self.config.to_dict(), kind="vqvae")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["VQVAE", "VQVAEConfig", "from_transformers_keys", "nearest_codes", "to_transformers_keys"]


# Key names of the same VQ-VAE inside a transformers ``JukeboxModel`` (prefix ``vqvae.``): each rule
# is (a pattern of one layout's keys, the matching key of the other); the two tables are inverses.
_TRANSFORMERS_RULES = [
    (r"(encoders\.\d+\.level_blocks\.\d+)\.model\.(\d+)\.0\.", lambda m: f"{m[1]}.downsample_block.{2 * int(m[2])}."),
    (r"(encoders\.\d+\.level_blocks\.\d+)\.model\.(\d+)\.1\.model\.(\d+)\.model\.([13])\.",
     lambda m: f"{m[1]}.downsample_block.{2 * int(m[2]) + 1}.resnet_block.{m[3]}.conv1d_{(int(m[4]) + 1) // 2}."),
    (r"(encoders\.\d+\.level_blocks\.\d+)\.model\.\d+\.(weight|bias)$", lambda m: f"{m[1]}.proj_out.{m[2]}"),
    (r"(decoders\.\d+\.level_blocks\.\d+)\.model\.0\.", lambda m: f"{m[1]}.proj_in."),
    (r"(decoders\.\d+\.level_blocks\.\d+)\.model\.(\d+)\.0\.model\.(\d+)\.model\.([13])\.",
     lambda m: f"{m[1]}.upsample_block.{2 * (int(m[2]) - 1)}.resnet_block.{m[3]}.conv1d_{(int(m[4]) + 1) // 2}."),
    (r"(decoders\.\d+\.level_blocks\.\d+)\.model\.(\d+)\.1\.", lambda m: f"{m[1]}.upsample_block.{2 * int(m[2]) - 1}."),
    (r"(bottleneck\.level_blocks\.\d+)\.k$", lambda m: f"{m[1]}.codebook"),
]  # fmt: skip
_ORIGINAL_RULES = [
    (r"(encoders\.\d+\.level_blocks\.\d+)\.downsample_block\.(\d+)\.resnet_block\.(\d+)\.conv1d_([12])\.",
     lambda m: f"{m[1]}.model.{int(m[2]) // 2}.1.model.{m[3]}.model.{2 * int(m[4]) - 1}."),
    (r"(encoders\.\d+\.level_blocks\.\d+)\.downsample_block\.(\d+)\.", lambda m: f"{m[1]}.model.{int(m[2]) // 2}.0."),
    (r"(decoders\.\d+\.level_blocks\.\d+)\.proj_in\.", lambda m: f"{m[1]}.model.0."),
    (r"(decoders\.\d+\.level_blocks\.\d+)\.upsample_block\.(\d+)\.resnet_block\.(\d+)\.conv1d_([12])\.",
     lambda m: f"{m[1]}.model.{int(m[2]) // 2 + 1}.0.model.{m[3]}.model.{2 * int(m[4]) - 1}."),
    (r"(decoders\.\d+\.level_blocks\.\d+)\.upsample_block\.(\d+)\.",
     lambda m: f"{m[1]}.model.{(int(m[2]) + 1) // 2}.1."),
    (r"(bottleneck\.level_blocks\.\d+)\.codebook$", lambda m: f"{m[1]}.k"),
]  # fmt: skip


def _rename(key: str, rules: list) -> str:
    for pattern, replace in rules:
        renamed, count = re.subn(pattern, replace, key)
        if count:
            return renamed
    return key


def to_transformers_keys(state: dict[str, torch.Tensor], prefix: str = "vqvae.") -> dict[str, torch.Tensor]:
    """Original Jukebox VQ-VAE keys -> transformers ``JukeboxModel`` keys."""
    return {prefix + _rename(k, _TRANSFORMERS_RULES): v for k, v in state.items()}


def from_transformers_keys(state: dict[str, torch.Tensor], prefix: str = "vqvae.") -> dict[str, torch.Tensor]:
    """transformers ``JukeboxModel`` keys (those under ``prefix``) -> original Jukebox VQ-VAE keys.

    The encoder's last conv (``proj_out``) takes the index after its ``downs_t`` stages, read off
    the number of downsampling convs present for that stage.
    """
    picked = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    out = {}
    for key, value in picked.items():
        match = re.match(r"(encoders\.\d+\.level_blocks\.\d+)\.proj_out\.(weight|bias)$", key)
        if match:
            stage = match[1]
            downs = sum(1 for k in picked if re.fullmatch(rf"{re.escape(stage)}\.downsample_block\.\d+\.weight", k))
            out[f"{stage}.model.{downs}.{match[2]}"] = value
        else:
            out[_rename(key, _ORIGINAL_RULES)] = value
    return out
