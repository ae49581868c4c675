"""`--compat upstream`: the original LASS beam search, decision for decision (issue 11).

The reference below is written from the original code's semantics (diba's ``_ancestral_sample``
and ``get_topk``), one window at a time, with its own candidate lists taken from the counts; it is
not a run of the original code. Tokens files and ``lass decode`` are tested through the CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from lass_cli.likelihood import Counts
from lass_cli.registry import load_registry
from lass_cli.search import SearchOptions, beam_search, search, upstream_beam_search
from lass_cli.separate import Separator
from lass_cli.tokens import read_tokens

from .conftest import random_prior
from .test_cli import lass, mix
from .test_search import random_counts

BINS = 16


def reference_upstream(priors, counts: Counts, weight: float, mixture: list[int], beams: int):
    """The original bookkeeping for one window: sort ascending, keep the last B, re-index the kept
    totals by the parent beams, answer with the last beam."""
    z1_all, z2_all, m_all = counts.coords
    values = counts.values.astype(np.float64)
    caches = [p.new_cache(rows=1, max_len=len(mixture), capacity=beams) for p in priors]
    log_post_sum = torch.zeros(1, 1)
    xs = torch.zeros(2, 1, 0, dtype=torch.long)
    previous = (None, None)
    for m in mixture:
        lp = []
        for prior, cache, prev in zip(priors, caches, previous):
            logits = prior.step(cache, prev)
            lp.append(logits - logits.logsumexp(-1, keepdim=True))
        pick = m_all == m
        totals = np.array([values[(z1_all == a) & (z2_all == b)].sum() for a, b in zip(z1_all[pick], z2_all[pick])])
        ll = torch.tensor(weight * np.log(values[pick] / totals), dtype=torch.float32)
        c0, c1 = torch.from_numpy(z1_all[pick]), torch.from_numpy(z2_all[pick])
        posterior = ll + lp[0][:, c0] + lp[1][:, c1]
        x_sorted, index = torch.sort((log_post_sum + posterior).flatten())
        x_sorted, index = x_sorted[-beams:], index[-beams:]
        parent, pair = index // len(ll), index % len(ll)
        log_post_sum = x_sorted[:, None][parent]
        xs = torch.cat((xs[:, parent], torch.stack((c0[pair], c1[pair]))[:, :, None]), 2)
        for cache in caches:
            cache.reorder(parent)
        previous = (c0[pair], c1[pair])
    return xs[0, -1], xs[1, -1]


def rich_counts(seed: int) -> Counts:
    """Counts where every mixture token has many pairs (the original needs at least B at step 0)."""
    return random_counts(seed, BINS, triples=4000, missing=0)


@pytest.mark.parametrize("beams", [3, 5])
def test_compat_search_matches_the_reference_semantics(beams):
    priors = (random_prior(1, l_bins=BINS), random_prior(2, l_bins=BINS))
    counts = rich_counts(3)
    likelihood = counts.likelihood(3.0)
    mixture = torch.from_numpy(np.random.default_rng(4).integers(0, BINS, (3, 24)))
    result = upstream_beam_search(priors, likelihood, mixture, beams)
    for w in range(len(mixture)):
        z1, z2 = reference_upstream(priors, counts, 3.0, mixture[w].tolist(), beams)
        assert torch.equal(result.tokens[0][w], z1) and torch.equal(result.tokens[1][w], z2)


def test_the_bookkeeping_changes_the_tokens_and_not_at_one_beam():
    priors = (random_prior(1, l_bins=BINS), random_prior(2, l_bins=BINS))
    likelihood = rich_counts(3).likelihood(3.0)
    mixture = torch.from_numpy(np.random.default_rng(5).integers(0, BINS, (4, 24)))
    compat = upstream_beam_search(priors, likelihood, mixture, 5)
    correct = beam_search(priors, likelihood, mixture, 5)
    differ = [not torch.equal(compat.tokens[i][w], correct.tokens[i][w]) for w in range(4) for i in range(2)]
    assert any(differ), "the scrambled totals should change some window's answer"
    one = upstream_beam_search(priors, likelihood, mixture, 1)
    best = beam_search(priors, likelihood, mixture, 1)
    assert all(torch.equal(a, b) for a, b in zip(one.tokens, best.tokens))


def test_batching_does_not_change_the_compat_decisions():
    priors = (random_prior(1, l_bins=BINS), random_prior(2, l_bins=BINS))
    likelihood = random_counts(6, BINS, triples=3000, missing=0).likelihood(3.0)
    mixture = torch.from_numpy(np.random.default_rng(7).integers(0, BINS, (4, 20)))
    together = upstream_beam_search(priors, likelihood, mixture, 4)
    for w in range(4):
        alone = upstream_beam_search(priors, likelihood, mixture[w : w + 1], 4)
        assert torch.equal(alone.tokens[0][0], together.tokens[0][w])
        assert torch.equal(alone.tokens[1][0], together.tokens[1][w])


def test_compat_is_for_beam_search_only():
    with pytest.raises(ValueError, match="--compat upstream"):
        SearchOptions(method="sample", compat="upstream")
    with pytest.raises(ValueError, match="compat must be"):
        SearchOptions(compat="paper")


def test_separator_puts_bass_first_and_keeps_a_short_last_window_short():
    spec = load_registry()["tiny-random"]
    separator = Separator.load(spec, torch.device("cpu"))
    options = SearchOptions(beams=3, compat="upstream")
    assert separator.search_order(options) == (1, 0) and separator.search_order(SearchOptions()) == (0, 1)
    hop, window = separator.vqvae.hop_length(spec.level), separator.window_samples
    y = (mix(spec.sample_rate, 1.0, 1)[0][: window + 5 * hop + 7] * 0.5).astype(np.float32)
    stems, details = separator.separate(2 * y[None], spec.sample_rate, options, keep_tokens=True, wiener=False)
    windows = details["tokens"]
    assert [len(w["mixture"]) for w in windows] == [spec.window_tokens, 5]
    tail = torch.from_numpy(y[window:].copy())[None]
    assert np.array_equal(windows[1]["mixture"], separator.vqvae.encode(tail).numpy()[0])
    # Source 0 of the search is the bass prior: the same search by hand, priors swapped.
    mixture = torch.from_numpy(windows[0]["mixture"])[None]
    by_hand = search((separator.priors[1], separator.priors[0]), separator.likelihood, mixture, options)
    assert np.array_equal(windows[0]["bass"], by_hand.tokens[0][0].numpy())
    assert np.array_equal(windows[0]["drums"], by_hand.tokens[1][0].numpy())
    assert all(len(x) == len(y) for x in stems.values())


def test_save_tokens_then_decode_writes_the_same_stems(tmp_path):
    rate = 22050
    sf.write(tmp_path / "song.wav", mix(rate, 2.0, 2).T, rate)
    tokens = tmp_path / "song.npz"
    done = lass("separate", "song.wav", "--out", "stems", "--beams", "2", "--compat", "upstream", "--no-wiener",
                "--bits", "32f", "--save-tokens", str(tokens), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "stems" / "song" / "report.json").read_text())
    assert report["settings"]["compat"] == "upstream" and report["outputs"]["tokens"] == str(tokens)
    file = read_tokens(tokens)
    assert file.stems == ("drums", "bass") and file.input_samples == 2 * rate and file.settings["compat"] == "upstream"
    assert (file.tokens["mixture"] >= 0).sum() == file.lengths.sum()
    decoded = lass("decode", str(tokens), "--out", "again", "--bits", "32f", cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr
    for stem in ("drums", "bass"):
        first, _ = sf.read(tmp_path / "stems" / "song" / f"{stem}.wav")
        again, again_rate = sf.read(tmp_path / "again" / f"{stem}.wav")
        assert again_rate == rate and len(again) == len(first)
        np.testing.assert_allclose(again, first, atol=1e-4)
    twice = lass("decode", str(tokens), "--out", "again", cwd=tmp_path)
    assert twice.returncode == 1 and "exists" in twice.stderr and "Traceback" not in twice.stderr
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    bad = lass("decode", str(broken), "--out", "x", cwd=tmp_path)
    assert bad.returncode == 1 and "not a lass token file" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
