"""LASS samplers: pick both sources' tokens given two priors, a likelihood and the mixture.

At step s every row has log p1(. | z1<s) and log p2(. | z2<s) from its priors; the posterior of a
pair is ``log p1(z1) + log p2(z2) + log p(m_s | z1, z2)``. The likelihood names the candidate pairs
of each step, never the K x K grid: the counted one (:mod:`lass_cli.likelihood`) the pairs with
``P > 0`` for the mixture token (the priors alone where it was never counted), the latent one
(:mod:`lass_cli.latent`) each row's top-k x top-k tokens under the priors and the pairs the
likelihood alone ranks best. Beam search keeps every final beam and sampling every sample as
candidates, for masks averaged over them (:mod:`lass_cli.masks`).

All W windows advance together: each prior sees W x B rows per step. The priors are used through
a small interface (``new_cache(rows, max_len, capacity)``, ``step(cache, previous)``,
``cache.reorder(index)``), which :class:`lass_cli.prior.Prior` provides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .twins import TwinPriors, can_step_as_twins

METHODS = ("beam", "greedy", "sample")
SELECTIONS = ("mixture", "priors", "posterior")
COMPATS = ("none", "upstream")  # upstream: the original LASS code's decisions (docs/upstream.md)
StepCallback = Callable[[int, int], None]  # (steps done, steps in all), for progress bars
_PRIOR_TOP = 64  # sampling without top_k: tokens per prior combined where the priors decide alone
# Priors of at least this many bytes of weights each step side by side on a CPU, smaller ones of
# one config as twins (_both_priors).
SIDE_BY_SIDE_FROM = 256 << 20


class Cache(Protocol):
    def reorder(self, index: torch.Tensor) -> None: ...


class PriorLike(Protocol):
    def new_cache(self, rows: int, max_len: int | None = None, capacity: int | None = None) -> Cache: ...

    def step(self, cache: Cache, previous: torch.Tensor | None) -> torch.Tensor: ...


class StepLikelihood(Protocol):
    """``plan`` reads the mixture once per search (its ``fallback`` is a (W, S) bool tensor);
    ``pairs`` gives step t's candidate pairs of every row with their log posterior, (W, R, N) each."""

    observes: str  # "tokens" or "latents"
    device: torch.device

    def plan(self, mixture: torch.Tensor) -> Any: ...

    def pairs(
        self, plan: Any, t: int, lp1: torch.Tensor, lp2: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class SearchOptions:
    """How to choose the tokens; one field per ``lass separate`` flag.

    Args:
        method: ``beam`` (keep the B best prefixes), ``greedy`` (beam of 1) or ``sample``
            (ancestral sampling of ``samples`` candidates per window, then the best one).
        beams: B for beam search (the paper's Table 5 uses 100).
        temperature: divides the priors' logits before their log-softmax.
        top_k: sampling only: draw among the k best pairs of each step (None: all).
        samples: sampling only: candidates per window.
        seed: sampling only: the random stream (results are reproducible on one device).
        select: sampling only: how one candidate is chosen (see :func:`sample_search`).
        compat: ``upstream`` reproduces the original LASS code's beam search, its bookkeeping
            included (:func:`upstream_beam_search`); beam and greedy only.
    """

    method: str = "beam"
    beams: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    samples: int = 16
    seed: int = 0
    select: str = "mixture"
    compat: str = "none"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.compat not in COMPATS:
            raise ValueError(f"compat must be one of {', '.join(COMPATS)}, got {self.compat!r}")
        if self.compat == "upstream" and self.method == "sample":
            raise ValueError("--compat upstream reproduces the original beam search: use --sampler beam or greedy")
        if self.beams < 1 or self.samples < 1 or (self.top_k is not None and self.top_k < 1):
            raise ValueError("beams, samples and top_k must be at least 1")
        if not self.temperature > 0:
            raise ValueError("temperature must be positive")

    @property
    def rows_per_window(self) -> int:
        """Sequences the priors carry per window: the samples, one for greedy, else the beams."""
        return {"sample": self.samples, "greedy": 1}.get(self.method, self.beams)


@dataclass
class SearchResult:
    """Chosen tokens of both sources (W, S) each, the log posterior of each window's choice (W,),
    and per window how many steps had no likelihood entries and used the priors alone (W,)."""

    tokens: tuple[torch.Tensor, torch.Tensor]
    scores: torch.Tensor
    fallback_steps: torch.Tensor
    candidates: torch.Tensor | None = None  # the final beams, best first, or every sample: (2, W, N, S)

    def windows(self, part: slice) -> SearchResult:
        """The result of the windows ``part`` alone (inputs searched together are split back)."""
        candidates = None if self.candidates is None else self.candidates[:, part]
        return SearchResult((self.tokens[0][part], self.tokens[1][part]), self.scores[part],
                            self.fallback_steps[part], candidates)  # fmt: skip


def _normalised(logits: torch.Tensor, temperature: float, upstream: bool = False) -> torch.Tensor:
    """Log-probabilities (rows, K) from a prior's logits."""
    logits = logits / temperature if temperature != 1.0 or upstream else logits
    if upstream:  # torch.distributions.Categorical's normalisation, as the original code calls it
        return logits - logits.logsumexp(dim=-1, keepdim=True)
    return torch.log_softmax(logits, dim=-1)


def _log_probs(
    prior: PriorLike, cache: Cache, previous: torch.Tensor | None, temperature: float, upstream: bool = False
) -> torch.Tensor:
    with torch.inference_mode():  # thread-local: a worker thread of _both_priors enters it itself
        return _normalised(prior.step(cache, previous), temperature, upstream)


@dataclass(frozen=True)
class _PriorSteps:
    """How a sampler steps both priors: ``new_caches(rows, max_len, capacity)`` gives the caches
    (one per prior, or one for twins) that every row reorder applies to, and ``step(caches,
    previous)`` both log-probabilities (rows, K), the previous tokens given per prior."""

    new_caches: Callable[..., list]
    step: Callable[[list, tuple], tuple[torch.Tensor, torch.Tensor]]


@contextmanager
def _both_priors(
    priors: tuple[PriorLike, PriorLike], device: torch.device, temperature: float, upstream: bool = False
) -> Iterator[_PriorSteps]:
    """How both priors step (:class:`_PriorSteps`); three ways, each for what it is fastest at.

    - Small priors of one config (:func:`lass_cli.twins.can_step_as_twins`: below
      :data:`SIDE_BY_SIDE_FROM` each, at most 768 wide) step as twins, one stacked computation and
      one cache for both: at the embedded model's size a step is mostly per-operation cost, which
      this halves (its beam search 20 % faster; widths 256-768 12-22 %).
    - Priors whose weights stream from memory (``weight_bytes`` at least :data:`SIDE_BY_SIDE_FROM`
      each) step side by side on a CPU with two or more threads, each in a thread of its own with
      half the threads: a step's products wait on memory and between them one core runs small
      operations while the other idles, so two priors fill each other's gaps (the full-size
      search's step 12-14 % faster on 2 cores). Small priors side by side were 4-30 % slower (their
      products are not waiting on memory, and the main thread's OpenMP workers still spin on the
      cores after its own operations; ``docs/benchmarks.md``). Logits side by side differ from one
      thread's within float rounding (MKL packs a weight for the thread count that packs it).
    - Otherwise (different configs, compiled priors, CUDA for large ones, one thread) one after
      the other."""
    threads = torch.get_num_threads()

    def one(prior: PriorLike, cache: Cache, previous: torch.Tensor | None) -> torch.Tensor:
        return _log_probs(prior, cache, previous, temperature, upstream)

    def separate_caches(rows: int, max_len: int | None = None, capacity: int | None = None) -> list:
        return [prior.new_cache(rows=rows, max_len=max_len, capacity=capacity) for prior in priors]

    if can_step_as_twins(priors, SIDE_BY_SIDE_FROM):
        twins = TwinPriors(priors)  # type: ignore[arg-type]

        def together(caches: list, previous: tuple) -> tuple[torch.Tensor, torch.Tensor]:
            both = _normalised(twins.step(caches[0], None if previous[0] is None else previous), temperature, upstream)
            return both[0], both[1]

        yield _PriorSteps(lambda *args: [twins.new_cache(*args)], together)
        return
    large = all(getattr(prior, "weight_bytes", 0) >= SIDE_BY_SIDE_FROM for prior in priors)
    if device.type != "cpu" or threads < 2 or not large:
        yield _PriorSteps(separate_caches, lambda caches, previous: tuple(map(one, priors, caches, previous)))
        return
    with ThreadPoolExecutor(2, "lass-prior", initializer=torch.set_num_threads, initargs=(threads // 2,)) as pool:

        def side_by_side(caches: list, previous: tuple) -> tuple[torch.Tensor, torch.Tensor]:
            first, second = (pool.submit(one, *args) for args in zip(priors, caches, previous))
            return first.result(), second.result()

        yield _PriorSteps(separate_caches, side_by_side)


def _pad_to(scores: torch.Tensor, size: int) -> torch.Tensor:
    """Pad the last dim with -inf so that top-``size`` exists (fewer candidates than beams)."""
    missing = size - scores.shape[-1]
    return F.pad(scores, (0, missing), value=float("-inf")) if missing > 0 else scores


def _select(cum: torch.Tensor, post: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``keep`` best ``cum[w, r] + post[w, r, j]`` per window: cum (W, R) float64, post (W, R, N).

    Prefix scores reach -10^4 over a window, where float32 steps are 10^-3, coarser than the gaps
    between candidates; so the ranking uses float32 offsets from each window's best prefix and the
    kept totals are accumulated in float64. Returns the new totals (W, keep) float64, the parent row
    and the candidate column (-inf totals where fewer than ``keep`` candidates exist).
    """
    windows, rows, n = post.shape
    base = (cum - cum.max(dim=1, keepdim=True).values).float()
    ranking = _pad_to((base[:, :, None] + post).view(windows, rows * n), keep)
    values, index = ranking.topk(keep, dim=1)
    index = index.clamp_(max=rows * n - 1)
    parent = index // n
    total = cum.gather(1, parent) + post.view(windows, -1).gather(1, index).double()
    return torch.where(torch.isfinite(values), total, float("-inf")), parent, index % n


@dataclass
class _BeamState:
    """What a beam search keeps across steps: both priors' caches, and per step each new beam's
    parent row and chosen tokens, (S, W, B) and (2, S, W, B), for the trace back."""

    caches: list
    parents: torch.Tensor
    chosen: torch.Tensor
    window_index: torch.Tensor  # (W, 1), made once per search

    @classmethod
    def start(cls, steps: _PriorSteps, windows: int, length: int, beams: int, device: torch.device) -> _BeamState:
        caches = steps.new_caches(windows, length, windows * beams)
        parents = torch.zeros(length, windows, beams, dtype=torch.long, device=device)
        chosen = torch.zeros(2, length, windows, beams, dtype=torch.long, device=device)
        return cls(caches, parents, chosen, torch.arange(windows, device=device)[:, None])


def _advance(
    t: int, state: _BeamState, candidates: tuple[torch.Tensor, torch.Tensor], parent: torch.Tensor,
    column: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Record step t's choice (parent row and candidate column of each new beam, (W, B)), make the
    caches follow the parents, and return the tokens the priors read next (W x B,) each."""
    rows = candidates[0].shape[1]
    parents, chosen, window_index = state.parents, state.chosen, state.window_index
    z1, z2 = (c[window_index, parent, column] for c in candidates)
    parents[t], chosen[0, t], chosen[1, t] = parent, z1, z2
    if t + 1 < parents.shape[0]:
        index = (window_index * rows + parent).reshape(-1)
        for cache in state.caches:
            cache.reorder(index)
    return z1.reshape(-1), z2.reshape(-1)


def _trace(state: _BeamState, order: torch.Tensor) -> torch.Tensor:
    """The token sequences (2, W, N, S) of the final beams ``order`` (W, N), followed back
    through the recorded parents."""
    chosen, parents = state.chosen, state.parents
    length = parents.shape[0]
    tokens = torch.zeros(2, *order.shape, length, dtype=torch.long, device=order.device)
    beam = order
    for t in reversed(range(length)):
        tokens[:, :, :, t] = chosen[:, t].gather(2, beam[None].expand(2, -1, -1))
        beam = parents[t].gather(1, beam)
    return tokens


def beam_search(
    priors: tuple[PriorLike, PriorLike],
    likelihood: StepLikelihood,
    mixture: torch.Tensor,
    beams: int,
    temperature: float = 1.0,
    on_step: StepCallback | None = None,
) -> SearchResult:
    """Beam search over all windows at once; ``mixture`` is what the likelihood observes.

    The first step starts from one row per window; each step keeps the B best cumulative log
    posteriors over all beams x all candidate pairs; both priors' caches follow the surviving beams.
    """
    device = likelihood.device
    plan = likelihood.plan(mixture)
    windows, length = plan.fallback.shape
    cum = torch.zeros(windows, 1, device=device, dtype=torch.float64)
    previous: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    with _both_priors(priors, device, temperature) as steps:
        state = _BeamState.start(steps, windows, length, beams, device)
        for t in range(length):
            rows = cum.shape[1]
            lp1, lp2 = (lp.view(windows, rows, -1) for lp in steps.step(state.caches, previous))
            c1, c2, post = likelihood.pairs(plan, t, lp1, lp2, beams)
            cum, parent, column = _select(cum, post, beams)
            previous = _advance(t, state, (c1, c2), parent, column)
            if on_step is not None:
                on_step(t + 1, length)
    # Trace every final beam back (the first is the best): the candidates for posterior-mean masks.
    order = cum.argsort(dim=1, descending=True)
    tokens = _trace(state, order)
    alive = torch.isfinite(cum.gather(1, order))  # fewer candidates than beams: -inf rows
    candidates = tokens[:, :, : max(1, int(alive.sum(1).min()))]
    scores = cum.gather(1, order[:, :1])[:, 0]
    return SearchResult((tokens[0, :, 0], tokens[1, :, 0]), scores, plan.fallback.sum(1), candidates)


def upstream_beam_search(
    priors: tuple[PriorLike, PriorLike],
    likelihood: StepLikelihood,
    mixture: torch.Tensor,
    beams: int,
    temperature: float = 1.0,
    on_step: StepCallback | None = None,
) -> SearchResult:
    """The beam search of the original LASS code (``diba._ancestral_sample``), decision for decision.

    Per window and step, as there: the candidates ``cum[r] + post[r, j]`` (float32, rows in beam
    order, pairs in the likelihood's order) are sorted ascending with ``torch.sort`` and the last B
    kept, in that order; then the kept totals are indexed again by the parent rows, so new beam i
    carries the total of kept candidate number ``parent[i]`` (the original's
    ``log_post_sum = log_post_sum[beams]``). The result is the last kept beam. Each window's sort runs
    on its own candidates, laid out as the original lays them out, so ties fall the same way
    whatever the batch. Where the original fails (fewer than B candidates at a step) that step keeps
    the totals as they are and -inf fills the missing beams.
    """
    device = likelihood.device
    plan = likelihood.plan(mixture)
    windows, length = plan.fallback.shape
    cum = torch.zeros(windows, 1, device=device)
    previous: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    with _both_priors(priors, device, temperature, upstream=True) as steps:
        state = _BeamState.start(steps, windows, length, beams, device)
        for t in range(length):
            rows = cum.shape[1]
            lp1, lp2 = (lp.view(windows, rows, -1) for lp in steps.step(state.caches, previous))
            c1, c2, post = likelihood.pairs(plan, t, lp1, lp2, beams)
            totals = cum[:, :, None] + post
            kept = torch.full((windows, beams), float("-inf"), device=device)
            flat = torch.zeros(windows, beams, dtype=torch.long, device=device)
            # Each window's own candidates: the padding of a batch is cut off (its last finite column).
            finite = torch.isfinite(post).any(1)
            widths = torch.where(finite, torch.arange(1, post.shape[2] + 1, device=device), 0).amax(1).tolist()
            for w, width in enumerate(widths):
                values, order = torch.sort(totals[w, :, :width].reshape(-1))
                count = min(beams, len(values))
                kept[w, beams - count :] = values[len(values) - count :]
                index = order[len(order) - count :]  # the original's flat index, row * width + pair
                flat[w, beams - count :] = (index // width) * post.shape[2] + index % width
            parent, column = flat // post.shape[2], flat % post.shape[2]
            ranked = kept
            full = torch.isfinite(kept).all(1, keepdim=True)
            cum = torch.where(full, kept.gather(1, parent), kept)  # the original's log_post_sum[beams]
            previous = _advance(t, state, (c1, c2), parent, column)
            if on_step is not None:
                on_step(t + 1, length)
    # The last beam is the answer; the others follow, last kept first (candidates for masks).
    tokens = _trace(state, torch.arange(beams - 1, -1, -1, device=device).expand(windows, beams))
    alive = torch.isfinite(ranked)
    candidates = tokens[:, :, : max(1, int(alive.sum(1).min()))]
    scores = ranked[:, -1].double()  # the total the original ranks its answer by
    return SearchResult((tokens[0, :, 0], tokens[1, :, 0]), scores, plan.fallback.sum(1), candidates)


def _top_k_mask(scores: torch.Tensor, k: int | None) -> torch.Tensor:
    if k is None or k >= scores.shape[-1]:
        return scores
    threshold = scores.topk(k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < threshold, float("-inf"))


def _gumbel_argmax(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A draw from softmax(scores) along the last dim (Gumbel-max, reproducible per generator)."""
    uniform = torch.rand(scores.shape, generator=generator, device=scores.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (scores + gumbel).argmax(dim=-1)


def sample_search(
    priors: tuple[PriorLike, PriorLike],
    likelihood: StepLikelihood,
    mixture: torch.Tensor,
    options: SearchOptions,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mixture_audio: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
) -> SearchResult:
    """Ancestral sampling of ``options.samples`` candidates per window from the posterior, then one
    candidate per window as ``options.select`` says: ``priors``, the highest log p1(z1) + log p2(z2)
    (the LQ-VAE paper's prior-based rejection, alpha 0); ``mixture``, the candidate whose decoded
    sources average closest (L2) to ``mixture_audio`` (the signal that was encoded, (W, T); needs
    ``decode``, else ``posterior``); ``posterior``, the highest log posterior."""
    device = likelihood.device
    plan = likelihood.plan(mixture)
    windows, length = plan.fallback.shape
    n = options.samples
    generator = torch.Generator(device=device).manual_seed(options.seed)
    tokens = torch.zeros(2, windows, n, length, dtype=torch.long, device=device)
    cum = torch.zeros(windows, n, device=device, dtype=torch.float64)
    prior_cum = torch.zeros_like(cum)
    previous: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    with _both_priors(priors, device, options.temperature) as steps:
        caches = steps.new_caches(windows * n, length)
        for t in range(length):
            lp1, lp2 = (lp.view(windows, n, -1) for lp in steps.step(caches, previous))
            c1, c2, post = likelihood.pairs(plan, t, lp1, lp2, options.top_k or _PRIOR_TOP)
            pick = _gumbel_argmax(_top_k_mask(post, options.top_k), generator)[..., None]
            z1, z2 = c1.gather(2, pick), c2.gather(2, pick)
            cum += post.gather(2, pick)[..., 0].double()
            prior_cum += (lp1.gather(2, z1) + lp2.gather(2, z2))[..., 0].double()
            tokens[0, :, :, t], tokens[1, :, :, t] = z1[..., 0], z2[..., 0]
            previous = (z1.reshape(-1), z2.reshape(-1))
            if on_step is not None:
                on_step(t + 1, length)
    if options.select == "mixture" and decode is not None and mixture_audio is not None:
        error = torch.stack([_mixture_error(decode, tokens[:, w], mixture_audio[w]) for w in range(windows)])
        best = error.to(device).argmin(dim=1)
    else:
        best = (prior_cum if options.select == "priors" else cum).argmax(dim=1)
    pick = best[None, :, None, None].expand(2, windows, 1, length)
    chosen = tokens.gather(2, pick)[:, :, 0]
    scores = cum.gather(1, best[:, None])[:, 0]
    return SearchResult((chosen[0], chosen[1]), scores, plan.fallback.sum(1), candidates=tokens)


def _mixture_error(
    decode: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Squared L2 between ``(x1 + x2) / 2`` of each candidate's decoded sources and the target."""
    x1, x2 = decode(tokens[0]), decode(tokens[1])
    estimate = 0.5 * (x1 + x2)
    target = target.to(estimate.device)
    size = min(estimate.shape[-1], target.shape[-1])
    return (estimate[:, :size] - target[None, :size]).pow(2).sum(-1)


def search(
    priors: tuple[PriorLike, PriorLike],
    likelihood: StepLikelihood,
    mixture: torch.Tensor,
    options: SearchOptions = SearchOptions(),
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mixture_audio: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
) -> SearchResult:
    """Run the sampler ``options.method`` on W mixture windows at once: (W, S) tokens for the
    counted likelihood, (W, S, D) latents for the latent one (``likelihood.observes``)."""
    with torch.inference_mode():
        if options.method == "sample":
            return sample_search(priors, likelihood, mixture, options, decode, mixture_audio, on_step)
        run = upstream_beam_search if options.compat == "upstream" else beam_search
        return run(priors, likelihood, mixture, options.rows_per_window, options.temperature, on_step)


__all__ = ["COMPATS", "SearchOptions", "SearchResult", "beam_search", "sample_search", "search", "upstream_beam_search"]
