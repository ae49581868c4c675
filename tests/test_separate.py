"""The file -> stems pipeline on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
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
    # By default a prior call holds at most 128 rows on CPU: a long file is searched in batches.
    beams = SearchOptions(beams=10)
    assert separator.default_batch_windows(beams) == 12  # the tiny model's caches fit many times over
    # An input's batches are even: a few windows over one batch join it, more split it in two halves.
    assert [separator.default_batch_windows(beams, n) for n in (5, 14, 18, 269)] == [12, 14, 9, 13]
    # Greedy search holds one row per window, whatever --beams says.
    greedy = separator.default_batch_windows(SearchOptions(method="greedy", beams=10))
    assert greedy == separator.default_batch_windows(SearchOptions(beams=1)) > 12


def test_input_level_normalisation_round_trips(tmp_path):
    (tmp_path / "models.toml").write_text(
        load_registry_text()
        .replace("[models.tiny-random", "[models.tiny-level")
        .replace(
            "sample_rate = 22050\nwindow_tokens = 128", "sample_rate = 22050\nwindow_tokens = 128\ninput_rms = 0.1"
        )
    )
    spec = load_registry([tmp_path / "models.toml"])["tiny-level"]
    assert spec.input_rms == 0.1
    separator = Separator.load(spec, torch.device("cpu"))
    mix = (0.05 * np.random.default_rng(1).standard_normal((1, 12000))).astype(np.float32)
    quiet, details = separator.separate(mix, 22050, SearchOptions(beams=2))
    loud, loud_details = separator.separate(mix * 8, 22050, SearchOptions(beams=2))
    assert details["level"]["gain_in"] == pytest.approx(0.1 / float(np.sqrt(np.mean((mix / 2) ** 2))), rel=1e-4)
    for stem in ("drums", "bass"):
        np.testing.assert_allclose(loud[stem], 8 * quiet[stem], rtol=1e-4, atol=1e-6)
    raw, raw_details = separator.separate(mix, 22050, SearchOptions(beams=2), normalize=False)
    assert raw_details["level"]["gain_in"] == 1.0
    silent, silent_details = separator.separate(np.zeros((1, 5000), np.float32), 22050, SearchOptions(beams=2))
    assert silent_details["level"]["gain_in"] == 1.0 and all(np.isfinite(x).all() for x in silent.values())


def load_registry_text() -> str:
    from lass_cli.registry import packaged_registry_text

    return packaged_registry_text()


def test_the_latent_likelihood_separates_from_encoder_outputs(tmp_path):
    """A model whose likelihood is ``latent`` needs no likelihood file, feeds the search the
    mixture's encoder outputs, and honours --lambda as the counted likelihood does."""
    text = load_registry_text()
    tiny = text[text.index("[models.tiny-random]") :]
    tiny = tiny.replace("[models.tiny-random", "[models.tiny-latent")
    tiny = tiny[: tiny.index("[models.tiny-latent.likelihood]")]
    tiny += '[models.tiny-latent.likelihood]\nformat = "latent"\nconfig = { sigma = 0.5, top_k = 6 }\n'
    (tmp_path / "models.toml").write_text(tiny)
    spec = load_registry([tmp_path / "models.toml"])["tiny-latent"]
    separator = Separator.load(spec, torch.device("cpu"))
    assert separator.likelihood.observes == "latents" and separator.likelihood.top_k == 6
    assert separator.files["likelihood"] == {"generated": True}
    mix = (0.1 * np.random.default_rng(2).standard_normal((1, 9000))).astype(np.float32)
    stems, details = separator.separate(mix, 22050, SearchOptions(beams=3))
    assert all(x.shape == (9000,) and np.isfinite(x).all() for x in stems.values())
    assert details["windows"]["likelihood_free_steps"] == [0] * details["windows"]["count"]
    heavier = Separator.load(spec, torch.device("cpu"), weight=5.0)
    _, heavy = heavier.separate(mix, 22050, SearchOptions(beams=3))
    assert heavy["windows"]["scores"] != details["windows"]["scores"]


def test_a_model_file_that_does_not_match_its_checksum_is_refused(tmp_path):
    from lass_cli.separate import load_parts

    counts = tmp_path / "counts.npz"
    load_parts(load_registry()["tiny-random"]).counts.save(counts)
    text = load_registry_text()
    tiny = text[text.index("[models.tiny-random]") :].replace("[models.tiny-random", "[models.tiny-file")
    tiny = tiny[: tiny.index("[models.tiny-file.likelihood]")]
    tiny += f'[models.tiny-file.likelihood]\nformat = "sparse-npz"\npath = "{counts}"\nsha256 = "{"0" * 64}"\n'
    (tmp_path / "models.toml").write_text(tiny)
    with pytest.raises(ValueError, match="damaged or replaced"):
        load_parts(load_registry([tmp_path / "models.toml"])["tiny-file"])


def test_device_and_dtype_are_chosen_in_one_place(tmp_path):
    """pick_dtype decides the precision for separate, evaluate and the benchmarks alike: float32 on
    CPU, float16 on CUDA, float32 under --compat upstream, else what --dtype asks; the priors and
    their caches follow it."""
    from lass_cli.jobs import SearchRequest
    from lass_cli.separate import pick_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype(cpu) == torch.float32 and pick_dtype(cuda) == torch.float16
    assert pick_dtype(cuda, "bfloat16") == torch.bfloat16 and pick_dtype(cuda, "float16", "upstream") == torch.float32
    with pytest.raises(ValueError, match="--dtype"):
        pick_dtype(cpu, "float8")
    spec = load_registry()["tiny-random"]
    request = SearchRequest(model="tiny-random", dtype="bfloat16")
    options = request.search_options(cpu, spec)
    separator = request.load_separator(spec, cpu, options)
    assert separator.dtype == torch.bfloat16
    assert all(p.compute_dtype == torch.bfloat16 and p.new_cache(2, 8).nbytes() > 0 for p in separator.priors)
    assert next(iter(separator.priors[0].new_cache(2, 8)._stores.values())).dtype == torch.bfloat16
    stems, _ = separator.separate((0.1 * np.random.default_rng(3).standard_normal((1, 6000))).astype(np.float32),
                                  22050, options)  # fmt: skip
    assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in stems.values())
    upstream = SearchRequest(model="tiny-random", dtype="bfloat16", compat="upstream", sampler="beam")
    assert upstream.load_separator(spec, cpu, upstream.search_options(cpu, spec)).dtype == torch.float32
