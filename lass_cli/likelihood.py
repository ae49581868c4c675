"""The discrete likelihood ``P[z1, z2, m]`` of LASS: counting, files, and the per-token view.

Counts ``F[z1, z2, m]`` say how often source tokens z1 and z2 at the same position gave mixture
token m (the mixture being ``(x1 + x2) / 2``); each observation is counted in both orders, so the
table is symmetric in z1 and z2 (paper, Eq. 8-9). ``P[z1, z2, :] = F[z1, z2, :] / sum_m F[z1, z2, m]``.

Counts are kept as sorted unique linear keys ``(z1 * K + z2) * K + m`` with their counts, so memory
follows the number of distinct triples (K = 2048 gives K^3 = 8.6e9 possible cells). Files use the
layout of pydata ``sparse.save_npz`` for a ``sparse.COO`` (the upstream ``sum_frequencies.npz``),
written and read with numpy alone.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Compact pending observations once they outnumber this many (or the stored triples).
_COMPACT_AT = 4_000_000


class LikelihoodFileError(ValueError):
    """A counts file that cannot be read or does not hold a K x K x K table."""


def _unique_sum(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(unique))
    return unique, sums.astype(values.dtype, copy=False)


class Counts:
    """Sparse counts ``F[z1, z2, m]`` over K tokens, grown batch by batch and merged across shards."""

    def __init__(self, bins: int, keys: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
        if bins < 1 or bins**3 >= 2**63:
            raise ValueError(f"bins {bins} out of range")
        self.bins = bins
        self._keys = np.zeros(0, np.int64) if keys is None else np.asarray(keys, np.int64)
        self._values = np.zeros(0, np.int64) if values is None else np.asarray(values)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    # ------------------------------------------------------------------ counting
    def add(self, z1: np.ndarray | torch.Tensor, z2: np.ndarray | torch.Tensor, m: np.ndarray | torch.Tensor) -> None:
        """Count every aligned triple of equally shaped token arrays, in both source orders."""
        z1, z2, m = (np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, np.int64).ravel() for t in (z1, z2, m))
        if not len(z1) == len(z2) == len(m):
            raise ValueError("z1, z2 and m must have the same number of tokens")
        if len(z1) and (min(z1.min(), z2.min(), m.min()) < 0 or max(z1.max(), z2.max(), m.max()) >= self.bins):
            raise ValueError(f"tokens must lie in 0..{self.bins - 1}")
        k = self.bins
        self._pending.append((z1 * k + z2) * k + m)
        self._pending.append((z2 * k + z1) * k + m)
        self._pending_size += 2 * len(z1)
        if self._pending_size > max(_COMPACT_AT, len(self._keys)):
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        new_keys, new_counts = np.unique(np.concatenate(self._pending), return_counts=True)
        self._pending, self._pending_size = [], 0
        keys = np.concatenate((self._keys, new_keys))
        values = np.concatenate((self._values, new_counts.astype(self._values.dtype)))
        self._keys, self._values = _unique_sum(keys, values)

    def merge(self, other: Counts) -> None:
        """Add another table's counts (e.g. from another shard) into this one."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge counts over {other.bins} tokens into {self.bins}")
        self._compact()
        keys = np.concatenate((self._keys, other.keys))
        values = np.concatenate((self._values, other.values)).astype(np.result_type(self._values, other.values))
        self._keys, self._values = _unique_sum(keys, values)

    # ------------------------------------------------------------------ views
    @property
    def keys(self) -> np.ndarray:
        """Sorted unique linear keys ``(z1 * K + z2) * K + m``."""
        self._compact()
        return self._keys

    @property
    def values(self) -> np.ndarray:
        self._compact()
        return self._values

    @property
    def coords(self) -> np.ndarray:
        """(3, nnz) int64 rows z1, z2, m, in C order."""
        keys, k = self.keys, self.bins
        return np.stack((keys // (k * k), (keys // k) % k, keys % k))

    @property
    def nnz(self) -> int:
        return len(self.keys)

    @property
    def total(self) -> int:
        return int(self.values.sum())

    @property
    def density(self) -> float:
        """Fraction of the K^3 cells that are nonzero (paper Table 1)."""
        return self.nnz / float(self.bins) ** 3

    def dense(self) -> np.ndarray:
        """The full (K, K, K) array; for small K only."""
        out = np.zeros(self.bins**3, self.values.dtype)
        out[self.keys] = self.values
        return out.reshape(self.bins, self.bins, self.bins)

    def summary(self) -> dict[str, float | int]:
        return {"bins": self.bins, "nnz": self.nnz, "density": self.density, "observations": self.total}

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write a ``sparse.save_npz`` file (format 'coo'), atomically."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as f:
            np.savez_compressed(
                f,
                format=np.array("coo"),
                shape=np.array([self.bins] * 3, np.int64),
                data=self.values,
                coords=self.coords,
                fill_value=np.array(0, self.values.dtype),
            )
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path) -> Counts:
        """Read a ``sparse.save_npz`` COO file (the upstream ``sum_frequencies.npz`` or ours)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                fmt = str(npz["format"]) if "format" in npz.files else "coo"
                shape = tuple(int(s) for s in npz["shape"])
                coords, data = npz["coords"], npz["data"]
                fill = npz["fill_value"][()] if "fill_value" in npz.files else 0
        except FileNotFoundError:
            raise LikelihoodFileError(f"counts file not found: {path}") from None
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise LikelihoodFileError(f"cannot read counts file {path}: {exc}") from None
        if fmt != "coo" or len(shape) != 3 or len(set(shape)) != 1 or fill != 0:
            raise LikelihoodFileError(f"{path} is not a K x K x K COO table of counts (shape {shape}, {fmt})")
        if coords.shape != (3, len(data)):
            raise LikelihoodFileError(f"{path}: coords {coords.shape} do not match {len(data)} values")
        bins = shape[0]
        coords = coords.astype(np.int64)
        if len(data) and (coords.min() < 0 or coords.max() >= bins):
            raise LikelihoodFileError(f"{path}: coordinates outside 0..{bins - 1}")
        keys = (coords[0] * bins + coords[1]) * bins + coords[2]
        values = data.astype(np.int64) if np.issubdtype(data.dtype, np.integer) else data.astype(np.float64)
        keep = values != 0
        keys, values = _unique_sum(keys[keep], values[keep])
        return cls(bins, keys, values)

    # ------------------------------------------------------------------ inference
    def likelihood(self, weight: float = 3.0, device: str | torch.device = "cpu") -> Likelihood:
        """The per-mixture-token view used by the search, ``weight`` (lambda) times log P."""
        return Likelihood.from_counts(self, weight, device)


@dataclass
class Likelihood:
    """For each mixture token m: the pairs (z1, z2) with ``F[z1, z2, m] > 0`` and their
    ``weight * log P[z1, z2, m]``, grouped by m (entries ``offsets[m]:offsets[m+1]``), on the device."""

    bins: int
    weight: float
    offsets: torch.Tensor  # (K + 1,) long, on CPU: sizes are planned on the host
    z1: torch.Tensor  # (nnz,) long
    z2: torch.Tensor  # (nnz,) long
    scores: torch.Tensor  # (nnz,) float32, weight * log P
    observes = "tokens"

    @classmethod
    def from_counts(cls, counts: Counts, weight: float, device: str | torch.device) -> Likelihood:
        keys, values, k = counts.keys, counts.values.astype(np.float64), counts.bins
        pair, m = keys // k, keys % k
        # keys are sorted, so all m of one (z1, z2) pair are contiguous: normalise over them.
        _, pair_start, pair_inverse = np.unique(pair, return_index=True, return_inverse=True)
        totals = np.add.reduceat(values, pair_start) if len(values) else values
        log_p = np.log(values / totals[pair_inverse])  # float64, as the original code computes it
        order = np.argsort(m, kind="stable")
        offsets = np.concatenate(([0], np.cumsum(np.bincount(m, minlength=k))))
        pair = pair[order]
        as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype).to(device)  # noqa: E731
        return cls(
            bins=k,
            weight=weight,
            offsets=torch.as_tensor(offsets, dtype=torch.long),
            z1=as_tensor(pair // k, torch.long),
            z2=as_tensor(pair % k, torch.long),
            scores=as_tensor(weight * log_p[order], torch.float32),
        )

    @property
    def device(self) -> torch.device:
        return self.scores.device

    def entries(self, mixture: torch.Tensor) -> torch.Tensor:
        """Number of candidate pairs for each mixture token (same shape as ``mixture``), on CPU."""
        m = mixture.cpu()
        return self.offsets[m + 1] - self.offsets[m]

    def plan(self, mixture: torch.Tensor) -> StepPlan:
        """Where the candidates of every (window, step) of (W, S) mixture tokens lie, worked out
        once per search so that the per-step loop only gathers on the device."""
        if mixture.dim() != 2:
            raise ValueError(f"mixture tokens must be (windows, S), got shape {tuple(mixture.shape)}")
        m = mixture.cpu()
        entries = self.offsets[m + 1] - self.offsets[m]
        return StepPlan(
            starts=self.offsets[m].to(self.device),
            counts=entries.to(self.device),
            widths=entries.max(0).values.tolist() if len(m) else [],
            fallback=entries == 0,
        )

    def candidates(self, mixture: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate pairs of W mixture tokens, padded to ``width`` (at least the largest count):
        z1, z2 (W, width) long and scores (W, width) float32, -inf in the padding."""
        m = mixture.cpu()
        start = self.offsets[m].to(self.device)
        return self.gather(start, self.offsets[m + 1].to(self.device) - start, width)

    def gather(
        self, start: torch.Tensor, count: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`candidates`, from each window's first entry and number of entries (on the device)."""
        device = self.device
        column = torch.arange(width, device=device)
        valid = column[None, :] < count[:, None]
        index = torch.where(valid, start[:, None] + column[None, :], 0)
        if self.z1.numel() == 0:
            zeros = torch.zeros_like(index)
            return zeros, zeros, torch.full(index.shape, float("-inf"), device=device)
        scores = torch.where(valid, self.scores[index], float("-inf"))
        return self.z1[index], self.z2[index], scores

    def pairs(
        self, plan: StepPlan, t: int, lp1: torch.Tensor, lp2: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate pairs of step t for every row and their log posterior, (W, R, N) each.

        A window whose mixture token was never counted has no candidates and uses the priors
        alone: the best ``keep`` pairs of a row lie among its ``keep`` best tokens of each prior."""
        windows, rows, _ = lp1.shape
        counted = alone = None
        if plan.widths[t]:
            z1, z2, ll = self.gather(plan.starts[:, t], plan.counts[:, t], plan.widths[t])
            shape = (windows, rows, z1.shape[1])
            z1, z2 = z1[:, None].expand(shape), z2[:, None].expand(shape)
            counted = z1, z2, ll[:, None] + lp1.gather(2, z1) + lp2.gather(2, z2)
        use = plan.fallback[:, t]
        if use.any():
            c = min(keep, lp1.shape[2])
            v1, i1 = lp1.topk(c, dim=2)
            v2, i2 = lp2.topk(c, dim=2)
            shape = (windows, rows, c, c)
            alone = (
                i1[..., :, None].expand(shape).reshape(windows, rows, c * c),
                i2[..., None, :].expand(shape).reshape(windows, rows, c * c),
                (v1[..., :, None] + v2[..., None, :]).view(windows, rows, c * c),
            )
        if counted is None or alone is None:
            return counted or alone  # type: ignore[return-value]
        width = max(counted[0].shape[2], alone[0].shape[2])
        use = use.to(self.device)[:, None, None]
        pad = lambda x, fill: F.pad(x, (0, width - x.shape[2]), value=fill)  # noqa: E731
        z1, z2, post = (
            torch.where(use, pad(a, fill), pad(b, fill)) for a, b, fill in zip(alone, counted, (0, 0, float("-inf")))
        )
        return z1, z2, post


@dataclass
class StepPlan:
    """Per (window, step): first candidate entry and how many (device), the widest step (host),
    and the steps with no entries at all, which use the priors alone (host)."""

    starts: torch.Tensor
    counts: torch.Tensor
    widths: list[int]
    fallback: torch.Tensor


__all__ = ["Counts", "Likelihood", "LikelihoodFileError", "StepPlan"]
