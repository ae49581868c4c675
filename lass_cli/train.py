"""``lass train``: our own VQ-VAE and priors, Jukebox-compatible, on Slakh-layout folders.

- VQ-VAE: every level's encoder -> nearest code (straight-through) -> decoder; loss = L2 +
  multi-resolution spectral L2 + 0.02 x commitment (+ the LQ-VAE linearisation loss with
  ``--linearize``); codebooks follow Jukebox's EMA update (mu 0.99) with dead codes restarted from
  random latents of the batch. Batches hold triples of a drum segment, a bass segment and their
  mixture ``y = (x1 + x2) / 2`` (random pairings), so the VQ-VAE codes what separation encodes.
- Prior: teacher-forced cross-entropy on the tokens of one stem (encoded once, up front, by the
  trained VQ-VAE), windows of ``n_ctx`` tokens at random offsets.

Training is deterministic for a seed: the sampler's and torch's random states are in the training
checkpoint (``DIR/train_state.pt``, written atomically every ``--checkpoint-every`` steps), so a
killed run resumed with ``--resume`` reaches the same weights as an uninterrupted one. Validation
loss (and the priors' token accuracy) on ``--val`` go to ``DIR/log.jsonl``; the model is written
as ``DIR/vqvae.safetensors`` or ``DIR/prior_<stem>.safetensors``. A prior run keeps the tokens it
encoded in ``DIR/tokens-<stem>-<split>.npz``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .audio import rms
from .prior import Prior, PriorConfig
from .slakh import default_classes, find_tracks, load_stems
from .vqvae import VQVAE, VQVAEConfig, nearest_codes

VQVAE_PRESETS = {
    "small": dict(levels=1, downs_t=(6,), strides_t=(2,), emb_width=64, l_bins=512, width=48, depth=4,
                  m_conv=1.0, dilation_growth_rate=3, hvqvae_multipliers=(1,), sr=22050),
    "tiny": dict(levels=1, downs_t=(5,), strides_t=(2,), emb_width=16, l_bins=64, width=16, depth=2,
                 m_conv=1.0, dilation_growth_rate=3, hvqvae_multipliers=(1,), sr=22050),
}  # fmt: skip
PRIOR_PRESETS = {
    "small": dict(n_ctx=1024, prior_width=192, prior_depth=6, heads=2, blocks=16, m_attn=0.5, m_mlp=2.0),
    "tiny": dict(n_ctx=64, prior_width=32, prior_depth=3, heads=1, blocks=4),
}
STEMS = ("drums", "bass")
TRAIN_RMS = 0.1


@dataclass
class TrainRequest:
    what: str  # "vqvae" or "prior"
    data: str
    out: str
    stem: str | None = None
    vqvae: str | None = None
    preset: str = "small"
    split: str = "train"
    val: str | None = None
    steps: int = 10000
    batch_size: int = 16
    segment: int = 16384
    lr: float = 3e-4
    seed: int = 0
    checkpoint_every: int = 500
    resume: bool = False
    threads: int | None = None
    linearize: bool = False
    lin_weight: float = 0.1
    init: str | None = None  # priors: start from these weights (fine-tuning); the file's hyper-parameters win


def _spectral(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = x.new_zeros(())
    for n_fft in (2048, 1024, 512):
        if x.shape[-1] < n_fft:
            continue
        window = torch.hann_window(n_fft, device=x.device)
        a, b = (torch.stft(s, n_fft, n_fft // 4, window=window, return_complex=True).abs() for s in (x, y))
        loss = loss + (a - b).pow(2).mean() / n_fft  # per-bin energy scales with n_fft: keep it near the L2
    return loss


class Codebooks:
    """Jukebox's EMA codebook state (``k_sum``, ``k_elem``; not part of the model's weights)."""

    def __init__(self, model: VQVAE, mu: float = 0.99, threshold: float = 1.0) -> None:
        self.model, self.mu, self.threshold = model, mu, threshold
        self.k_sum = [torch.zeros_like(b.k) for b in model.bottleneck.level_blocks]
        self.k_elem = [torch.zeros(b.k.shape[0]) for b in model.bottleneck.level_blocks]
        self.ready = [False] * len(self.k_sum)

    @torch.no_grad()
    def update(self, level: int, latents: torch.Tensor, codes: torch.Tensor, generator: torch.Generator) -> float:
        """EMA step for one level; returns the fraction of codes in use."""
        k = self.model.bottleneck.level_blocks[level].k
        bins = k.shape[0]
        pick = torch.randint(len(latents), (bins,), generator=generator)
        random_rows = latents[pick] + 0.01 * torch.randn(bins, latents.shape[1], generator=generator)
        if not self.ready[level]:
            k.copy_(random_rows)
            self.k_sum[level], self.k_elem[level] = random_rows.clone(), torch.ones(bins)
            self.ready[level] = True
            return 1.0
        onehot = F.one_hot(codes, bins).to(latents.dtype)
        self.k_sum[level].mul_(self.mu).add_(onehot.T @ latents, alpha=1 - self.mu)
        self.k_elem[level].mul_(self.mu).add_(onehot.sum(0), alpha=1 - self.mu)
        used = (self.k_elem[level] >= self.threshold)[:, None]
        k.copy_(torch.where(used, self.k_sum[level] / self.k_elem[level][:, None].clamp(min=1e-8), random_rows))
        return float(used.float().mean())

    def state(self) -> dict[str, Any]:
        return {"k_sum": self.k_sum, "k_elem": self.k_elem, "ready": self.ready}

    def load(self, state: dict[str, Any]) -> None:
        self.k_sum, self.k_elem, self.ready = state["k_sum"], state["k_elem"], list(state["ready"])


def _quantise_straight(v: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codes of (..., E) vectors, with the straight-through gradient."""
    codes = nearest_codes(v.detach().reshape(-1, v.shape[-1]), codebook)
    return v + (codebook[codes].view_as(v) - v).detach()


def vqvae_loss(
    model: VQVAE, x: torch.Tensor, codebooks: Codebooks | None, generator: torch.Generator, lin_weight: float = 0.0
):
    """Reconstruction + spectral + commitment over every level; EMA-updates the codebooks.

    With ``lin_weight`` > 0, rows come in triples (x1, x2, (x1 + x2) / 2) and the LQ-VAE's
    post-quantisation linearisation loss (lqvae-paper.txt, Eq. 8-10) is added with that weight:
    ``|B_Q(E(mix)) - B_Q(B_Q(E(x1)) / 2 + B_Q(E(x2)) / 2)|^2`` per token, averaged."""
    total, metrics = x.new_zeros(()), {}
    for level in range(model.config.levels):
        latents = model.encoders[level](x[:, None])
        batch, width, length = latents.shape
        flat = latents.permute(0, 2, 1).reshape(-1, width)
        codes = nearest_codes(flat.detach(), model.codebook(level))
        if codebooks is not None:
            metrics[f"codes_used_{level}"] = codebooks.update(level, flat.detach(), codes, generator)
            codes = nearest_codes(flat.detach(), model.codebook(level))
        quantised = model.codebook(level)[codes]
        commit = (flat - quantised.detach()).pow(2).mean()
        straight = flat + (quantised - flat).detach()
        recon = model.decoders[level](straight.view(batch, length, width).permute(0, 2, 1))[:, 0]
        target = x[:, : recon.shape[-1]]
        l2, spectral = (recon - target).pow(2).mean(), _spectral(target, recon)
        total = total + l2 + spectral + 0.02 * commit
        parts = {"l2": l2, "spectral": spectral, "commit": commit}
        triples = batch // 3
        if lin_weight and triples:
            q = straight.view(batch, length, width)[: 3 * triples]
            summed = _quantise_straight(0.5 * q[0::3] + 0.5 * q[1::3], model.codebook(level))
            parts["lin"] = (q[2::3] - summed).pow(2).sum(-1).mean()
            total = total + lin_weight * parts["lin"]
        for name, value in parts.items():
            metrics[f"{name}_{level}"] = value.item()
    return total, metrics


class Sampler:
    """Random training examples from a Slakh-layout split, reproducible from its numpy state."""

    def __init__(self, root: str, split: str, rate: int, seed: int) -> None:
        tracks = find_tracks(root, split, default_classes(STEMS))
        self.stems = [load_stems(t, rate) for t in tracks]
        self.rng = np.random.default_rng(seed)

    def _segment(self, stem: str, length: int) -> np.ndarray:
        track = self.stems[int(self.rng.integers(len(self.stems)))]
        x = track[stem]
        start = int(self.rng.integers(0, max(1, len(x) - length)))
        return np.pad(x[start : start + length], (0, max(0, length - len(x))))

    def audio(self, batch: int, length: int) -> torch.Tensor:
        """Triples of rows: a drum segment, a bass segment (random tracks and times) and their
        mixture ``(x1 + x2) / 2``, scaled together so that the mixture's RMS is ``TRAIN_RMS``
        +- 6 dB, the level separation gives the VQ-VAE (rendered stems are quiet; a fixed level
        keeps the losses in range and the codebook in use)."""
        rows: list[np.ndarray] = []
        while len(rows) < batch:
            x1, x2 = self._segment("drums", length), self._segment("bass", length)
            y = (x1 + x2) / 2
            gain = TRAIN_RMS / max(rms(y), 1e-4) * 10 ** (self.rng.uniform(-6, 6) / 20)
            rows += [x1 * gain, x2 * gain, y * gain]
        return torch.from_numpy(np.clip(np.stack(rows[:batch]), -1, 1).astype(np.float32))


def _save_state(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _log(out: Path, entry: dict[str, Any]) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def train(request: TrainRequest, progress=None) -> Path:
    """Train a VQ-VAE or a prior as asked; returns the written model file."""
    if request.what not in ("vqvae", "prior"):
        raise ValueError("what must be vqvae or prior")
    if request.what == "prior" and (request.stem not in STEMS or not request.vqvae):
        raise ValueError(f"training a prior needs --stem ({', '.join(STEMS)}) and --vqvae")
    if request.threads:
        torch.set_num_threads(request.threads)
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    if state_path.exists() and not request.resume:
        raise FileExistsError(f"{state_path} exists (use --resume to continue it)")
    torch.manual_seed(request.seed)
    generator = torch.Generator().manual_seed(request.seed + 1)
    if request.what == "vqvae":
        if request.init:
            raise ValueError("--init is for priors (a VQ-VAE's codebook statistics are not in its weights)")
        model: torch.nn.Module = VQVAE(VQVAEConfig(**VQVAE_PRESETS[request.preset])).train()
        codebooks: Codebooks | None = Codebooks(model)
        rate = model.config.sr
        sampler = Sampler(request.data, request.split, rate, request.seed)
        val = Sampler(request.val, "test", rate, request.seed) if request.val else None
        target = out / "vqvae.safetensors"
    else:
        vqvae = VQVAE.from_checkpoint(request.vqvae)
        sizes = {"l_bins": vqvae.config.l_bins, "level": vqvae.config.levels - 1}
        config = PriorConfig(**{**PRIOR_PRESETS[request.preset], **sizes})
        if request.init:
            model = Prior.from_checkpoint(request.init).requires_grad_(True)
            if (model.config.l_bins, model.config.level) != (sizes["l_bins"], sizes["level"]):
                bins = model.config.l_bins
                raise ValueError(f"--init {request.init} models {bins} tokens, the VQ-VAE {sizes['l_bins']}")
        else:
            model = Prior(config)
        model, codebooks = model.train(), None
        sampler = TokenSampler(request.data, request.split, vqvae, request.stem, request.seed,
                               out / f"tokens-{request.stem}-{request.split}.npz")  # fmt: skip
        val = None
        if request.val:
            val = TokenSampler(
                request.val, "test", vqvae, request.stem, request.seed, out / f"tokens-{request.stem}-val.npz"
            )
        target = out / f"prior_{request.stem}.safetensors"
    optimizer = torch.optim.Adam(model.parameters(), lr=request.lr)
    step = 0
    if request.resume and state_path.exists():
        saved = torch.load(state_path, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if codebooks is not None:
            codebooks.load(saved["codebooks"])
        sampler.rng.bit_generator.state = saved["sampler"]
        torch.set_rng_state(saved["torch_rng"])
        generator.set_state(saved["generator"])
        step = saved["step"]
    if progress:
        progress.start(request.steps, step)
    started = time.perf_counter()
    while step < request.steps:
        model.train()
        if request.what == "vqvae":
            batch = sampler.audio(request.batch_size, request.segment)
            loss, metrics = vqvae_loss(model, batch, codebooks, generator, request.lin_weight * request.linearize)
        else:
            tokens = sampler.tokens(request.batch_size, model.config.n_ctx)
            logits = model(tokens)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
            metrics = {}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if progress:
            progress.advance(1)
        if step % request.checkpoint_every == 0 or step == request.steps:
            entry = {"step": step, "loss": loss.item(), **metrics, "seconds": round(time.perf_counter() - started, 2)}
            if val is not None:
                entry.update(_validate(model, val, request, codebooks))
            _log(out, entry)
            _save_state(state_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "codebooks": codebooks.state() if codebooks else None, "sampler": sampler.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "generator": generator.get_state(),
            })  # fmt: skip
    model.eval()
    model.save(target)
    return target


@torch.no_grad()
def _validate(model, val, request: TrainRequest, codebooks) -> dict[str, float]:
    model.eval()
    state = val.rng.bit_generator.state
    if request.what == "vqvae":
        batch = val.audio(request.batch_size, request.segment)
        loss, metrics = vqvae_loss(model, batch, None, torch.Generator(), request.lin_weight * request.linearize)
        result = {"val_loss": float(loss), **{f"val_{k}": v for k, v in metrics.items()}}
    else:
        tokens = val.tokens(request.batch_size, model.config.n_ctx)
        logits = model(tokens)
        result = {
            "val_loss": float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))),
            "val_accuracy": float((logits.argmax(-1) == tokens).float().mean()),
        }
    val.rng.bit_generator.state = state  # the same validation batch every time
    return result


class TokenSampler:
    """Windows of one stem's tokens, encoded once by the VQ-VAE and kept in ``cache`` (a resumed
    run or a second prior on the same data reads them instead of encoding hours of audio again)."""

    def __init__(self, root: str, split: str, vqvae: VQVAE, stem: str, seed: int, cache: Path) -> None:
        self.rng = np.random.default_rng(seed)
        if cache.is_file():
            with np.load(cache) as saved:
                flat, ends = torch.from_numpy(saved["tokens"]), saved["ends"].tolist()
            self.sequences = list(flat.tensor_split(ends[:-1]))
            return
        tracks = find_tracks(root, split, default_classes(STEMS))
        self.sequences = []
        with torch.inference_mode():
            for track in tracks:
                stems = load_stems(track, vqvae.config.sr)
                y = (stems["drums"] + stems["bass"]) / 2  # the stem at the level separation gives it
                gain = TRAIN_RMS / max(rms(y), 1e-4)
                x = torch.from_numpy((stems[stem] * gain).astype(np.float32))[None]
                self.sequences.append(vqvae.encode(x).clone()[0])
        partial = cache.with_name(f".{cache.name}.partial")
        with open(partial, "wb") as f:
            ends = np.cumsum([len(s) for s in self.sequences])
            np.savez(f, tokens=torch.cat(self.sequences).numpy(), ends=ends)
        os.replace(partial, cache)

    def tokens(self, batch: int, length: int) -> torch.Tensor:
        rows = []
        for _ in range(batch):
            t = self.sequences[int(self.rng.integers(len(self.sequences)))]
            start = int(self.rng.integers(0, max(1, len(t) - length)))
            window = t[start : start + length]
            rows.append(F.pad(window, (0, length - len(window))))
        return torch.stack(rows)


__all__ = ["PRIOR_PRESETS", "TrainRequest", "VQVAE_PRESETS", "train"]
