"""Prior: parity with the original Jukebox/LASS code, incremental decoding, cache reordering."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lass_cli import cpu_kernel
from lass_cli import prior as prior_module
from lass_cli.checkpoint import CheckpointError
from lass_cli.prior import COLUMN, PREVIOUS_ROW, ROW, Prior, PriorCache, PriorConfig

from .conftest import SMALL, fixture_keys, jukebox_fixture, random_prior

ATOL = 1e-4
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture(scope="module")
def fixture_prior() -> Prior:
    return Prior.from_checkpoint(jukebox_fixture("prior.pth.tar"))


def run_incremental(prior: Prior, tokens: torch.Tensor) -> torch.Tensor:
    """LASS's pattern: step 0 on one row, expand to all rows, then feed the previous tokens."""
    rows, length = tokens.shape
    cache = prior.new_cache(rows=1, max_len=length, capacity=rows)
    logits = [prior.step(cache, None).expand(rows, -1)]
    cache.reorder(torch.zeros(rows, dtype=torch.long))
    for t in range(1, length):
        logits.append(prior.step(cache, tokens[:, t - 1]))
    return torch.stack(logits, 1)


def run_beam_pattern(
    prior: Prior, reference: dict[str, np.ndarray]
) -> tuple[list[np.ndarray], torch.Tensor, np.ndarray]:
    rows = reference["beam_reorder"].shape[1]
    cache = prior.new_cache(rows=1, capacity=rows)
    step0 = prior.step(cache, None).numpy()
    history = torch.zeros(1, 0, dtype=torch.long)
    logits = []
    for t in range(len(reference["beam_reorder"])):
        index = torch.from_numpy(reference["beam_reorder"][t])
        cache.reorder(index)
        new = torch.from_numpy(reference["beam_new_tokens"][t])
        history = torch.cat((history[index], new[:, None]), 1)
        logits.append(prior.step(cache, new).numpy())
    return logits, history, step0


def test_teacher_forced_logits_match_reference(fixture_prior, prior_reference):
    tokens = torch.from_numpy(prior_reference["tokens"])
    logits = fixture_prior(tokens)
    assert logits.shape == (3, 256, 64) and logits.dtype == torch.float32
    assert np.abs(logits.numpy() - prior_reference["tf_logits"]).max() <= ATOL
    bits = F.cross_entropy(logits.reshape(-1, 64), tokens.reshape(-1)).item() / math.log(2)
    assert bits == pytest.approx(float(prior_reference["tf_loss_bits"]), abs=1e-4)


def test_incremental_logits_match_reference(fixture_prior, prior_reference):
    logits = run_incremental(fixture_prior, torch.from_numpy(prior_reference["tokens"]))
    assert np.abs(logits.numpy() - prior_reference["inc_logits"]).max() <= ATOL
    teacher = fixture_prior(torch.from_numpy(prior_reference["tokens"]))
    assert torch.allclose(logits, teacher, atol=ATOL, rtol=0)


def test_beam_reorders_match_reference(fixture_prior, prior_reference):
    logits, history, step0 = run_beam_pattern(fixture_prior, prior_reference)
    assert np.abs(step0 - prior_reference["beam_step0_logits"]).max() <= ATOL
    assert np.abs(np.stack(logits) - prior_reference["beam_logits"]).max() <= ATOL
    np.testing.assert_array_equal(history.numpy(), prior_reference["beam_final_histories"])


def test_half_precision_follows_lass_fp16_mode(prior_reference):
    """fp16 projections, fp16 cache, float32 LayerNorm/softmax/output, as LASS runs on CUDA.
    Half arithmetic differs between devices and between CPUs (the reference's own kernels: 6e-6 on
    one of our machines, 0.022 on another, whose fp16 products round differently), so the bound is
    the size of the fp16 error itself (fp16 vs fp32 is 0.019 here), not the reference's rounding."""
    prior = Prior.from_checkpoint(jukebox_fixture("prior.pth.tar"), dtype=torch.float16)
    assert prior.compute_dtype == torch.float16
    assert prior.prior.x_emb.weight.dtype == torch.float32
    logits = run_incremental(prior, torch.from_numpy(prior_reference["tokens"]))
    assert logits.dtype == torch.float32
    assert np.abs(logits.numpy() - prior_reference["inc_logits_fp16"]).max() <= 0.05
    beam, _, step0 = run_beam_pattern(prior, prior_reference)
    assert np.abs(np.stack(beam) - prior_reference["beam_logits_fp16"]).max() <= 0.05


def test_state_dict_matches_original_keys_and_stays_tied(fixture_prior):
    expected = fixture_keys("prior_state_dict_keys.tsv")
    ours = fixture_prior.state_dict()
    assert list(ours) == list(expected)
    for key, (shape, _) in expected.items():
        assert list(ours[key].shape) == shape, key
    assert fixture_prior.prior.x_out.weight is fixture_prior.prior.x_emb.weight


# ---------------------------------------------------------------- configurations beyond the fixture


def dense_reference(prior: Prior, tokens: torch.Tensor) -> torch.Tensor:
    """Straightforward full-mask transformer written from the documented rules, for comparison."""
    config, ar = prior.config, prior.prior
    length, bc, heads = tokens.shape[1], config.block_ctx, config.heads
    pos = torch.arange(length)
    row, col = pos // bc, pos % bc
    masks = [
        (row[:, None] == row[None]) & (col[None] <= col[:, None]),  # row: causal in own block
        (col[:, None] == col[None]) & (row[None] <= row[:, None]),  # column: same column, rows <= own
        row[None] == row[:, None] - 1,  # previous row: the whole previous block
    ]
    x = torch.cat((ar.start_token.expand(len(tokens), 1, -1), ar.x_emb(tokens)[:, :-1]), 1)
    x = x + ar.pos_emb.pos_emb[:length]
    for d, block in enumerate(ar.transformer._attn_mods):
        h = F.layer_norm(x, (config.prior_width,), block.ln_0.weight, block.ln_0.bias, 1e-5)
        q, k, v = (h @ block.attn.c_attn.w + block.attn.c_attn.b).chunk(3, -1)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~masks[d % 3], float("-inf"))
        weights = torch.softmax(scores, -1).nan_to_num(0.0)  # a query with no key attends to zeros
        a = (weights @ v).transpose(1, 2).flatten(2) @ block.attn.c_proj.w + block.attn.c_proj.b
        u = F.layer_norm(x + a, (config.prior_width,), block.ln_1.weight, block.ln_1.bias, 1e-5)
        hidden = u @ block.mlp.c_fc.w + block.mlp.c_fc.b
        m = (hidden * torch.sigmoid(1.702 * hidden)) @ block.mlp.c_proj.w + block.mlp.c_proj.b
        x = x + (a + m) * (1 / config.prior_depth if config.res_scale else 1.0)
    return x @ ar.x_emb.weight.T


@pytest.mark.parametrize(
    "overrides", [{}, {"heads": 1, "blocks": 6, "res_scale": True}, {"prior_depth": 4, "blocks": 12}]
)
def test_other_configurations_match_dense_reference(overrides):
    prior = random_prior(**overrides)
    weights = {name: tensor.clone() for name, tensor in prior.state_dict().items()}
    tokens = torch.randint(0, prior.config.bins, (2, prior.config.n_ctx))
    with torch.no_grad():
        expected = dense_reference(prior, tokens)
    assert torch.allclose(prior(tokens), expected, atol=ATOL, rtol=0)
    for rows in (2, 1):  # steps sum in place; a bias broadcast to one row could be written through
        assert torch.allclose(run_incremental(prior, tokens[:rows]), expected[:rows], atol=ATOL, rtol=0)
    assert all(torch.equal(tensor, weights[name]) for name, tensor in prior.state_dict().items())


def test_shorter_sequences_score_like_the_full_prefix():
    prior = random_prior(seed=1)
    tokens = torch.randint(0, prior.config.bins, (2, prior.config.n_ctx))
    full = prior(tokens)
    for length in (1, 5, 12, 13, 30):
        assert torch.allclose(prior(tokens[:, :length]), full[:, :length], atol=ATOL, rtol=0)


def check_random_reorders(prior: Prior, rows: int, length: int, seed: int, full_every: int = 0) -> None:
    """Steps with random reorders (rows repeated and dropped, their count changing; every
    ``full_every``-th step all ``rows``): the rows scored after the last reorder equal a fresh
    teacher-forced pass on their histories."""
    generator = torch.Generator().manual_seed(seed)
    cache = prior.new_cache(rows=1, max_len=length, capacity=rows)
    history = torch.zeros(1, 0, dtype=torch.long)
    logits = prior.step(cache, None)
    for t in range(length - 1):
        random_count = int(torch.randint(1, rows + 1, (1,), generator=generator))
        count = rows if full_every and t % full_every else random_count
        index = torch.randint(0, len(history), (count,), generator=generator)
        cache.reorder(index)
        new = torch.randint(0, prior.config.bins, (count,), generator=generator)
        history = torch.cat((history[index], new[:, None]), 1)
        logits = prior.step(cache, new)
    padded = torch.cat((history, history[:, :1]), 1)
    assert torch.allclose(logits, prior(padded)[:, -1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("heads", [1, 4])
def test_reorder_with_repeats_and_drops_equals_reordered_histories(heads, monkeypatch):
    # most steps grouped (rows of one previous row); their keys reach the checked logits
    monkeypatch.setattr(PriorCache, "grouping_pays_from", {"cpu": 0, "other": 0})
    check_random_reorders(random_prior(seed=2, heads=heads), rows=5, length=30, seed=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads", [1, 2])
def test_rows_sharing_a_history_read_its_keys_once_and_score_as_alone(heads, device, monkeypatch):
    """Rows whose histories agree up to a position (the beams of a window, mostly) gather and read
    the keys of those positions once per group, in every kind of layer, with each row's own later
    keys beside them, masked from the others; every row's logits are those of each row attending
    to its own copy, as the upstream loop does, within float rounding."""
    monkeypatch.setattr(PriorCache, "grouping_pays_from", {"cpu": 0, "other": 0})  # it would not, this small
    length, rows = random_prior().config.n_ctx, 8

    def steps() -> tuple[torch.Tensor, list[dict]]:
        prior = random_prior(seed=9, heads=heads).to(device)  # a fresh one: packing follows the row counts seen
        generator = torch.Generator().manual_seed(3)
        cache, previous, logits, groups = prior.new_cache(rows=rows, max_len=length), None, [], []
        for _ in range(length):
            logits.append(prior.step(cache, previous).cpu())
            groups.append({kind: g for kind, g in cache.groups.items() if g is not None})
            windows = torch.arange(rows) // 4 * 4  # two windows of four beams, each from two of them
            cache.reorder(windows + torch.randint(0, 2, (rows,), generator=generator))
            previous = torch.randint(0, prior.config.bins, (rows,), generator=generator).to(device)
        return torch.stack(logits), groups

    grouped, groups = steps()
    assert {kind for step in groups for kind in step} == {ROW, COLUMN, PREVIOUS_ROW}
    assert any(g.count < rows and g.mask is not None for step in groups for g in step.values())
    assert any(g.count < rows and g.mask is None for step in groups for g in step.values())
    monkeypatch.setattr(PriorCache, "_group", lambda cache, *args: (None, None))
    alone, groups = steps()
    assert not any(groups)
    assert torch.allclose(grouped, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_never_reordered_read_their_keys_in_place_and_score_as_gathered(device):
    """A sampler's rows are never reordered: row i wrote every key it reads into slot i, so each
    layer reads a view of the store, no gather. Its logits are a gathering cache's (one reordered
    by the identity) and the teacher-forced pass's; after its first reorder the cache gathers, and
    the rows score as their new histories."""
    prior = random_prior(seed=6).to(device)
    length, rows, switch = prior.config.n_ctx, 4, prior.config.n_ctx - 5  # switch: in the last row
    tokens = torch.randint(0, prior.config.bins, (rows, length), generator=torch.Generator().manual_seed(1))
    prior.step(prior.new_cache(rows=rows, max_len=1), None)  # packs for these rows: both caches' steps alike
    in_place, gathering = (prior.new_cache(rows=rows, max_len=length) for _ in range(2))
    gathering.reorder(torch.arange(rows, device=device))
    logits, kinds_in_place = ([], []), set()
    for t in range(switch):
        previous = None if t == 0 else tokens[:, t - 1].to(device)
        for cache, kept in zip((in_place, gathering), logits, strict=True):
            kept.append(prior.step(cache, previous).cpu())
        kinds_in_place |= {kind for kind, where in in_place._in_place.items() if where is not None}
        assert not any(where is not None for where in gathering._in_place.values())
    assert kinds_in_place == {ROW, COLUMN, PREVIOUS_ROW} and not in_place.reordered
    assert torch.allclose(torch.stack(logits[0], 1), torch.stack(logits[1], 1), atol=1e-5, rtol=0)
    full = prior(tokens[:, :switch].to(device)).cpu()
    assert torch.allclose(torch.stack(logits[0], 1), full, atol=ATOL, rtol=0)
    index = torch.tensor([2, 0, 0, 3])  # rows repeated and dropped
    history = tokens[index, :switch]
    in_place.reorder(index.to(device))
    assert in_place.reordered
    for t in range(switch, length):
        last = prior.step(in_place, history[:, -1].to(device))
        assert not any(where is not None for where in in_place._in_place.values())
        history = torch.cat((history, tokens[index, t : t + 1]), 1)
    assert torch.allclose(last.cpu(), prior(history.to(device))[:, -1].cpu(), atol=ATOL, rtol=0)


@pytest.fixture(params=["kernel", "mkl"])
def packing(request, monkeypatch) -> str:
    """A step's products by the compiled kernel's panels, or by MKL's pack (the kernel switched off)."""
    if request.param == "kernel" and cpu_kernel.load() is None:
        pytest.skip("the CPU kernel does not run here (needs Linux x86-64, a C compiler, AVX-512)")
    if request.param == "mkl":
        if not prior_module._MKL_PACKED:
            pytest.skip("this torch build has no MKL packed GEMM to pack for")
        monkeypatch.setattr(cpu_kernel, "load", lambda: None)
    return request.param


def test_steps_pack_their_weights_and_notice_weights_changed_in_place(packing):
    prior, other = random_prior(seed=4), random_prior(seed=5)
    tokens = torch.randint(0, prior.config.bins, (3, 12))
    assert torch.allclose(run_incremental(prior, tokens), prior(tokens), atol=ATOL, rtol=0)
    packs = [module._pack for module in prior._projections] + [prior._output_pack]
    assert all(pack is not None and (pack.rows, pack.panels) == (3, packing == "kernel") for pack in packs)
    prior.load_state_dict(other.state_dict())  # in place: the packs now hold the old weights
    assert torch.allclose(run_incremental(prior, tokens), other(tokens), atol=ATOL, rtol=0)
    repacked = [module._pack for module in prior._projections] + [prior._output_pack]
    assert all(new is not old for new, old in zip(repacked, packs, strict=True))


@pytest.mark.skipif(cpu_kernel.load() is None or not prior_module._MKL_PACKED, reason="needs the CPU kernel and MKL")
def test_the_kernel_packs_from_two_rows_to_its_limit_once_for_all_of_them_and_mkl_beyond():
    weight = torch.randn(48, 40)  # (n_out, n_in)
    assert prior_module._PackedWeight.of(weight, 1, None) is None  # one row: addmm
    pack = prior_module._PackedWeight.of(weight, 2, None)
    again = prior_module._PackedWeight.of(weight, cpu_kernel.MAX_ROWS, pack)
    assert pack.panels and again.panels and again.packed is pack.packed and again.rows == cpu_kernel.MAX_ROWS
    x = torch.randn(7, 40)
    assert pack.applies(x, weight) and not pack.applies(x[:1], weight)
    assert torch.allclose(pack.product(x, weight, None), x @ weight.t(), atol=1e-5, rtol=0)
    beyond = prior_module._PackedWeight.of(weight, cpu_kernel.MAX_ROWS + 1, again)
    assert beyond is not None and not beyond.panels and beyond.rows == cpu_kernel.MAX_ROWS + 1
    assert not again.applies(torch.randn(cpu_kernel.MAX_ROWS + 1, 40), weight)


def test_steps_fold_the_gelu_scale_into_their_mlp_packs_which_the_full_pass_never_reads(packing):
    """The step's MLP packs hold ``1.702 W`` and ``W / 1.702`` (one silu between them); the
    teacher-forced pass, whose flattened rows can equal the packed row count, keeps the weights."""
    prior = random_prior(seed=4)
    rows = prior.config.block_ctx  # the rows of one padded sequence in the full pass
    sequence = torch.randint(0, prior.config.bins, (1, rows))
    with torch.inference_mode():
        before = prior(sequence)
    tokens = torch.randint(0, prior.config.bins, (rows, 5))
    assert torch.allclose(run_incremental(prior, tokens), prior(tokens), atol=ATOL, rtol=0)
    assert all(layer.gelu_folded for layer in prior._plan)
    mlp = prior._blocks()[0].mlp
    assert (mlp.c_fc._pack.scale, mlp.c_proj._pack.scale, mlp.c_fc._pack.rows) == (1.702, 1 / 1.702, rows)
    with torch.inference_mode():
        assert torch.equal(prior(sequence), before)


def test_step_plan_packs_for_a_row_count_once_and_follows_replaced_parameters(packing):
    prior = random_prior(seed=8)
    tokens = torch.randint(0, prior.config.bins, (3, 12))
    cache = prior.new_cache(rows=3, max_len=12)
    packed = lambda: [layer.qkv[3] for layer in prior._plan]  # noqa: E731
    prior.step(cache, None)
    prior.step(cache, tokens[:, 0])  # a second step with 3 rows: packed for 3
    assert all(pack is not None and (pack.rows, pack.panels) == (3, packing == "kernel") for pack in packed())
    cache.reorder(torch.tensor([0, 2]))
    prior.step(cache, tokens[:2, 1])
    assert all(pack is None for pack in packed())
    cache.reorder(torch.tensor([0, 1, 1]))
    prior.step(cache, tokens[:, 2])  # back to 3 rows: the packs for 3 at once, as the step before
    assert all(pack is not None and pack.rows == 3 for pack in packed())
    block = prior._blocks()[0]  # a parameter replaced by a new tensor is seen from the next cache on
    block.ln_0.weight = torch.nn.Parameter(torch.randn_like(block.ln_0.weight), requires_grad=False)
    cache = prior.new_cache(rows=3, max_len=12)  # 3 rows again: the same packs
    logits = [prior.step(cache, None)] + [prior.step(cache, tokens[:, t - 1]) for t in range(1, 12)]
    assert torch.allclose(torch.stack(logits, 1), prior(tokens), atol=ATOL, rtol=0)
    prior.to("cpu")  # a move or cast lets go of the plan and the packs (they would hold the old tensors)
    assert prior._plan == [] and all(module._pack is None for module in prior._projections)


class CountingBackend:
    """A ``torch.compile`` backend that runs the captured graph as is and counts the captures."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, inputs: list) -> object:
        self.graphs += 1
        return graph.forward


@pytest.mark.parametrize("overrides", [{}, {"heads": 1, "blocks": 6, "res_scale": True}, {"n_ctx": 40, "blocks": 4}])
def test_compiled_steps_trace_once_and_match_the_eager_ones(overrides):
    prior = random_prior(seed=6, **overrides)
    tokens = torch.randint(0, prior.config.bins, (3, prior.config.n_ctx))
    expected = prior(tokens)
    backend = CountingBackend()
    prior.compile_step(backend=backend)
    for length in (prior.config.n_ctx, 13):  # a shorter window: other column lengths, one more graph
        logits = run_incremental(prior, tokens[:, :length])
        assert torch.allclose(logits, expected[:, :length], atol=ATOL, rtol=0)
    assert backend.graphs == 2  # one per cache shape, not one per position
    cache = prior.new_cache(rows=1, max_len=8)
    assert cache.fixed_shapes and not PriorCache(prior.config, 1, 1, 8, prior.device, torch.float32).fixed_shapes


def test_compiled_steps_follow_reorders_with_repeats_and_drops():
    """Rows repeated, dropped and the row count changing: compiled at full capacity, eager (with the
    same fixed-shape cache) below it; the result is still the teacher-forced pass of the histories."""
    prior = random_prior(seed=7)
    backend = CountingBackend()
    prior.compile_step(backend=backend)
    check_random_reorders(prior, rows=4, length=40, seed=1, full_every=3)
    assert backend.graphs == 1


def test_loading_our_own_files_and_configs(tmp_path):
    prior = random_prior(seed=3)
    tokens = torch.randint(0, prior.config.bins, (1, 20))
    prior.save(tmp_path / "prior.safetensors")
    loaded = Prior.from_checkpoint(tmp_path / "prior.safetensors")
    assert loaded.config == prior.config
    assert loaded.prior.x_out.weight is loaded.prior.x_emb.weight
    assert torch.equal(loaded(tokens), prior(tokens))

    torch.save(prior.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no hyper-parameters"):
        Prior.from_checkpoint(tmp_path / "plain.pt")
    assert torch.equal(Prior.from_checkpoint(tmp_path / "plain.pt", prior.config)(tokens), prior(tokens))
    with pytest.raises(CheckpointError, match="wrong shape"):
        Prior.from_checkpoint(tmp_path / "plain.pt", PriorConfig(**{**SMALL, "l_bins": 32}))


def test_unsupported_settings_and_misuse_are_rejected():
    with pytest.raises(ValueError, match="attn_order 0 is not supported"):
        PriorConfig(**{**SMALL, "attn_order": 0})
    with pytest.raises(ValueError, match="multiple of blocks"):
        PriorConfig(**{**SMALL, "blocks": 5})
    with pytest.raises(ValueError, match="pos_init"):
        PriorConfig.from_hps({**SMALL, "pos_init": True})
    prior = random_prior()
    with pytest.raises(ValueError, match="exceeds"):
        prior.new_cache(rows=1, max_len=prior.config.n_ctx + 1)
    cache = prior.new_cache(rows=2, max_len=2)
    prior.step(cache, None)
    with pytest.raises(ValueError, match="shape"):
        prior.step(cache, torch.zeros(3, dtype=torch.long))
    with pytest.raises(IndexError, match="out of range"):
        cache.reorder(torch.tensor([2]))
    with pytest.raises(ValueError, match="entries"):
        cache.reorder(torch.tensor([0, 1, 0]))
    prior.step(cache, torch.zeros(2, dtype=torch.long))
    with pytest.raises(IndexError, match="full"):
        prior.step(cache, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_device_and_precision_matches_the_reference(prior_reference, device, dtype):
    """The same step code on CPU and CUDA. Half precision is off by about one unit of its last
    place at the logits' scale (measured: float16 0.018 on a CPU, bfloat16 0.17 on a CPU and 0.18
    on an H200, the logits up to 20); the bound allows two."""
    prior = Prior.from_checkpoint(jukebox_fixture("prior.pth.tar"), device=device, dtype=dtype)
    logits = run_incremental(prior, torch.from_numpy(prior_reference["tokens"]).to(device)).cpu()
    reference = prior_reference["inc_logits"]
    tolerance = ATOL if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * np.abs(reference).max()
    assert np.abs(logits.numpy() - reference).max() <= tolerance


@CUDA
def test_compiled_cuda_step_replays_as_the_eager_one(prior_reference):
    """``reduce-overhead``: the step replayed as a CUDA graph, its caches updated in place, and the
    logits of every step still readable after later steps (the next replay overwrites its outputs)."""
    prior = Prior.from_checkpoint(jukebox_fixture("prior.pth.tar"), device="cuda").compile_step()
    logits = run_incremental(prior, torch.from_numpy(prior_reference["tokens"]).cuda()).cpu()
    assert np.abs(logits.numpy() - prior_reference["inc_logits"]).max() <= ATOL


def test_cache_size_is_known_before_allocating():
    prior = random_prior()
    for max_len in (5, 12, 30, 48):
        for dtype in (torch.float32, torch.float16):
            prior.set_compute_dtype(dtype)
            cache = prior.new_cache(rows=1, max_len=max_len)
            assert PriorCache.bytes_per_row(prior.config, max_len, dtype) == cache.nbytes()
