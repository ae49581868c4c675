"""File -> stems: the pipeline behind ``lass separate`` and ``lass evaluate``.

read -> mono -> model rate -> y = mix / 2 -> per batch of windows: cut -> encode -> search -> decode
each stem -> stitch -> input rate -> input length -> to a sink (the stem files) or joined. The
encoder sees half the mixture, as the likelihood was counted on ``y = (x1 + x2) / 2``; the decoded
sources come back at the stems' own level, so the written stems add up to about the input.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import audio, masks
from .latent import LatentLikelihood
from .likelihood import Counts, Likelihood
from .prior import Prior, PriorCache, PriorConfig
from .registry import FileSpec, ModelSpec, require
from .search import SearchOptions, SearchResult, search
from .vqvae import VQVAE, VQVAEConfig, nearest_codes

UPSTREAM_FIRST = "bass"  # the original code's source 0
# Windows per VQ-VAE call. One 3 s window's activations are about 16 MB a layer: on a CPU two
# windows stay in cache (decoding measured 0.12 s a window at 2 against 0.22 s at 6), a GPU wants
# more rows.
_CODER_BATCH = {"cpu": 2, "cuda": 8}
# Rows (windows x beams) per prior call, which bound a batch's memory (the caches). On 2 CPU cores a
# step's throughput grows little past about 100 rows: 1.2x at most from 128 to 256 rows for twice
# the caches (benchmarks/prior_step.py, docs/benchmarks.md); a GPU wants thousands.
_MAX_ROWS = {"cpu": 128, "cuda": 4096}


def _device_kind(device: torch.device) -> str:
    """The key of the per-device tables above: CUDA, or anything else treated as a CPU."""
    return "cuda" if device.type == "cuda" else "cpu"


def _available_memory() -> int:
    """Bytes of memory available now (Linux /proc/meminfo), 8 GiB where that cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_dtype(device: torch.device, name: str = "auto", compat: str = "none") -> torch.dtype:
    """The precision of the priors' projections, decided here only: as asked, else float16 on CUDA
    (Jukebox's sampling precision, half the memory and twice the speed) and float32 on CPU (whose
    half-precision matmuls are slower); ``--compat upstream`` always float32, as the original runs
    (the ``--dtype`` help says so)."""
    if compat == "upstream":
        return torch.float32
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _random_vqvae(spec: FileSpec) -> VQVAE:
    """Seeded weights, and codebook rows drawn from encoder outputs of noise (as Jukebox starts)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = VQVAE(VQVAEConfig(**spec.config))
        latents = model.encoder_output(torch.randn(4, 16384) * 0.3)
        rows = latents.permute(0, 2, 1).reshape(-1, latents.shape[1])
        chosen = rows[torch.randperm(len(rows))[: model.config.l_bins]]
        with torch.no_grad():
            for codebook in model.bottleneck.level_blocks:
                codebook.k.copy_(chosen + 0.01 * torch.randn_like(chosen))
    return model


def _random_prior(spec: FileSpec) -> Prior:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return Prior(PriorConfig(**spec.config))


def _random_counts(spec: FileSpec, vqvae: VQVAE, level: int) -> Counts:
    """Counts from pairs of seeded noise, encoded like real sources and their mixture."""
    generator = torch.Generator().manual_seed(spec.seed)
    x1, x2 = (torch.randn(16, 8192, generator=generator) * 0.3 for _ in range(2))
    counts = Counts(vqvae.config.l_bins)
    codebook = vqvae.codebook(level)

    def tokens(x: torch.Tensor) -> torch.Tensor:
        latents = vqvae.encoder_output(x, level)
        return nearest_codes(latents.permute(0, 2, 1).reshape(-1, latents.shape[1]), codebook)

    counts.add(tokens(x1), tokens(x2), tokens((x1 + x2) / 2))
    return counts


@dataclass
class ModelParts:
    """The loaded pieces of a model, each on the CPU in float32, and where its files came from."""

    vqvae: VQVAE
    priors: tuple[Prior, Prior]
    counts: Counts | None  # None for the latent likelihood, which needs no file
    files: dict[str, dict[str, Any]]


def load_vqvae(spec: ModelSpec) -> VQVAE:
    """The model's VQ-VAE alone (counting needs no priors and no likelihood)."""
    v = spec.vqvae
    if v.format == "random":
        return _random_vqvae(v)
    return VQVAE.from_checkpoint(require(spec, v), VQVAEConfig(**v.config) if v.config else None)


def load_parts(spec: ModelSpec) -> ModelParts:
    """Load every file of ``spec`` (raises MissingFileError with the fix when one is absent)."""
    paths = {f.role: require(spec, f) for f in spec.files}
    files = {
        role: {"path": str(p), "sha256": sha256_of(p), "bytes": p.stat().st_size} if p else {"generated": True}
        for role, p in paths.items()
    }
    # The digests are taken for the report anyway: check local files named with a checksum (the
    # embedded model). Hub downloads were checked by `lass fetch`; an archive's members differ from
    # the Hub's files, so the registry's checksum does not apply to them.
    for f in spec.files:
        if f.sha256 and f.path is not None and paths[f.role] and files[f.role]["sha256"] != f.sha256:
            raise ValueError(
                f"model {spec.name}: {f.role} file {paths[f.role]} is damaged or replaced (sha256 "
                f"{files[f.role]['sha256'][:12]}..., expected {f.sha256[:12]}...); reinstall or fetch it again"
            )
    vqvae = load_vqvae(spec)
    priors = []
    for stem in spec.stems:
        p = spec.priors[stem]
        if p.format == "random":
            priors.append(_random_prior(p))
        else:
            priors.append(Prior.from_checkpoint(paths[p.role], PriorConfig(**p.config) if p.config else None))
    counts = None
    if spec.likelihood.format == "random":
        counts = _random_counts(spec.likelihood, vqvae, spec.level)
    elif spec.likelihood.format != "latent":
        counts = Counts.load(paths["likelihood"])
    bins = vqvae.config.l_bins
    if (counts is not None and counts.bins != bins) or any(p.config.bins != bins for p in priors):
        raise ValueError(f"model {spec.name}: VQ-VAE, priors and likelihood disagree on the number of tokens")
    return ModelParts(vqvae, (priors[0], priors[1]), counts, files)


@dataclass
class _Job:
    """One input on its way through :class:`Separator`: ``y`` at the model's rate, how it is cut,
    where its stems go (``sink``, else collected), and what the searches of its windows reported."""

    y: np.ndarray
    duration: float  # seconds of input
    level: float
    gain: float
    step: int
    count: int
    tail: int  # samples of y in the last window
    order: tuple[int, int]
    priors: tuple[Prior, Prior]
    output: dict[str, audio.Restorer]
    sink: Callable[[dict[str, np.ndarray]], None] | None
    wiener: bool
    keep_tokens: bool
    collected: dict[str, list[np.ndarray]] = field(default_factory=dict)
    tokens: list[dict[str, np.ndarray]] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    free_steps: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"encode_s": 0.0, "search_s": 0.0, "decode_s": 0.0})

    def __post_init__(self) -> None:
        if self.sink is None:  # no sink: the pieces are kept and joined at the end
            self.collected = {stem: [] for stem in self.output}
            self.sink = self._collect

    def _collect(self, blocks: dict[str, np.ndarray]) -> None:
        for stem, samples in blocks.items():
            self.collected[stem].append(samples)

    def silent(self, windows: int, size: int) -> None:
        """Windows too short to hold a token: nothing is searched, their stems stay silent."""
        self.scores += [None] * windows
        self.free_steps += [0] * windows
        self.sink({stem: o.push(np.zeros((windows, size), np.float32)) for stem, o in self.output.items()})


@dataclass
class Separator:
    """A model loaded and ready on its device: VQ-VAE, one prior per stem, the likelihood view."""

    spec: ModelSpec
    vqvae: VQVAE
    priors: tuple[Prior, Prior]
    likelihood: Likelihood | LatentLikelihood
    device: torch.device
    dtype: torch.dtype
    files: dict[str, dict[str, Any]]
    compiled: bool = False

    @classmethod
    def load(
        cls, spec: ModelSpec, device: torch.device, dtype: torch.dtype | None = None, weight: float | None = None,
        compile_step: bool = False,
    ) -> Separator:  # fmt: skip
        """Load ``spec`` onto ``device``; priors in ``dtype`` (default: :func:`pick_dtype`), their
        step compiled with ``compile_step`` (:meth:`Prior.compile_step`)."""
        dtype = dtype or pick_dtype(device)
        parts = load_parts(spec)
        priors = tuple(p.to(device).set_compute_dtype(dtype) for p in parts.priors)
        if compile_step:
            priors = tuple(p.compile_step() for p in priors)
        weight = spec.likelihood_weight if weight is None else weight
        vqvae = parts.vqvae.to(device)
        if parts.counts is None:
            settings = {**spec.likelihood.config, "weight": weight}
            likelihood = LatentLikelihood.from_codebook(vqvae.codebook(spec.level), **settings, device=device)
        else:
            likelihood = parts.counts.likelihood(weight, device)
        return cls(spec, vqvae, priors, likelihood, device, dtype, parts.files, compile_step)

    @property
    def window_samples(self) -> int:
        return self.spec.window_tokens * self.vqvae.hop_length(self.spec.level)

    def default_batch_windows(self, options: SearchOptions, windows: int | None = None) -> int:
        """How many windows to search at once: the priors' caches for all their rows (windows x
        beams, or x samples, one for greedy) may take half of the memory available now, and a prior
        call holds about ``_MAX_ROWS`` rows at most (past that a step gains little throughput, and a
        long file would only hold more memory), one window whatever its rows. Given the input's
        ``windows``, its batches are made even, about as many as at that size (up to half a batch
        larger), so that no small last batch pays the 1024 steps' per-call cost for a few windows
        (a 30 s input: one batch of 14 windows, not 12 and 2)."""
        if self.device.type == "cuda":
            available = torch.cuda.mem_get_info(self.device)[0]
        else:
            available = _available_memory()
        rows = options.rows_per_window
        per_row = sum(PriorCache.bytes_per_row(p.config, self.spec.window_tokens, self.dtype) for p in self.priors)
        by_memory = max(1, int(available * 0.5) // (rows * per_row))
        size = max(1, min(by_memory, _MAX_ROWS[_device_kind(self.device)] // rows))
        if windows is None or windows <= size:
            return size
        batches = max(1, round(windows / size))
        return min(by_memory, -(-windows // batches))

    def encode_windows(self, windows: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vqvae.encode(chunk, self.spec.level) for chunk in windows.split(self._coder_batch)])

    def observe(self, windows: torch.Tensor) -> torch.Tensor:
        """What the likelihood reads of the mixture windows: tokens (W, S), or latents (W, S, D)."""
        if self.likelihood.observes == "tokens":
            return self.encode_windows(windows)
        latents = [self.vqvae.encoder_output(chunk, self.spec.level) for chunk in windows.split(self._coder_batch)]
        return torch.cat(latents).transpose(1, 2).float()

    def tokens_of(self, latents: torch.Tensor) -> torch.Tensor:
        """The codes of (W, S, D) encoder outputs: what :meth:`encode_windows` gives, without a second
        encoder pass."""
        codebook = self.vqvae.codebook(self.spec.level)
        return nearest_codes(latents.reshape(-1, latents.shape[-1]), codebook).view(latents.shape[:2])

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device)
        return torch.cat([self.vqvae.decode(chunk, self.spec.level) for chunk in tokens.split(self._coder_batch)])

    def _masked(self, mixture: torch.Tensor, candidates: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each stem as a mask on the (W, T) ``mixture`` windows (:mod:`lass_cli.masks`) from its
        (W, N, S) candidate tokens, a decoder batch of windows at a time (each window's mask is its
        own), so that spectrograms are held for a few windows, not for the whole batch."""
        reach = self.vqvae.decoder_reach(self.spec.level)
        pieces = []
        for start in range(0, len(mixture), self._coder_batch):
            part = slice(start, start + self._coder_batch)
            powers = [masks.mean_power(self.decode_tokens, c[part], mixture.shape[1], reach) for c in candidates]
            pieces.append(masks.wiener(2 * mixture[part], powers))
        return [torch.cat(stem) for stem in zip(*pieces)]

    @property
    def _coder_batch(self) -> int:
        return _CODER_BATCH[_device_kind(self.device)]

    def separate(
        self,
        mix: np.ndarray,
        rate: int,
        options: SearchOptions,
        on_step: Callable[[int, int], None] | None = None,
        batch_windows: int | None = None,
        normalize: bool = True,
        wiener: bool | None = None,
        keep_tokens: bool = False,
        overlap: float = 0.0,
        sink: Callable[[dict[str, np.ndarray]], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Separate one mixture, (channels, samples) at ``rate``, into mono stems at ``rate`` of the
        input's length. Windows are searched ``batch_windows`` at a time (default: as many as fit
        in memory), and with a ``sink`` each batch's stems go to it as soon as they are stitched
        (consecutive pieces, the same samples as the whole), so memory depends on that batch, not
        on the file's length; without one the pieces are joined and returned. Returns the stems
        (empty with a sink) and the report's ``windows``, ``level`` and ``timings`` parts.

        When the model names the level it was trained at (``input_rms``, the RMS of ``y``) and
        ``normalize`` is on, ``y`` is scaled to it before encoding and the stems scaled back after
        decoding; a silent input is left as it is. With ``wiener`` (default: the model's setting)
        the decoded stems become soft masks on each window of the mixture (:mod:`lass_cli.masks`).
        With ``overlap`` (a fraction of the window, below 1) windows start every
        ``window x (1 - overlap)`` samples (a whole number of VQ-VAE hops) and are cross-faded
        (:class:`audio.CrossFader`), so stems do not jump where two windows meet.
        With ``keep_tokens`` the details carry ``tokens``: per window the mixture's tokens and each
        stem's chosen tokens (for ``--save-tokens``)."""
        job = self._begin(mix, rate, options, normalize, overlap, sink, wiener, keep_tokens)
        size, count, tail = self.window_samples, job.count, job.tail
        group = batch_windows or self.default_batch_windows(options, count)
        batches = [(start, min(start + group, count)) for start in range(0, count, group)]
        upstream_tail = options.compat == "upstream" and tail < size
        if upstream_tail:  # the original encodes a short last window as it is: floor(samples / hop) tokens
            first, _ = batches.pop()
            batches += [(first, count - 1)] * (first < count - 1) + [(count - 1, count)]
        # Progress counts steps: the windows of a batch advance together.
        steps = sum(self._tokens_in(tail if upstream_tail and b == count else size) for _, b in batches)
        offset = 0
        for a, b in batches:
            clock = time.perf_counter()
            short = upstream_tail and b == count
            windows = job.y[len(job.y) - tail :][None] if short else audio.cut_windows(job.y, size, job.step, a, b)
            batch = torch.from_numpy(windows).to(self.device)
            width = self._tokens_in(batch.shape[1])
            if width == 0:  # shorter than one token: nothing to search, the stems stay silent
                job.silent(len(batch), size)
                continue
            observed = self.observe(batch)
            job.seconds["encode_s"] += time.perf_counter() - clock

            def progress(done: int, total: int, offset: int = offset) -> None:
                if on_step is not None:
                    on_step(offset + done, steps)

            clock = time.perf_counter()
            result = search(job.priors, self.likelihood, observed, options, self.decode_tokens, batch, progress)
            job.seconds["search_s"] += time.perf_counter() - clock
            offset += width
            self._deliver(job, batch, observed, result)
            del batch, observed, result  # not held through the next search
        return self._end(job, group)

    def separate_together(
        self,
        mixes: list[tuple[np.ndarray, int]],
        options: SearchOptions,
        on_step: Callable[[int, int], None] | None = None,
        normalize: bool = True,
        wiener: bool | None = None,
        keep_tokens: bool = False,
        overlap: float = 0.0,
        sinks: list[Callable[[dict[str, np.ndarray]], None] | None] | None = None,
    ) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        """:meth:`separate` of several short mixtures, (channels, samples) at their rate each, whose
        windows are searched as one batch: a search step costs far less than its rows' share of a
        hundred rows' step (six inputs of 2.5 s went 1.74x faster together than one after another
        on 2 CPU cores), and each window's tokens are what it gets alone (windows are
        independent). The encoding and search times are shared out among the inputs by their
        windows. Not with ``--compat upstream``, which searches a short last window unpadded, on
        its own."""
        if options.compat == "upstream":
            raise ValueError("inputs are searched together only without --compat upstream")
        sinks = sinks or [None] * len(mixes)
        jobs = [self._begin(mix, rate, options, normalize, overlap, sink, wiener, keep_tokens)
                for (mix, rate), sink in zip(mixes, sinks)]  # fmt: skip
        size = self.window_samples
        clock = time.perf_counter()
        windows = np.concatenate([audio.cut_windows(job.y, size, job.step) for job in jobs])
        batch = torch.from_numpy(windows).to(self.device)
        observed = self.observe(batch)
        encode_s = time.perf_counter() - clock
        clock = time.perf_counter()
        steps = self._tokens_in(size)
        progress = None if on_step is None else (lambda done, total: on_step(done, steps))
        result = search(jobs[0].priors, self.likelihood, observed, options, self.decode_tokens, batch, progress)
        search_s = time.perf_counter() - clock
        outcomes, start = [], 0
        for job in jobs:
            part = slice(start, start + job.count)
            start += job.count
            share = job.count / len(batch)
            job.seconds["encode_s"] += encode_s * share
            job.seconds["search_s"] += search_s * share
            self._deliver(job, batch[part], observed[part], result.windows(part))
            outcomes.append(self._end(job, len(batch)))
        return outcomes

    def windows_of(self, samples: int, rate: int, overlap: float) -> int:
        """How many windows :meth:`separate` cuts from ``samples`` at ``rate`` (to pack inputs)."""
        length = -(-samples * self.spec.sample_rate // rate)  # audio.resample's length
        return audio.window_count(length, self.window_samples, self.window_step(overlap))

    def _begin(
        self, mix: np.ndarray, rate: int, options: SearchOptions, normalize: bool, overlap: float,
        sink: Callable[[dict[str, np.ndarray]], None] | None, wiener: bool | None, keep_tokens: bool,
    ) -> _Job:  # fmt: skip
        """An input brought to the model: mono, the model's rate, ``y = mix / 2`` at the training
        level, and how its windows are cut and its stems restored."""
        mono = audio.to_mono(mix)
        y = audio.resample(mono, rate, self.spec.sample_rate) / np.float32(2)
        level = audio.rms(y)
        gain = audio.gain_to(y, self.spec.input_rms) if normalize else 1.0
        y *= np.float32(gain)  # in place: a long file's signals are copied as little as possible
        step = self.window_step(overlap)
        if step < self.window_samples and options.compat == "upstream":
            raise ValueError("--compat upstream cuts windows without overlap: use --overlap 0")
        size = self.window_samples
        count = audio.window_count(len(y), size, step)
        order = self.search_order(options)
        output = {stem: audio.Restorer(size, step, count, len(y), self.spec.sample_rate, rate, gain, len(mono))
                  for stem in self.spec.stems}  # fmt: skip
        return _Job(
            y, len(mono) / rate, level, gain, step, count, len(y) - (count - 1) * size, order,
            (self.priors[order[0]], self.priors[order[1]]), output, sink,
            self.spec.wiener if wiener is None else wiener, keep_tokens,
        )  # fmt: skip

    def _deliver(self, job: _Job, batch: torch.Tensor, observed: torch.Tensor, result: SearchResult) -> None:
        """A searched batch of an input's windows: decoded (or masks of the mixture), stitched and
        given to its sink; its scores and, if asked, its tokens recorded."""
        clock = time.perf_counter()
        order, size = job.order, self.window_samples
        chosen = [result.tokens[order.index(i)] for i in range(2)]
        if job.wiener:
            candidates = result.candidates if result.candidates is not None else torch.stack(result.tokens)[:, :, None]
            parts = self._masked(batch, [candidates[order.index(i)] for i in range(2)])
        else:
            parts = [self.decode_tokens(t) for t in chosen]
        decoded = [audio.fit_length(part.float().cpu().numpy(), size) for part in parts]
        job.sink({stem: job.output[stem].push(d) for stem, d in zip(self.spec.stems, decoded)})
        job.seconds["decode_s"] += time.perf_counter() - clock
        mixture_tokens = observed if observed.dim() == 2 or not job.keep_tokens else self.tokens_of(observed)
        for w in range(len(batch) if job.keep_tokens else 0):
            job.tokens.append({"mixture": mixture_tokens[w].cpu().numpy(),
                               **{stem: t[w].cpu().numpy() for stem, t in zip(self.spec.stems, chosen)}})  # fmt: skip
        job.scores += [round(float(s), 4) for s in result.scores.cpu()]
        job.free_steps += [int(n) for n in result.fallback_steps.cpu()]

    def _end(self, job: _Job, group: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The last stitched samples to the sink; the stems (when there was no sink) and the details."""
        job.sink({stem: o.finish() for stem, o in job.output.items()})
        stems = {stem: np.concatenate(pieces) for stem, pieces in job.collected.items() if pieces}
        total, gain = sum(job.seconds.values()), job.gain
        details = {
            "level": {"input_rms": round(job.level, 6), "gain_in": round(gain, 6), "gain_out": round(1 / gain, 6)},
            "wiener": job.wiener,
            "windows": {
                "count": job.count,
                "tokens_per_window": self.spec.window_tokens,
                "samples_per_window": self.window_samples,
                "step_samples": job.step,
                "overlap": round(1 - job.step / self.window_samples, 6),
                "batch_windows": group,
                "scores": job.scores,
                "likelihood_free_steps": job.free_steps,
            },
            **({"tokens": job.tokens} if job.keep_tokens else {}),
            "timings": {
                **{k: round(v, 4) for k, v in job.seconds.items()},
                "total_s": round(total, 4),
                "real_time_factor": round(total / job.duration, 4) if job.duration else None,
            },
        }
        return stems, details

    def window_step(self, overlap: float) -> int:
        """Samples between window starts for an ``overlap`` fraction, a multiple of the hop."""
        if not 0 <= overlap < 1:
            raise ValueError(f"--overlap must be at least 0 and below 1, got {overlap}")
        hop = self.vqvae.hop_length(self.spec.level)
        return max(hop, round(self.window_samples * (1 - overlap) / hop) * hop)

    def _tokens_in(self, samples: int) -> int:
        return samples // self.vqvae.hop_length(self.spec.level)

    def search_order(self, options: SearchOptions) -> tuple[int, int]:
        """Which stem's prior is source 0 of the search: the model's first stem, or with
        ``--compat upstream`` bass (the original code's order, bass first)."""
        if options.compat == "upstream" and self.spec.stems[1] == UPSTREAM_FIRST:
            return (1, 0)
        return (0, 1)

    def describe_likelihood(self) -> dict[str, Any]:
        if isinstance(self.likelihood, LatentLikelihood):
            return {"kind": "latent", "sigma": self.likelihood.sigma, "top_k": self.likelihood.top_k}
        return {"kind": "counted"}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "sample_rate": self.spec.sample_rate,
            "window_tokens": self.spec.window_tokens,
            "stems": list(self.spec.stems),
            "likelihood_weight": self.likelihood.weight,
            "likelihood": self.describe_likelihood(),
            "files": self.files,
        }


__all__ = ["DTYPES", "ModelParts", "Separator", "load_parts", "load_vqvae", "pick_device", "pick_dtype", "sha256_of"]
