"""Jukebox-compatible autoregressive prior over one VQ-VAE level, with an incremental KV cache.

Mirrors what LASS builds from Jukebox (``SimplePrior`` wrapping ``ConditionalAutoregressive2D``,
hparam set ``small_prior``, no labels, top level): a learned start token, absolute position
embeddings, pre-LayerNorm blocks with factored attention (attn_order 2: row, column and
previous-row layers in turn) and an output projection tied to the token embedding.

Positions are laid out as ``blocks`` rows of ``block_ctx = n_ctx // blocks`` columns:
- row layers attend causally within the query's own row (block);
- column layers attend to the same column in every row up to the query's own, itself included;
- previous-row layers attend to the whole previous row (all zeros in row 0, so the layer adds only
  its output bias there).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernel
from .checkpoint import CheckpointError, load_strict, read_checkpoint, write_safetensors

ROW, COLUMN, PREVIOUS_ROW = 0, 1, 2


@dataclass(frozen=True)
class PriorConfig:
    """Hyper-parameters under their upstream Jukebox names; defaults are LASS's ``small_prior``.

    Args:
        n_ctx: positions of the position table (LASS forces 8192).
        prior_width, prior_depth: residual stream width and number of blocks.
        heads: attention heads; each gets ``m_attn * width / heads`` channels.
        attn_order: only 2 (factored row / column / previous-row attention) is supported.
        blocks: rows of the factored layout; ``n_ctx // blocks`` positions per row.
        m_attn, m_mlp: attention and MLP widths relative to ``prior_width``.
        res_scale: scale each block's update by ``1 / prior_depth`` (off in ``small_prior``).
        l_bins: vocabulary size K, the codebook size of the VQ-VAE below.
        level: the VQ-VAE level the prior models (the top, 2, in LASS).
    """

    n_ctx: int = 8192
    prior_width: int = 1024
    prior_depth: int = 48
    heads: int = 1
    attn_order: int = 2
    blocks: int = 64
    m_attn: float = 0.25
    m_mlp: float = 1.0
    res_scale: bool = False
    l_bins: int = 2048
    level: int = 2

    def __post_init__(self) -> None:
        if self.attn_order != 2:
            raise ValueError(
                f"attn_order {self.attn_order} is not supported: only attn_order 2 (factored "
                "row/column/previous-row attention, as the LASS priors use) is implemented"
            )
        if not self.blocks or self.n_ctx % self.blocks:
            raise ValueError(f"n_ctx {self.n_ctx} is not a multiple of blocks {self.blocks}")
        if self.n_state % self.heads:
            raise ValueError(f"attention width {self.n_state} is not divisible by {self.heads} heads")

    @classmethod
    def from_hps(cls, hps: dict[str, Any]) -> PriorConfig:
        """Build from an upstream hyper-parameter dict (prior and VQ-VAE sets merged, as Jukebox
        saves them); unrelated keys are ignored. A ``pos_init`` prior has another position table
        and is rejected."""
        if hps.get("pos_init"):
            raise ValueError("pos_init priors (factored position embeddings) are not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in hps.items() if k in names and v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def bins(self) -> int:
        return self.l_bins

    @property
    def block_ctx(self) -> int:
        return self.n_ctx // self.blocks

    @property
    def n_state(self) -> int:
        return int(self.m_attn * self.prior_width)

    def layer_kind(self, layer: int) -> int:
        return (ROW, COLUMN, PREVIOUS_ROW)[layer % 3]


_MKL_PACKED = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


@dataclass(frozen=True)
class _PackedWeight:
    """A float32 CPU weight packed for a step's products: in the panels of
    :mod:`lass_cli.cpu_kernel` (``panels``; any row count from 2 to its ``MAX_ROWS``), else in MKL's
    packed GEMM layout for products of exactly ``rows`` rows.

    A step multiplies a few dozen rows by every weight once, and a plain GEMM re-packs its weight
    on every call, which costs as much as the product at such row counts: packed once per search,
    1024 x 1024 products at 40 rows ran 1.7x faster on 2 Xeon cores, the full-size step 1.3x; the
    kernel's panels, which prefetch the weight while multiplying, 1.2-1.4x faster again where the
    weights come from memory (``docs/benchmarks.md``). The pack is a copy as large as the weight.
    ``source`` (data pointer and version counter) says which state of the weight it holds, so an
    in-place change (loading, training) makes it stale rather than wrong. ``scale``: the pack holds
    the weight times it (a step's MLP, :data:`GELU_SCALE`), which only the step plan uses."""

    rows: int
    source: tuple[int, int]
    packed: torch.Tensor
    scale: float = 1.0
    panels: bool = False

    @staticmethod
    def of(weight: torch.Tensor, rows: int, current: _PackedWeight | None, scale: float = 1.0) -> _PackedWeight | None:
        """The pack of ``weight`` (n_out, n_in) times ``scale`` for ``rows`` rows, ``current`` when it
        still is that; None where packing does not apply (one row, another device or dtype, neither
        the kernel nor MKL). One row stays with ``addmm``: two priors side by side, one thread each,
        stepped 8 % slower through the kernel there."""
        if rows < 2 or weight.device.type != "cpu" or weight.dtype != torch.float32:
            return None
        panels = rows <= cpu_kernel.MAX_ROWS and cpu_kernel.load() is not None
        if not panels and not _MKL_PACKED:
            return None
        source = _state(weight)
        if current is not None and (current.source, current.scale, current.panels) == (source, scale, panels):
            if current.rows == rows:
                return current
            if panels:  # panels serve any row count
                return dataclasses.replace(current, rows=rows)
        scaled = weight.contiguous() if scale == 1.0 else weight * scale
        if panels:
            return _PackedWeight(rows, source, cpu_kernel.pack(scaled.t()), scale, panels=True)
        return _PackedWeight(rows, source, torch.ops.mkl._mkl_reorder_linear_weight(scaled, rows), scale)

    def applies(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """The pack's product has no gradient: not where autograd is recording one; a scaled pack is
        not the weight's product."""
        differentiating = torch.is_grad_enabled() and weight.requires_grad
        rows = 2 <= x.shape[0] <= cpu_kernel.MAX_ROWS if self.panels else x.shape[0] == self.rows
        return rows and self.scale == 1.0 and not differentiating and self.source == _state(weight)

    def product(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ weight.T + bias`` for x (rows, n_in), weight (n_out, n_in) the packed one unscaled."""
        if self.panels:
            return cpu_kernel.product(x, self.packed, weight.shape[0], bias)
        return torch.ops.mkl._mkl_linear(x, self.packed, weight, bias, self.rows)


def _compiler_present(device: torch.device) -> bool:
    """Whether torch.compile's code generator finds its compiler: C++ for CPU kernels, C for the
    launchers of Triton's CUDA kernels ($CXX / $CC first, as both look there)."""
    names = cpu_kernel.C_COMPILER if device.type == "cuda" else ("CXX", "c++", "g++", "clang++")
    return cpu_kernel.find_compiler(*names) is not None


def _state(weight: torch.Tensor) -> tuple[int, int]:
    """Where a weight lies and how often it was changed in place (inference tensors keep no count)."""
    return weight.data_ptr(), 0 if weight.is_inference() else weight._version


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: _PackedWeight | None
) -> torch.Tensor:
    """``x @ weight.T + bias`` for x (rows, n_in), by the pack where it applies."""
    if pack is not None and pack.applies(x, weight):
        return pack.product(x, weight, bias)
    if bias is None:
        return F.linear(x, weight)
    # addmm adds the bias inside the product (one rounding), as the reference does in fp16.
    return torch.addmm(bias, x, weight.t())


class Conv1D(nn.Module):
    """Jukebox's projection ``x @ w + b`` with ``w`` stored (n_in, n_out), the transpose of Linear."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(n_in, n_out))
        self.b = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.w, std=0.02)
        self._pack: _PackedWeight | None = None

    def pack_for(self, rows: int, scale: float = 1.0) -> None:
        """Keep the weight (times ``scale``) packed for products of ``rows`` rows (where that applies)."""
        self._pack = _PackedWeight.of(self.w.t(), rows, self._pack, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a step's rows
            return _linear(x, self.w.t(), self.b, self._pack)
        out = _linear(x.reshape(-1, x.shape[-1]), self.w.t(), self.b, None)  # the full pass: never a pack
        return out.view(*x.shape[:-1], out.shape[-1])


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


GELU_SCALE = 1.702  # Jukebox's GELU: x * sigmoid(1.702 x)


def _quick_gelu(x: torch.Tensor, reuse: bool = False) -> torch.Tensor:
    """``reuse``: the sigmoid written into the scaled input's memory (not where autograd records:
    sigmoid keeps its output for the gradient); bitwise the same."""
    if reuse:
        return torch.mul(x, GELU_SCALE).sigmoid_().mul_(x)
    return x * torch.sigmoid(GELU_SCALE * x)


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = Conv1D(width, hidden)
        self.c_proj = Conv1D(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(_quick_gelu(self.c_fc(x)))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Softmax attention over the last two dims: (..., Lq, d) x (..., Lk, d) -> (..., Lq, d).

    Scores are ``(q @ k^T) / sqrt(d)`` in the working dtype, the softmax runs in float32, as in
    Jukebox. ``causal`` lets query i see keys ``<= i + (Lk - Lq)``.
    """
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
    w = torch.matmul(q, k.transpose(-1, -2)) * (scale * scale)
    w = w.float()
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=w.device).tril(lk - lq)
        w = w.masked_fill(~mask, -1e9)
    return torch.matmul(torch.softmax(w, dim=-1).to(v.dtype), v)


def _attend_one(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, heads: int, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`attend` for one query per row, q (rows, n_state) against keys and values (rows, L,
    n_state), by one fused ``scaled_dot_product_attention`` that reads each head's keys where they
    lie (the cache's gathered layout, no copy): 1.7-1.9x the per-head matmuls and softmax on CPU,
    equal to them within float rounding (softmax accumulated in float32). ``visible`` (L,) bool
    masks out the keys a fixed-length gather holds beyond what the query may see."""
    rows, length, width = keys.shape
    q = q.view(rows, heads, 1, width // heads)
    keys, values = (t.view(rows, length, heads, width // heads).transpose(1, 2) for t in (keys, values))
    mask = None if visible is None else visible.view(1, 1, 1, length)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask).view(rows, width)


class _Groups(NamedTuple):
    """Rows of one layer kind laid out ``count`` groups of ``size`` queries (:meth:`PriorCache._group`):
    row i is query ``place[i]`` of the padded layout, in group ``place[i] // size``; the padding's
    queries are computed and dropped. A group's rows share the history of the kind's first
    positions: its keys are those positions gathered once, then each query's own remaining
    positions side by side; ``mask`` (size, keys) says which keys each query sees (None: all,
    every position shared)."""

    place: torch.Tensor
    size: int
    count: int
    queries: torch.Tensor
    mask: torch.Tensor | None


def _attend_grouped(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, heads: int, groups: _Groups
) -> torch.Tensor:
    """:func:`_attend_one` where the rows of a group read one copy of their shared keys and values
    (groups.count, L, n_state): a group's queries stand on the query axis of one
    ``scaled_dot_product_attention`` call against the group's keys, each masked to what it may
    see. The keys are gathered and read once per group, not per row; the logits equal each row's
    alone within float rounding (the kernel sums another layout), not bitwise."""
    count, length, width = keys.shape
    dim = width // heads
    padded = groups.queries.index_copy_(0, groups.place, q).view(count, groups.size, heads, dim).transpose(1, 2)
    k, v = (t.view(count, length, heads, dim).transpose(1, 2) for t in (keys, values))
    out = F.scaled_dot_product_attention(padded, k, v, attn_mask=groups.mask)
    return out.transpose(1, 2).reshape(count * groups.size, width).index_select(0, groups.place)


class _FactoredAttention(nn.Module):
    def __init__(self, config: PriorConfig, kind: int) -> None:
        super().__init__()
        self.kind = kind
        self.heads = config.heads
        self.block_ctx = config.block_ctx
        self.c_attn = Conv1D(config.prior_width, 3 * config.n_state)
        self.c_proj = Conv1D(config.n_state, config.prior_width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(..., L, n_state) -> (..., heads, L, head_dim); heads are contiguous channel blocks."""
        *lead, length, width = x.shape
        return x.view(*lead, length, self.heads, width // self.heads).transpose(-2, -3)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        *lead, heads, length, dim = x.shape
        return x.transpose(-2, -3).reshape(*lead, length, heads * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher-forced pass; x is (batch, L, width) with L a multiple of block_ctx."""
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        batch, length, width = q.shape
        rows, cols = length // self.block_ctx, self.block_ctx
        q, k, v = (t.view(batch, rows, cols, width) for t in (q, k, v))
        if self.kind == ROW:
            out = self._merge(attend(self._split(q), self._split(k), self._split(v), causal=True))
        elif self.kind == COLUMN:
            q, k, v = (self._split(t.transpose(1, 2)) for t in (q, k, v))
            out = self._merge(attend(q, k, v, causal=True)).transpose(1, 2)
        else:
            k, v = (F.pad(t[:, :-1], (0, 0, 0, 0, 1, 0)) for t in (k, v))
            out = self._merge(attend(self._split(q), self._split(k), self._split(v), causal=False))
        return self.c_proj(out.reshape(batch, length, width))


class _ResAttnBlock(nn.Module):
    def __init__(self, config: PriorConfig, layer: int) -> None:
        super().__init__()
        width = config.prior_width
        # Definition order fixes the state_dict order, which follows the original.
        self.attn = _FactoredAttention(config, config.layer_kind(layer))
        self.ln_0 = _LayerNorm(width, eps=1e-5)
        self.mlp = _MLP(width, int(config.m_mlp * width))
        self.ln_1 = _LayerNorm(width, eps=1e-5)
        self.res_scale = 1.0 / config.prior_depth if config.res_scale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.ln_0(x))
        h = x + a
        return _block_output(x, a, h, self.mlp(self.ln_1(h)), self.res_scale)


def _block_output(
    x: torch.Tensor, a: torch.Tensor, h: torch.Tensor, m: torch.Tensor, scale: float, in_place: bool = False
) -> torch.Tensor:
    """A block's output from its input x, attention output a, their sum h and the MLP's output m.
    ``in_place``: into m (a step's fresh product), the same sums in the same order, bitwise."""
    if scale == 1.0:
        return m.add_(h) if in_place else h + m
    return m.add_(a).mul_(scale).add_(x) if in_place else x + scale * (a + m)


class _StepLayer(NamedTuple):
    """One block as a step runs it: its parameters and projections looked up once per plan
    (:meth:`Prior._step_plan`), not through the modules at every step: a step is a few hundred
    operations, and the modules' calls, attribute lookups and per-product pack checks cost 10-15 %
    of it at 40 rows (the embedded priors and the full-size shape alike). A projection is
    (w (n_in, n_out), its transpose, bias, MKL pack or None).

    Where the MLP's projections are packed (CPU float32), ``gelu_folded``: the GELU's 1.702 sits in
    the packs, ``x sigmoid(1.702 x) W = silu(1.702 x) (W / 1.702)``, so that the step runs one
    in-place ``silu`` between the two products instead of three operations: after a product has
    streamed its weights through the cache, each kind of operation costs its code's fetch again
    (after a 4 MB product 19-43 us against 68-110 a layer; 2-3 ms of a full-size step at 40 rows).
    Equal within float32 rounding, not bitwise; packs are copies anyway, so no memory is added."""

    kind: int
    heads: int
    scale: float
    eps: float
    ln_0: tuple[torch.Tensor, torch.Tensor]
    ln_1: tuple[torch.Tensor, torch.Tensor]
    qkv: tuple
    attn_out: tuple
    fc: tuple
    mlp_out: tuple
    gelu_folded: bool

    @classmethod
    def of(cls, block: _ResAttnBlock, rows: int) -> _StepLayer:
        """``rows``: the row count to pack the projections for (0: none)."""

        def projection(module: Conv1D, scale: float = 1.0) -> tuple:
            if rows:
                module.pack_for(rows, scale)
            pack = module._pack if rows else None
            return module.w, module.w.t(), module.b, pack

        attn, mlp = block.attn, block.mlp
        fc = projection(mlp.c_fc, GELU_SCALE)
        folded = fc[3] is not None
        if folded:  # the bias scaled with the weight; the MLP's output packed with the inverse scale
            fc = (*fc[:2], mlp.c_fc.b * GELU_SCALE, fc[3])
        return cls(
            attn.kind, attn.heads, block.res_scale, block.ln_0.eps, (block.ln_0.weight, block.ln_0.bias),
            (block.ln_1.weight, block.ln_1.bias), projection(attn.c_attn), projection(attn.c_proj),
            fc, projection(mlp.c_proj, 1 / GELU_SCALE if folded else 1.0), folded,
        )  # fmt: skip


def _project(x: torch.Tensor, projection: tuple) -> torch.Tensor:
    """A step's ``x @ w + b``, x (rows, n_in): by the pack where the plan has one."""
    weight, transposed, bias, pack = projection
    if pack is None:
        return torch.addmm(bias, x, weight)
    return pack.product(x, transposed, bias)


def _norm(x: torch.Tensor, parameters: tuple[torch.Tensor, torch.Tensor], eps: float) -> torch.Tensor:
    """:class:`_LayerNorm` of a step's rows (float32 whatever the input dtype)."""
    weight, bias = parameters
    if x.dtype == torch.float32:
        return torch.layer_norm(x, weight.shape, weight, bias, eps)
    return torch.layer_norm(x.float(), weight.shape, weight, bias, eps).to(x.dtype)


def _block_step(layer: _StepLayer, index: int, x: torch.Tensor, cache: PriorCache) -> torch.Tensor:
    """One block's step for every cached row: x (rows, width), the block's ``index`` in the stack."""
    qkv = _project(_norm(x, layer.ln_0, layer.eps), layer.qkv)
    state = qkv.shape[1] // 3
    q, kv = qkv[:, :state], qkv[:, state:]
    fresh = True  # a is a product's new output, which the sums below may write into
    if cache.fixed_shapes:
        keys, values = cache.store_fixed(index, kv).chunk(2, dim=-1)
        if layer.kind == PREVIOUS_ROW:  # row 0: nothing to attend to (what was gathered is not read)
            out = torch.where(cache.previous_row_exists, _attend_one(q, keys, values, layer.heads), 0.0)
        else:
            out = _attend_one(q, keys, values, layer.heads, cache.visible[layer.kind])
        a = _project(out, layer.attn_out)
    else:
        context = cache.store(index, kv)
        if context is None:  # previous-row layer in row 0: attention to zeros is exactly zero,
            a, fresh = layer.attn_out[2].expand(len(q), -1), False  # its projection the bias alone
        else:
            keys, values = context.chunk(2, dim=-1)
            groups = cache.groups.get(layer.kind)
            if groups is None:
                out = _attend_one(q, keys, values, layer.heads)
            else:
                out = _attend_grouped(q, keys, values, layer.heads, groups)
            a = _project(out, layer.attn_out)
    # The elementwise work runs in place on the products' fresh outputs, bitwise as out of place:
    # after a product has streamed its weights through the cache, a new tensor's first write costs
    # about as much as a read from memory (1 % of a full-size step at 40 rows, measured).
    h = a.add_(x) if fresh and layer.scale == 1.0 else x + a  # a is read again unless the scale is 1
    f = _project(_norm(h, layer.ln_1, layer.eps), layer.fc)
    g = F.silu(f, inplace=True) if layer.gelu_folded else _quick_gelu(f, reuse=True)
    m = _project(g, layer.mlp_out)
    return _block_output(x, a, h, m, layer.scale, in_place=True)


class _Transformer(nn.Module):
    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self._attn_mods = nn.ModuleList(_ResAttnBlock(config, d) for d in range(config.prior_depth))


class _PositionEmbedding(nn.Module):
    def __init__(self, n_ctx: int, width: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(n_ctx, width))


class _Autoregressive(nn.Module):
    """Stand-in for Jukebox's ``ConditionalAutoregressive2D`` without conditioning."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        width = config.prior_width
        self.start_token = nn.Parameter(torch.zeros(1, width))
        self.x_emb = nn.Embedding(config.bins, width)
        self.pos_emb = _PositionEmbedding(config.n_ctx, width)
        self.transformer = _Transformer(config)
        self.x_out = nn.Linear(width, config.bins, bias=False)
        self.x_out.weight = self.x_emb.weight
        # Jukebox's initialisation scales; checkpoints overwrite them.
        nn.init.normal_(self.x_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.pos_emb, std=0.01)
        nn.init.normal_(self.start_token, std=0.01)


class PriorCache:
    """Keys and values one prior needs for ``rows`` sequences, for positions ``0 .. max_len - 1``.

    Beam search reorders rows at every step. Copying every cached key would cost far more than the
    step itself, so nothing is copied: position p's key of row i stays where row i wrote it, and
    ``ancestry[i, p]`` says which row slot wrote the ancestor of today's row i at position p. A reorder
    permutes that small integer table; each attention layer gathers its keys through it.

    Only what factored attention reads is kept, per kind one tensor
    ``(layers, kept positions, capacity, 2 * n_state)`` (key and value side by side): row layers a ring
    of one row (``block_ctx`` positions), previous-row layers a ring of two rows, column layers every
    position up to ``max_len``. With ``streams`` = 2 the cache serves two priors of the config, their
    keys and values side by side (:mod:`lass_cli.twins`).

    Until the first reorder (a sampler that never reorders: every row wrote every key it reads, in
    its own slot) the layers read their keys where they lie, a strided view of the store, with no
    gather: on 2 Xeon cores attention over such a view took 0.37-0.65x the time of the gather and
    attention (``docs/benchmarks.md``).

    With ``fixed_shapes`` every step gathers the same number of keys per kind (a whole row, every
    row's position of the column), masking those the query may not see yet, and reads the step
    from tensors rather than Python numbers: the same computation at every position, which
    ``torch.compile`` traces once and CUDA graphs replay (:meth:`Prior.compile_step`). Eager it
    costs more (twice the keys on average), so only compiled priors make such caches.
    """

    # Grouping rows (:meth:`_group`) costs 0.1-0.2 ms a kind and step on CPU, and a few operations
    # a layer; it pays where the layers of the kind together spare more bytes of keys than the
    # device moves in that time. On 2 Xeon cores (10-25 GB/s) the embedded priors (2 layers a kind,
    # 2-12 MB of keys a kind and step at 40-128 rows) ran no faster grouped, the full-size prior's
    # 40 rows (16 layers, 100-160 MB spared) 5-10 % faster (docs/benchmarks.md). Elsewhere an
    # estimate from a GPU's 5 us a launch at 2-3 TB/s, not measured.
    grouping_pays_from = {"cpu": 16 << 20, "other": 512 << 20}

    def __init__(
        self, config: PriorConfig, rows: int, capacity: int, max_len: int, device: torch.device, dtype: torch.dtype,
        fixed_shapes: bool = False, streams: int = 1,
    ) -> None:  # fmt: skip
        if max_len > config.n_ctx:
            raise ValueError(f"max_len {max_len} exceeds the prior's context of {config.n_ctx}")
        if not 0 < rows <= capacity:
            raise ValueError(f"rows {rows} must be between 1 and capacity {capacity}")
        self.rows, self.capacity, self.max_len, self.t = rows, capacity, max_len, 0
        self.block_ctx = bc = config.block_ctx
        kinds = [config.layer_kind(d) for d in range(config.prior_depth)]
        self._kind = kinds
        self._layers = {kind: kinds.count(kind) for kind in (ROW, COLUMN, PREVIOUS_ROW)}
        self._slot = [kinds[:d].count(kind) for d, kind in enumerate(kinds)]
        # Rings never wrap below max_len, so shorter contexts keep fewer positions.
        self._kept = {ROW: min(bc, max_len), PREVIOUS_ROW: min(2 * bc, max_len), COLUMN: max_len}
        longest = {ROW: bc, PREVIOUS_ROW: bc, COLUMN: -(-max_len // bc)}
        # ``streams`` priors of this config (:mod:`lass_cli.twins`) keep their keys side by side,
        # all keys then all values: [k_1 .. k_n, v_1 .. v_n] a position.
        state = streams * config.n_state
        width = 2 * state
        self._key_bytes = width * torch.finfo(dtype).bits // 8  # a position's key and value
        # One flat tensor per kind (what a compiled step writes into in place) and its (layers, kept,
        # capacity) view. Uninitialised where a position is always written before a row reads it;
        # zeros with fixed shapes, whose masked keys are read (garbage could be NaN, which a mask
        # does not remove from a product).
        new = torch.zeros if fixed_shapes else torch.empty
        self._flat_stores = {
            kind: new(kinds.count(kind) * kept * capacity, width, device=device, dtype=dtype)
            for kind, kept in self._kept.items()
        }
        self._stores = {
            kind: flat.view(kinds.count(kind), self._kept[kind], capacity, width)
            for kind, flat in self._flat_stores.items()
        }
        self._ancestry = torch.zeros(capacity, max_len, dtype=torch.long, device=device)
        self._spare_ancestry = torch.empty_like(self._ancestry)
        self._rows_arange = torch.arange(capacity, device=device)
        self._flat_index: dict[int, torch.Tensor | None] = {}
        self.groups: dict[int, _Groups | None] = {}  # per kind, this step's (:meth:`_group`)
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}
        self.fixed_shapes = fixed_shapes
        if fixed_shapes:  # what a step reads, at fixed addresses (CUDA graphs replay them)
            self._offsets = {kind: torch.arange(n, device=device) for kind, n in longest.items()}
            self._fixed_index = {kind: torch.zeros(capacity * n, dtype=torch.long, device=device)
                                 for kind, n in longest.items()}  # fmt: skip
            self._write = {kind: torch.zeros(capacity, dtype=torch.long, device=device) for kind in longest}
            self.visible = {kind: torch.zeros(longest[kind], dtype=torch.bool, device=device) for kind in (ROW, COLUMN)}
            self.previous_row_exists = torch.zeros((), dtype=torch.bool, device=device)
            self._gathered, self._index_buffers = {}, {}
            self._grouped_queries = torch.empty(0, device=device, dtype=dtype)
        else:
            self._gathered = {
                kind: torch.empty(capacity * longest[kind], width, device=device, dtype=dtype) for kind in self._kept
            }
            # Made once, filled every step (:meth:`begin_step`): where the keys a kind reads lie (ring
            # offset plus writing slot). Position t's keys go to rows ``_write_at[kind]`` onwards of
            # each layer's flat store, one per slot.
            self._index_buffers = {
                kind: torch.empty(capacity * longest[kind], dtype=torch.long, device=device) for kind in self._kept
            }
            self._write_at: dict[int, int] = {}
            # Per kind, this step's positions in the ring while no row was ever reordered (:meth:`store`).
            self._in_place: dict[int, slice | None] = {}
            self.reordered = False
            self._grouped_queries = torch.zeros(2 * capacity, state, device=device, dtype=dtype)
            self._ring_offsets = {kind: torch.arange(n, device=device) * capacity for kind, n in self._kept.items()}
            self._layer_flat = [self._stores[kind][slot].view(-1, width) for kind, slot in zip(kinds, self._slot)]

    def step_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step reads or writes besides the weights (for ``mark_static_address``)."""
        stores = list(self._flat_stores.values())
        if not self.fixed_shapes:
            return stores
        return [*stores, *self._fixed_index.values(), *self._write.values(), *self.visible.values(),
                self.previous_row_exists]  # fmt: skip

    @staticmethod
    def bytes_per_row(config: PriorConfig, max_len: int, dtype: torch.dtype) -> int:
        """Memory one row of a cache takes (keys, values, gather buffers and their indices, grouped
        queries, ancestry)."""
        bc = config.block_ctx
        kinds = [config.layer_kind(d) for d in range(config.prior_depth)]
        kept = {ROW: min(bc, max_len), PREVIOUS_ROW: min(2 * bc, max_len), COLUMN: max_len}
        longest = {ROW: bc, PREVIOUS_ROW: bc, COLUMN: -(-max_len // bc)}
        positions = sum(kinds.count(k) * kept[k] + longest[k] for k in kept) + 1  # + grouped queries (2 a row)
        # int64: gather indices, the rows' numbers, ancestry and its spare
        indices = sum(longest.values()) + 1 + 2 * max_len
        return positions * 2 * config.n_state * torch.finfo(dtype).bits // 8 + indices * 8

    def nbytes(self) -> int:
        tensors = [*self.step_tensors(), *self._gathered.values(), *self._index_buffers.values(),
                   self._grouped_queries, self._rows_arange, self._ancestry, self._spare_ancestry]  # fmt: skip
        return sum(t.numel() * t.element_size() for t in tensors)

    def begin_step(self) -> None:
        """Work out, once per step, where position ``t``'s keys go and where those each kind reads lie."""
        t, bc, rows = self.t, self.block_ctx, self.rows
        row, col = divmod(t, bc)
        self._ancestry[:rows, t] = self._rows_arange[:rows]
        if self.fixed_shapes:
            return self._begin_fixed_step(row, col)
        spans = {ROW: (row * bc, t + 1, 1), COLUMN: (col, t + 1, bc), PREVIOUS_ROW: ((row - 1) * bc, row * bc, 1)}
        for kind, (start, stop, stride) in spans.items():
            kept = self._kept[kind]
            self._write_at[kind] = (t % kept) * self.capacity
            self._in_place[kind] = None
            if kind == PREVIOUS_ROW and not row:
                self._flat_index[kind] = self.groups[kind] = None
                continue
            # A kind's positions never wrap around its ring: their ring offsets are one strided slice.
            first, length = start % kept, len(range(start, stop, stride))
            positions = slice(first, first + (length - 1) * stride + 1, stride)
            if not self.reordered:  # row i wrote every key it reads, into slot i
                self._in_place[kind] = positions
                self._flat_index[kind] = self.groups[kind] = None
                continue
            ring = self._ring_offsets[kind][positions]
            ancestry = self._ancestry[:rows, start:stop:stride]
            self.groups[kind], index = self._group(ancestry, ring, self._index_buffers[kind], self._layers[kind])
            if index is None:
                index = self._index_buffers[kind][: rows * length].view(rows, length)
                torch.add(ancestry, ring, out=index)
            self._flat_index[kind] = index

    def _group(
        self, ancestry: torch.Tensor, ring: torch.Tensor, buffer: torch.Tensor, layers: int
    ) -> tuple[_Groups | None, torch.Tensor | None]:
        """Group the rows that share the history of a kind's first positions, so that a layer gathers
        and reads those keys once per group (:func:`_attend_grouped`); returns the groups and where
        the keys each group reads lie (count, keys), written into ``buffer``, or (None, None) to leave
        every row on its own. ``ancestry`` (rows, L) holds, for each row and position the kind
        reads, the slot that wrote it; ``ring`` (L,) the positions' offsets in the store; ``layers``
        how many layers read them.

        Two rows share every position up to p exactly when one slot wrote p for both (they descend
        from the row that was there then): the beams of a window mostly do, except the last few
        positions (in a real search at 40 rows, 4-6 histories; previous-row layers read a whole
        finished row). The first ``shared`` positions are chosen to gather the fewest keys, counting
        each group's own positions for every padded query. Groups larger than ``size`` are cut in
        several: ``size`` is the largest that keeps the padded layout within twice the rows (a
        gathered group costs several times a padded query), at least the mean group size, which
        always does. Rows stay alone where grouping would spare the layers fewer bytes of keys than
        :attr:`grouping_pays_from`."""
        rows, length = ancestry.shape
        least = self.grouping_pays_from.get(ancestry.device.type, self.grouping_pays_from["other"])
        key_bytes = layers * self._key_bytes  # a position's keys and values in every such layer
        if rows * length * key_bytes < least:
            return None, None
        ordered = ancestry.sort(dim=0).values
        histories = (ordered[1:] != ordered[:-1]).sum(0).add_(1)  # distinct histories up to each position
        first = torch.arange(1, length + 1, device=ancestry.device)
        shared = int((histories * first + 2 * rows * (length - first)).argmin()) + 1
        members: dict[int, list[int]] = {}
        for i, writer in enumerate(ancestry[:, shared - 1].tolist()):
            members.setdefault(writer, []).append(i)
        mean, sizes = rows // len(members), [len(group) for group in members.values()]
        if mean < 2:
            return None, None
        size = next(s for s in range(max(sizes), mean - 1, -1) if s * sum(-(-n // s) for n in sizes) <= 2 * rows)
        chunks = [group[j : j + size] for group in members.values() for j in range(0, len(group), size)]
        own = length - shared
        keys = shared + size * own
        if (rows * length - len(chunks) * keys) * key_bytes < least:
            return None, None
        place = [0] * rows
        for c, chunk in enumerate(chunks):
            for k, i in enumerate(chunk):
                place[i] = c * size + k
        device = ancestry.device
        index = buffer[: len(chunks) * keys].view(len(chunks), keys)
        leaders = torch.tensor([chunk[0] for chunk in chunks], device=device)
        torch.add(ancestry[leaders, :shared], ring[:shared], out=index[:, :shared])
        if own:  # each query's own positions; the padding's are its group's first row's
            padded = torch.tensor([chunk[k] if k < len(chunk) else chunk[0] for chunk in chunks for k in range(size)],
                                  device=device)  # fmt: skip
            own_index = index[:, shared:].view(len(chunks), size, own)
            torch.add(ancestry[padded, shared:].view(len(chunks), size, own), ring[shared:], out=own_index)
        queries = self._grouped_queries[: len(chunks) * size]
        groups = _Groups(torch.tensor(place, device=device), size, len(chunks), queries, self._mask(size, shared, own))
        return groups, index

    def _mask(self, size: int, shared: int, own: int) -> torch.Tensor | None:
        """Which of a group's keys each of its ``size`` queries sees: the ``shared`` first ones and
        its own ``own`` (None where there are none)."""
        if not own:
            return None
        mask = self._masks.get((size, shared, own))
        if mask is None:
            key = torch.arange(shared + size * own, device=self._ancestry.device)
            owner = (key - shared).div(own, rounding_mode="floor")
            mask = (key < shared) | (owner == torch.arange(size, device=key.device)[:, None])
            if len(self._masks) >= 64:  # a few layouts recur; keep memory flat over a long search
                self._masks.clear()
            self._masks[size, shared, own] = mask
        return mask

    def _begin_fixed_step(self, row: int, col: int) -> None:
        """:meth:`begin_step` with a whole row's positions for row and previous-row layers and every
        row's for column layers, those not yet written masked (their index is merely in range)."""
        bc, rows, last = self.block_ctx, self.rows, self.max_len - 1
        starts = {ROW: (row * bc, 1), COLUMN: (col, bc), PREVIOUS_ROW: (max(row - 1, 0) * bc, 1)}
        for kind, (start, stride) in starts.items():
            offsets = self._offsets[kind]
            pos = (start + stride * offsets).clamp_(max=last)
            flat = (pos % self._kept[kind]) * self.capacity + self._ancestry[:rows, pos]
            self._fixed_index[kind][: flat.numel()].copy_(flat.view(-1))
            torch.add(self._rows_arange, (self.t % self._kept[kind]) * self.capacity, out=self._write[kind])
        self.visible[ROW].copy_(self._offsets[ROW] <= col)
        self.visible[COLUMN].copy_(self._offsets[COLUMN] <= row)
        self.previous_row_exists.fill_(row > 0)

    def store_fixed(self, layer: int, kv: torch.Tensor) -> torch.Tensor:
        """:meth:`store` for ``fixed_shapes``: (rows, kind's fixed length, 2 * n_state) gathered,
        of which the kind's ``visible`` positions (previous-row layers: all, from row 1) count."""
        kind, rows = self._kind[layer], self.rows
        flat, start = self._flat_stores[kind], self._slot[layer] * self._kept[kind] * self.capacity
        flat.index_copy_(0, self._write[kind][:rows] + start, kv)  # the whole flat tensor: updated in place
        length = len(self._offsets[kind])
        index = self._fixed_index[kind][: rows * length] + start
        return flat.index_select(0, index).view(rows, length, flat.shape[-1])

    def store(self, layer: int, kv: torch.Tensor) -> torch.Tensor | None:
        """Write position ``t``'s keys and values (rows, 2 * n_state) of a layer and return what its
        queries attend to: (rows, L, 2 * n_state), a view of the store while no row was reordered;
        (groups, L, 2 * n_state) where the kind's rows are grouped (:attr:`groups`); None where that
        is nothing (row 0's previous row)."""
        kind, flat = self._kind[layer], self._layer_flat[layer]
        at = self._write_at[kind]
        flat[at : at + self.rows].copy_(kv)
        positions = self._in_place[kind]
        if positions is not None:  # (positions, rows, width) as stored, read without a copy
            return self._stores[kind][self._slot[layer], positions, : self.rows].transpose(0, 1)
        index = self._flat_index[kind]
        if index is None:
            return None
        out = self._gathered[kind][: index.numel()]
        torch.index_select(flat, 0, index.view(-1), out=out)
        return out.view(*index.shape, flat.shape[-1])

    def reorder(self, index: torch.Tensor) -> None:
        """Make row i continue old row ``index[i]``; rows may repeat or vanish, the count change."""
        index = index.to(device=self._ancestry.device, dtype=torch.long)
        if index.dim() != 1 or not 0 < len(index) <= self.capacity:
            raise ValueError(f"reorder index must be 1-D with 1..{self.capacity} entries")
        if int(index.min()) < 0 or int(index.max()) >= self.rows:
            raise IndexError(f"reorder index out of range for {self.rows} rows")
        torch.index_select(self._ancestry[: self.rows], 0, index, out=self._spare_ancestry[: len(index)])
        self._ancestry, self._spare_ancestry = self._spare_ancestry, self._ancestry
        self.rows = len(index)
        self.reordered = True


class Prior(nn.Module):
    """Stand-in for Jukebox's ``SimplePrior``: its one submodule ``prior`` gives the original keys.

    ``forward(tokens)`` is the teacher-forced pass; ``new_cache`` and ``step`` the incremental one.
    Conv1D projections run in ``compute_dtype`` (float32 on CPU, float16 or bfloat16 on CUDA);
    embeddings, LayerNorms, softmax and the output projection stay float32, as in Jukebox's fp16 mode.
    """

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        self.prior = _Autoregressive(config)
        self._projections = [module for module in self.modules() if isinstance(module, Conv1D)]
        self._step_rows = self._packed_rows = 0
        self._plan: list[_StepLayer] = []
        self._plan_key: tuple = ()
        self._output_pack: _PackedWeight | None = None
        self._compiled: Any = None
        self._graph_outputs = False  # the compiled step's outputs live in a CUDA graph's memory
        self.eval()

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.prior.transformer._attn_mods[0].attn.c_attn.w.dtype

    @property
    def device(self) -> torch.device:
        return self.prior.x_emb.weight.device

    @property
    def compiled(self) -> bool:
        """Whether the step runs through ``torch.compile`` (:meth:`compile_step`)."""
        return self._compiled is not None

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights, all of which a step reads (tied ones once)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def set_compute_dtype(self, dtype: torch.dtype) -> Prior:
        """Cast the projections (the bulk of the weights) to ``dtype``; the rest stays float32."""
        self._forget_plan()
        for module in self._projections:
            module.to(dtype)
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> Prior:
        """``to``, ``cuda``, ``half``...: the step plan and packs would keep the old tensors alive."""
        self._forget_plan()
        return super()._apply(fn, recurse)

    def _forget_plan(self) -> None:
        self._plan, self._plan_key, self._output_pack, self._packed_rows = [], (), None, 0
        for module in self._projections:
            module._pack = None

    def _blocks(self) -> nn.ModuleList:
        return self.prior.transformer._attn_mods

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a step's rows (rows, width), by the pack, or of the full pass (batch, S, width)."""
        pack = self._output_pack if x.dim() == 2 else None
        out = _linear(x.float().reshape(-1, x.shape[-1]), self.prior.x_out.weight, None, pack)
        return out.view(*x.shape[:-1], out.shape[-1])

    def _step_plan(self, rows: int) -> None:
        """Make the plan of a step of ``rows`` rows (:class:`_StepLayer`), anew only when the row
        count to pack for or a weight of the products changed. The weights are packed for ``rows``
        once a second step in a row has that many (the first step of a beam search has one row per
        window, the rest B per window), and used for that many again whenever they are packed. A
        weight changed in place (loading, training) is noticed at the next step: the data pointers
        and version counters of the products' weights are compared every step (45 us at full size),
        and it is packed again. Parameters replaced by new tensor objects rather than loaded in
        place are seen from the next cache on (:meth:`new_cache` forgets the plan)."""
        packing = rows if rows in (self._step_rows, self._packed_rows) and self._compiled is None else 0
        self._step_rows = rows
        weights = (*(module.w for module in self._projections), self.prior.x_out.weight)
        key = (packing, *(_state(weight) for weight in weights))
        if key == self._plan_key:
            return
        self._plan = []  # the old plan's packs go as the new ones come, not after
        self._plan = [_StepLayer.of(block, packing) for block in self._blocks()]
        if packing:
            self._output_pack = _PackedWeight.of(self.prior.x_out.weight, rows, self._output_pack)
            self._packed_rows = rows
        self._plan_key = key

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: (batch, S) long -> (batch, S, K) float32; row s scores token s
        given tokens < s (row 0 sees only the start token). S may be anything up to n_ctx.
        Differentiable (training uses it); wrap it in ``torch.inference_mode()`` to only score."""
        batch, length = tokens.shape
        if not 0 < length <= self.config.n_ctx:
            raise ValueError(f"sequence length {length} must be in 1..{self.config.n_ctx}")
        ar = self.prior
        x = ar.x_emb(tokens.to(self.device))
        x = torch.cat((ar.start_token.expand(batch, 1, -1), x[:, :-1]), dim=1)
        x = x + ar.pos_emb.pos_emb[:length]
        padded = -(-length // self.config.block_ctx) * self.config.block_ctx
        x = F.pad(x, (0, 0, 0, padded - length)).to(self.compute_dtype)
        for block in self._blocks():
            x = block(x)
        return self._output(x[:, :length])

    def new_cache(self, rows: int, max_len: int | None = None, capacity: int | None = None) -> PriorCache:
        """An empty cache for ``rows`` sequences (up to ``capacity`` after reorders) of up to
        ``max_len`` tokens (default n_ctx); with fixed shapes once the prior is compiled."""
        cache = PriorCache(
            self.config, rows, capacity or rows, max_len or self.config.n_ctx, self.device, self.compute_dtype,
            fixed_shapes=self._compiled is not None,
        )  # fmt: skip
        self._plan_key = ()  # the plan is made again (its packs kept while they hold)
        if self._compiled is not None:
            for tensor in cache.step_tensors():  # updated in place: CUDA graphs may keep their addresses
                torch._dynamo.mark_static_address(tensor)
        return cache

    def compile_step(self, mode: str | None = None, backend: Any = "inductor") -> Prior:
        """Run the step's layers through ``torch.compile`` from now on (``lass separate --compile``).

        Caches made after this have fixed shapes (:class:`PriorCache`), so one graph serves every
        position: traced once per row count (the first beam-search step, one row per window, runs
        uncompiled). ``mode`` defaults to ``reduce-overhead`` on CUDA, which replays the step as a
        CUDA graph (the per-kernel launch cost is most of a step at the embedded model's size), and
        to the default on a CPU. The compile takes tens of seconds, once per process."""
        if backend == "inductor" and not _compiler_present(self.device):
            kind = "C" if self.device.type == "cuda" else "C++"
            raise ValueError(f"--compile needs a {kind} compiler on this machine (gcc or clang) and none was found")
        if mode is None and self.device.type == "cuda":
            mode = "reduce-overhead"
        self._forget_plan()
        self._compiled = torch.compile(self._layers, mode=mode, backend=backend, fullgraph=True, dynamic=False)
        self._graph_outputs = self.device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
        return self

    def _layers(self, x: torch.Tensor, cache: PriorCache) -> torch.Tensor:
        """The transformer and output projection of one step: (rows, width) -> logits (rows, K)."""
        for index, layer in enumerate(self._plan):
            x = _block_step(layer, index, x, cache)
        return self._output(x)

    @torch.inference_mode()
    def step(self, cache: PriorCache, previous: torch.Tensor | None) -> torch.Tensor:
        """Logits (rows, K) float32 of the token at position ``cache.t``, then advance the cache.

        ``previous`` (rows,) holds each row's token at ``t - 1``; at ``t = 0`` it is ignored and the
        start token is used.
        """
        if cache.t >= cache.max_len:
            raise IndexError(f"cache is full at {cache.max_len} positions")
        ar = self.prior
        if cache.t == 0:
            x = ar.start_token.expand(cache.rows, -1)
        else:
            if previous is None or previous.shape != (cache.rows,):
                raise ValueError(f"previous tokens must have shape ({cache.rows},)")
            x = ar.x_emb(previous.to(self.device))
        x = (x + ar.pos_emb.pos_emb[cache.t]).to(self.compute_dtype)
        self._step_plan(cache.rows)
        cache.begin_step()
        compiled = self._compiled is not None and cache.fixed_shapes and cache.rows == cache.capacity
        logits = self._compiled(x.contiguous(), cache) if compiled else self._layers(x, cache)
        if compiled and self._graph_outputs:  # the next replay overwrites them (seen on an H200)
            logits = logits.clone()
        cache.t += 1
        return logits

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: PriorConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Prior:
        """Load an original prior checkpoint (keys ``prior.*``), a plain state_dict or safetensors.

        The config comes from the argument or the file's saved hyper-parameters.
        """
        state, hps = read_checkpoint(path)
        if config is None:
            if not hps:
                raise CheckpointError(f"{path} carries no hyper-parameters: pass a PriorConfig")
            config = PriorConfig.from_hps(hps)
        state = dict(state)
        if "prior.x_out.weight" not in state and "prior.x_emb.weight" in state:
            state["prior.x_out.weight"] = state["prior.x_emb.weight"]  # tied; saved once
        model = cls(config)
        load_strict(model, state, path)
        model.prior.x_out.weight = model.prior.x_emb.weight
        model.requires_grad_(False)  # a loaded prior scores; training builds its own
        return model.to(device).set_compute_dtype(dtype)

    def save(self, path: str | Path) -> None:
        """Write weights and config as safetensors (readable by ``from_checkpoint``)."""
        write_safetensors(path, self.state_dict(), self.config.to_dict(), kind="prior")


__all__ = ["Prior", "PriorCache", "PriorConfig", "attend"]
