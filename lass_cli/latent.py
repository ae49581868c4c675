"""The LQ-VAE latent likelihood (lqvae-paper.txt, Sec. 4.2): a Gaussian in the latent domain.

``log p(m | z1, z2) = -||m_s - B_Q(e_z1 / 2 + e_z2 / 2)||^2 / (2 sigma^2)``, with ``m_s`` the
encoder's output for the mixture at step s (before quantisation: it keeps more of the mixture than
its nearest code) and ``B_Q`` the nearest codebook row (``average = "quantized"``, the paper's).
``average = "continuous"`` drops that ``B_Q``: half the pairs of a codebook share a quantised
average with hundreds of others, so the quantised form ties where the continuous one still ranks
(on our own VQ-VAE the true pair's median rank among all K^2 falls from about 500-1100 to 390). It
works best with a VQ-VAE trained with the linearisation loss (``lass train vqvae --linearize``) and
needs no counted data.

What does not depend on the mixture is tabulated once per codebook: ``B_Q(e_i / 2 + e_j / 2)``
(K x K code indices) or ``||e_i / 2 + e_j / 2||^2``. Each step scores, for every row, the pairs of
its top-k tokens under both priors (the paper's pruning, O(rows x k^2)) and, with ``top_pairs``,
also the window's best pairs under the likelihood alone (O(windows x K^2) to rank them): weak
priors often leave the true token outside their top-k, the likelihood then still proposes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .vqvae import nearest_codes

# Average vectors quantised per chunk while tabulating B_Q (bounds the K x chunk distance matrix).
_TABLE_CHUNK = 1 << 16


def sum_table(codebook: torch.Tensor) -> torch.Tensor:
    """(K, K) long: the code nearest to ``(e_i + e_j) / 2`` for every pair (symmetric)."""
    bins = codebook.shape[0]
    pairs = torch.triu_indices(bins, bins, device=codebook.device)
    nearest = torch.cat([
        nearest_codes((codebook[i] + codebook[j]) / 2, codebook)
        for i, j in zip(pairs[0].split(_TABLE_CHUNK), pairs[1].split(_TABLE_CHUNK))
    ])  # fmt: skip
    table = torch.empty(bins, bins, dtype=torch.long, device=codebook.device)
    table[pairs[0], pairs[1]] = nearest
    table[pairs[1], pairs[0]] = nearest
    return table


def top_indices(values: torch.Tensor, k: int, block: int = 32) -> torch.Tensor:
    """``values.topk(k, dim=1).indices`` of (W, N) values, in no particular order, in smaller passes
    (at K^2 = 262,144 and k = 1,024, 1.2x faster than two passes, 1.5x two passes faster than one:
    this is a sixth of a search step): every one of the k largest lies in one of the k blocks of
    ``block`` values with the largest maxima, so the top k of those blocks' values is the top k of
    all, and those k x block candidates are ranked the same way again in blocks of 8 while they
    are many. Equal values may come in another order. Unsorted, a top 1,024 of 2,048 costs a
    third of a sorted one."""
    windows, n = values.shape
    if n % block or n < 2 * block * k:  # too few values for another pass to pay
        return values.topk(k, dim=1, sorted=False).indices
    count = n // block
    best = values.view(windows, count, block).amax(2).topk(k, dim=1, sorted=False).indices
    # The chosen blocks as whole rows of one flat table: a row copy, 5x a gather by element.
    rows = (best + torch.arange(windows, device=best.device)[:, None] * count).view(-1)
    candidates = values.view(windows * count, block).index_select(0, rows).view(windows, k * block)
    pick = top_indices(candidates, k, 8)
    return best.gather(1, pick // block) * block + pick % block


@dataclass(frozen=True)
class _HalfGrid:
    """The pairs ``i <= j`` of a K x K grid as ``blocks`` (P, b, b) of the upper triangle: block
    pair p holds rows ``first[p]`` and columns ``second[p]`` (block numbers), and ``i``, ``j`` (P b^2,)
    name each entry's pair. ``table`` is the likelihood's table there, with ``excluded`` (the
    diagonal blocks' ``i > j``) where a pair is named twice."""

    first: torch.Tensor
    second: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    table: torch.Tensor
    block: int

    @classmethod
    def of(cls, table: torch.Tensor, excluded: float | int, block: int) -> _HalfGrid:
        bins, device = table.shape[0], table.device
        first, second = torch.triu_indices(bins // block, bins // block, device=device)
        inside = torch.arange(block, device=device)
        i = (first[:, None, None] * block + inside[None, :, None]).expand(-1, block, block)
        j = (second[:, None, None] * block + inside[None, None, :]).expand(-1, block, block)
        half = table[i, j].masked_fill(i > j, excluded)
        return cls(first, second, i.reshape(-1), j.reshape(-1), half, block)


@dataclass
class LatentPlan:
    """The mixture's latents (W, S, D) and, per (window, step), whether the priors alone decided
    (never, for this likelihood: kept so that both likelihoods report alike). ``grid`` is the
    scratch of the likelihood-best pairs (W, K^2, or the half grid), made once per search: a fresh one every step
    is several MB that the allocator hands back to the system and faults in again."""

    latents: torch.Tensor
    fallback: torch.Tensor
    grid: torch.Tensor | None = None


AVERAGES = ("quantized", "continuous")


@dataclass
class LatentLikelihood:
    """Scores candidate pairs by the Gaussian latent likelihood; see the module docstring.

    ``sigma`` balances the likelihood against the priors (0.1 in the paper, for its latent scale);
    ``weight`` (``--lambda``) multiplies the log-likelihood as it does the counted one's, the same as
    dividing sigma by its square root; ``top_k`` is how many tokens of each prior a row combines,
    ``top_pairs`` how many pairs the likelihood alone proposes per window and step (0: none)."""

    codebook: torch.Tensor  # (K, D) float32
    table: torch.Tensor  # (K, K): B_Q of each average (long), or the average's squared norm (float)
    sigma: float
    top_k: int
    weight: float = 1.0
    average: str = "quantized"
    top_pairs: int = 0
    _half: _HalfGrid | None = field(default=None, init=False, repr=False, compare=False)
    observes = "latents"

    @classmethod
    def from_codebook(
        cls, codebook: torch.Tensor, sigma: float = 0.1, top_k: int = 32, weight: float = 1.0,
        average: str = "quantized", top_pairs: int = 0, device: str | torch.device = "cpu",
    ) -> LatentLikelihood:  # fmt: skip
        if not sigma > 0 or top_k < 1 or not weight >= 0 or top_pairs < 0:
            raise ValueError("sigma must be positive, top_k at least 1, the weight and top_pairs not negative")
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
        e = codebook.detach().float().to(device)
        table = sum_table(e) if average == "quantized" else ((e[:, None] + e[None]) / 2).pow(2).sum(-1)
        return cls(e, table, float(sigma), int(top_k), float(weight), average, int(top_pairs))

    @property
    def bins(self) -> int:
        return self.codebook.shape[0]

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    @property
    def scale(self) -> float:
        return -self.weight / (2 * self.sigma**2)

    def plan(self, latents: torch.Tensor) -> LatentPlan:
        """``latents``: (W, S, D) encoder outputs of the mixture windows."""
        if latents.dim() != 3 or latents.shape[-1] != self.codebook.shape[1]:
            width = self.codebook.shape[1]
            raise ValueError(f"mixture latents must be (windows, S, {width}), got shape {tuple(latents.shape)}")
        latents = latents.to(self.device, torch.float32)
        return LatentPlan(latents, torch.zeros(latents.shape[:2], dtype=torch.bool))

    def _step_terms(self, plan: LatentPlan, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, 1) ``||m_t||^2`` and (W, K) ``m_t . e_k``."""
        m = plan.latents[:, t]
        return m.pow(2).sum(1, keepdim=True), m @ self.codebook.T

    def _scores(self, terms, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of pairs (W, N) given the step's terms."""
        norm, dots = terms
        if self.average == "quantized":
            codes = self.table[z1, z2]
            distance = norm - 2 * dots.gather(1, codes) + self.codebook.pow(2).sum(1)[codes]
        else:
            distance = norm - dots.gather(1, z1) - dots.gather(1, z2) + self.table[z1, z2]
        return distance.clamp_(min=0) * self.scale

    def _half_grid(self, count: int) -> _HalfGrid | None:
        """The upper triangle's blocks (made once), where ranking half the grid finds ``count``
        pairs: K a multiple of 16 (blocks of K / 16) and ``count`` well within K (K - 1) / 2."""
        bins = self.bins
        if bins % 16 or 2 * count > bins * (bins - 1) // 2:
            return None
        if self._half is None:
            excluded = bins if self.average == "quantized" else float("inf")  # a code past the last
            self._half = _HalfGrid.of(self.table, excluded, bins // 16)
        return self._half

    def _best_pairs(self, plan: LatentPlan, terms) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's ``top_pairs`` best pairs under the likelihood alone: z1, z2 (W, P).

        The likelihood is symmetric, ``(i, j)`` scores exactly as ``(j, i)``, so only the pairs
        ``i <= j`` are ranked (53 % of the grid, in blocks) and the best ``top_pairs`` of them in
        both orders are ranked again: the same pairs as the whole grid's top (ties aside)."""
        norm, dots = terms
        windows, bins = dots.shape
        count = min(self.top_pairs, bins * bins)
        half = self._half_grid(count)
        size = bins * bins if half is None else half.i.numel()
        if plan.grid is None or plan.grid.shape[1] != size:
            plan.grid = dots.new_empty(windows, size)
        grid = plan.grid
        if self.average == "quantized":
            code_distance = norm - 2 * dots + self.codebook.pow(2).sum(1)[None]
            if half is not None:
                code_distance = F.pad(code_distance, (0, 1), value=float("inf"))
            table = self.table if half is None else half.table
            torch.index_select(code_distance, 1, table.view(-1), out=grid).neg_()
        elif half is None:
            torch.add(dots[:, :, None], dots[:, None, :], out=grid.view(windows, bins, bins)).sub_(self.table)
        else:
            blocks = dots.view(windows, -1, half.block)
            rows, columns = blocks[:, half.first, :, None], blocks[:, half.second, None, :]
            torch.add(rows, columns, out=grid.view(windows, -1, half.block, half.block)).sub_(half.table)
        index = top_indices(grid, count)
        if half is None:
            return index // bins, index % bins
        value, i, j = grid.gather(1, index), half.i[index], half.j[index]
        both = torch.cat((value, value.masked_fill(i == j, float("-inf"))), 1)  # (j, i): not twice
        pick = both.topk(count, dim=1, sorted=False).indices
        return torch.cat((i, j), 1).gather(1, pick), torch.cat((j, i), 1).gather(1, pick)

    def pairs(
        self, plan: LatentPlan, t: int, lp1: torch.Tensor, lp2: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's top-k x top-k pairs, then the window's likelihood-best pairs that are not among
        them: z1, z2 and their log posterior, (W, R, k^2 + top_pairs) each."""
        windows, rows, bins = lp1.shape
        k = min(self.top_k, bins)
        terms = self._step_terms(plan, t)
        v1, i1 = lp1.topk(k, dim=2)
        v2, i2 = lp2.topk(k, dim=2)
        z1 = i1[..., :, None].expand(windows, rows, k, k).reshape(windows, rows * k * k)
        z2 = i2[..., None, :].expand(windows, rows, k, k).reshape(windows, rows * k * k)
        ll = self._scores(terms, z1, z2).view(windows, rows, k, k)
        post = (v1[..., :, None] + v2[..., None, :] + ll).view(windows, rows, k * k)
        z1, z2 = z1.view(windows, rows, k * k), z2.view(windows, rows, k * k)
        if not self.top_pairs:
            return z1, z2, post
        b1, b2 = self._best_pairs(plan, terms)
        shape = (windows, rows, b1.shape[1])
        b1, b2 = b1[:, None].expand(shape), b2[:, None].expand(shape)
        p1, p2 = lp1.gather(2, b1), lp2.gather(2, b2)
        extra = p1 + p2 + self._scores(terms, b1[:, 0], b2[:, 0])[:, None]
        seen = (p1 >= v1[..., -1:]) & (p2 >= v2[..., -1:])  # already a top-k x top-k pair of this row
        extra = extra.masked_fill(seen, float("-inf"))
        return torch.cat((z1, b1), 2), torch.cat((z2, b2), 2), torch.cat((post, extra), 2)


__all__ = ["AVERAGES", "LatentLikelihood", "LatentPlan", "sum_table", "top_indices"]
