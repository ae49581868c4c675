"""Counting F[z1, z2, m], the sparse.save_npz file format, merging, and the per-token view."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import sparse
import torch

from lass_cli.likelihood import Counts, LikelihoodFileError


def random_tokens(seed: int, n: int, bins: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    z1, z2 = rng.integers(0, bins, (2, n))
    m = (z1 + z2 + rng.integers(0, 3, n)) % bins  # correlated, like a real mixture
    return z1, z2, m


def naive_counts(z1, z2, m) -> Counter:
    counts: Counter = Counter()
    for a, b, c in zip(z1.tolist(), z2.tolist(), m.tolist()):
        counts[(a, b, c)] += 1
        counts[(b, a, c)] += 1
    return counts


def as_counter(counts: Counts) -> Counter:
    return Counter({tuple(c): int(v) for c, v in zip(counts.coords.T.tolist(), counts.values)})


def test_counting_equals_naive_loop_in_batches():
    bins = 12
    z1, z2, m = random_tokens(0, 3000, bins)
    counts = Counts(bins)
    for part in np.array_split(np.arange(len(z1)), 7):  # several batches, 2-D input too
        counts.add(z1[part].reshape(1, -1), z2[part].reshape(1, -1), torch.from_numpy(m[part]))
    assert as_counter(counts) == naive_counts(z1, z2, m)
    dense = counts.dense()
    np.testing.assert_array_equal(dense, dense.transpose(1, 0, 2))  # both source orders counted
    assert counts.total == 2 * len(z1)
    assert counts.summary() == {"bins": bins, "nnz": counts.nnz, "density": counts.nnz / bins**3, "observations": 6000}


def test_large_vocabulary_stays_sparse():
    counts = Counts(2048)
    z1, z2, m = random_tokens(1, 50_000, 2048)
    counts.add(z1, z2, m)
    assert counts.nnz <= 100_000
    assert counts.coords.max() < 2048
    assert counts.density < 1e-4


def test_merge_equals_counting_everything_at_once():
    bins = 10
    a, b = random_tokens(2, 500, bins), random_tokens(3, 700, bins)
    left, right, both = Counts(bins), Counts(bins), Counts(bins)
    left.add(*a)
    right.add(*b)
    both.add(*a)
    both.add(*b)
    left.merge(right)
    np.testing.assert_array_equal(left.keys, both.keys)
    np.testing.assert_array_equal(left.values, both.values)
    with pytest.raises(ValueError, match="cannot merge"):
        left.merge(Counts(bins + 1))


def test_save_load_round_trip_and_sparse_compatibility(tmp_path):
    bins = 9
    counts = Counts(bins)
    counts.add(*random_tokens(4, 400, bins))
    counts.save(tmp_path / "ours.npz")
    loaded = Counts.load(tmp_path / "ours.npz")
    np.testing.assert_array_equal(loaded.keys, counts.keys)
    np.testing.assert_array_equal(loaded.values, counts.values)
    theirs = sparse.load_npz(tmp_path / "ours.npz")
    np.testing.assert_array_equal(theirs.todense(), counts.dense())

    reference = sparse.COO(counts.coords, counts.values, shape=(bins,) * 3)
    sparse.save_npz(tmp_path / "sum_frequencies.npz", reference)
    np.testing.assert_array_equal(Counts.load(tmp_path / "sum_frequencies.npz").dense(), counts.dense())

    # Older pydata sparse releases (the upstream file) wrote no 'format' entry.
    np.savez_compressed(
        tmp_path / "old.npz",
        coords=counts.coords,
        data=counts.values,
        shape=np.array([bins] * 3),
        fill_value=np.array(0),
    )
    np.testing.assert_array_equal(Counts.load(tmp_path / "old.npz").dense(), counts.dense())


def test_broken_files_fail_clearly(tmp_path):
    with pytest.raises(LikelihoodFileError, match="not found"):
        Counts.load(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(LikelihoodFileError, match="cannot read"):
        Counts.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "matrix.npz", coords=np.zeros((2, 1), np.int64), data=np.ones(1), shape=np.array([4, 4]))
    with pytest.raises(LikelihoodFileError, match="K x K x K"):
        Counts.load(tmp_path / "matrix.npz")
    with pytest.raises(ValueError, match="tokens must lie"):
        Counts(4).add(np.array([4]), np.array([0]), np.array([0]))


def test_likelihood_view_matches_dense_normalisation():
    bins, weight = 8, 2.5
    counts = Counts(bins)
    counts.add(*random_tokens(5, 300, bins))
    dense = counts.dense().astype(np.float64)
    totals = dense.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.log(dense / totals)
    view = counts.likelihood(weight=weight)
    mixture = torch.arange(bins)
    widths = view.entries(mixture)
    z1, z2, scores = view.candidates(mixture, int(widths.max()))
    for m in range(bins):
        n = int(widths[m])
        got = {(int(a), int(b)): float(s) for a, b, s in zip(z1[m, :n], z2[m, :n], scores[m, :n])}
        nz = np.argwhere(dense[:, :, m] > 0)
        assert set(got) == {tuple(p) for p in nz.tolist()}
        for (a, b), s in got.items():
            assert s == pytest.approx(weight * log_p[a, b, m], abs=1e-5)
        assert torch.all(torch.isinf(scores[m, n:]))
    probability_sums = np.exp(log_p).sum(-1)
    assert np.allclose(probability_sums[totals[..., 0] > 0], 1.0)
    assert not math.isnan(float(scores[torch.isfinite(scores)].sum()))
