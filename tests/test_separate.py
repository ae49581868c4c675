"""The file -> stems pipeline on the tiny random model."""

from __future__ import annotations

import numpy as np
import torch

from lass_cli.registry import load_registry
from lass_cli.search import SearchOptions
from lass_cli.separate import Separator


def test_stems_keep_rate_and_length_and_do_not_depend_on_window_batching():
    separator = Separator.load(load_registry()["tiny-random"], torch.device("cpu"))
    rng = np.random.default_rng(0)
    mix = (0.2 * rng.standard_normal((2, 30001))).astype(np.float32)
    options = SearchOptions(beams=4)
    whole, details = separator.separate(mix, 32000, options, batch_windows=100)
    steps = []
    parts, parts_details = separator.separate(mix, 32000, options, lambda d, t: steps.append((d, t)), batch_windows=2)
    windows = details["windows"]["count"]
    assert windows == -(-int(np.ceil(30001 * 22050 / 32000)) // separator.window_samples)
    assert parts_details["windows"]["batch_windows"] == 2 and details["windows"]["batch_windows"] == 100
    for stem in ("drums", "bass"):
        assert whole[stem].shape == (30001,) and whole[stem].dtype == np.float32
        np.testing.assert_array_equal(whole[stem], parts[stem])
    assert details["windows"]["scores"] == parts_details["windows"]["scores"]
    total = -(-windows // 2) * separator.spec.window_tokens  # steps of each batch of windows
    assert steps[-1] == (total, total) and len(steps) == total
    assert separator.default_batch_windows(options) >= 1
