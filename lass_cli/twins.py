"""Two priors of one config stepped as one computation: the search's drums and bass priors.

A model's two priors usually share a config, and in every sampler their caches follow the same
rows (beam search reorders both by one index). At the embedded model's size (width 192, 6 layers,
140 rows) a step is a few hundred small operations, whose per-call cost is a large part of it. Stepped
as twins, the two priors' weights are stacked, so each product is one batched product for both
(faster than two MKL-packed products at these shapes), and one cache holds both priors' keys side by
side, so where keys lie, which rows share them (:meth:`PriorCache._group`), their gather and the
attention are worked out and run once for both. The logits equal each prior's own step within
float32 rounding (the LayerNorms' scales are folded into the products that follow them).

Large priors are not stacked (the stack is a copy of the weights), nor wide ones: MKL's packed
products, which a batched product cannot use, outrun it from width 768 on (2 Xeon cores, two packed
products against one batched: 0.98x at width 512 and 40 rows, 1.13x at 768, 1.30x at 1024). Twins
of width 768 still stepped 12 % faster, of width 1024 19 % slower (``docs/benchmarks.md``). Those
step as :func:`lass_cli.search._both_priors` says.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .prior import GELU_SCALE, Prior, PriorCache, _attend_grouped, _attend_one, _block_output

WIDEST = 768  # the widest priors (prior_width) that step as twins


class _TwinLayer(NamedTuple):
    """One block of both priors, weights stacked (2, n_in, n_out) and biases (2, 1, n_out). The
    LayerNorms' scale and shift sit in the products after them (``norm(x) g W = norm0(x) (g W)``)
    and the GELU's 1.702 in the MLP's products, as in :class:`lass_cli.prior._StepLayer`."""

    kind: int
    eps: float
    scale: float
    qkv: tuple[torch.Tensor, torch.Tensor]
    attn_out: tuple[torch.Tensor, torch.Tensor]
    fc: tuple[torch.Tensor, torch.Tensor]
    mlp_out: tuple[torch.Tensor, torch.Tensor]


def _stacked(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    weights, biases = zip(*pairs)
    return torch.stack(weights), torch.stack(biases)[:, None]


def _after_norm(norm: torch.nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor, scale: float = 1.0) -> tuple:
    """``(norm(x) @ weight + bias) * scale`` as ``norm0(x) @ w + b``, norm0 without its affine part."""
    return (norm.weight[:, None] * weight * scale, (norm.bias @ weight + bias) * scale)


def can_step_as_twins(priors: tuple, limit: int) -> bool:
    """Whether two priors step as twins: both eager float32 :class:`Prior` of one config on one
    device, at most :data:`WIDEST` wide, each with fewer than ``limit`` bytes of weights."""
    first, second = priors
    if not (isinstance(first, Prior) and isinstance(second, Prior)) or first.config != second.config:
        return False
    if first.config.prior_width > WIDEST:
        return False
    same_place = first.device == second.device and first.compute_dtype == second.compute_dtype == torch.float32
    small = max(first.weight_bytes, second.weight_bytes) < limit
    return same_place and small and not (first.compiled or second.compiled)


class TwinPriors:
    """Both priors' step at once: ``new_cache`` and ``step(cache, previous)``, logits (2, rows, K).

    The weights are stacked when this is made: made per search, a weight changed afterwards is not
    seen (the search holds the priors unchanged)."""

    @torch.no_grad()
    def __init__(self, priors: tuple[Prior, Prior]) -> None:
        self.priors = priors
        self.config = priors[0].config
        self.n_state = self.config.n_state
        self._layers = [self._layer(blocks) for blocks in zip(*(p.prior.transformer._attn_mods for p in priors))]
        ars = [p.prior for p in priors]
        self._start = torch.stack([ar.start_token for ar in ars])  # (2, 1, width)
        self._embeddings = [ar.x_emb.weight for ar in ars]
        self._positions = torch.stack([ar.pos_emb.pos_emb for ar in ars], 1)  # (n_ctx, 2, width)
        self._out = torch.stack([ar.x_out.weight.t() for ar in ars])  # (2, width, K)

    @staticmethod
    def _layer(blocks: tuple) -> _TwinLayer:
        first = blocks[0]
        qkv = [_after_norm(b.ln_0, b.attn.c_attn.w, b.attn.c_attn.b) for b in blocks]
        fc = [_after_norm(b.ln_1, b.mlp.c_fc.w, b.mlp.c_fc.b, GELU_SCALE) for b in blocks]
        return _TwinLayer(
            first.attn.kind, first.ln_0.eps, first.res_scale, _stacked(qkv),
            _stacked([(b.attn.c_proj.w, b.attn.c_proj.b) for b in blocks]), _stacked(fc),
            _stacked([(b.mlp.c_proj.w / GELU_SCALE, b.mlp.c_proj.b) for b in blocks]),
        )  # fmt: skip

    def new_cache(self, rows: int, max_len: int | None = None, capacity: int | None = None) -> PriorCache:
        """One cache for both priors' keys (:class:`PriorCache` with two streams)."""
        first = self.priors[0]
        max_len = max_len or self.config.n_ctx
        return PriorCache(self.config, rows, capacity or rows, max_len, first.device, torch.float32, streams=2)

    @torch.inference_mode()
    def step(self, cache: PriorCache, previous: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Both priors' logits (2, rows, K) at position ``cache.t`` (:meth:`Prior.step` for each),
        then advance the cache; ``previous`` holds each prior's tokens at ``t - 1`` (ignored at 0)."""
        rows, t = cache.rows, cache.t
        if t >= cache.max_len:
            raise IndexError(f"cache is full at {cache.max_len} positions")
        if t == 0:
            x = self._start.expand(2, rows, -1)
        else:
            if previous is None or any(p is None or p.shape != (rows,) for p in previous):
                raise ValueError(f"previous tokens must be two tensors of shape ({rows},)")
            x = torch.stack([F.embedding(p.to(e.device), e) for p, e in zip(previous, self._embeddings)])
        x = x + self._positions[t][:, None]
        cache.begin_step()
        for index, layer in enumerate(self._layers):
            x = self._block(layer, index, x, cache)
        logits = torch.bmm(x, self._out)
        cache.t += 1
        return logits

    def _block(self, layer: _TwinLayer, index: int, x: torch.Tensor, cache: PriorCache) -> torch.Tensor:
        """One block of both priors: x (2, rows, width). Keys, values and queries are laid out
        [prior 1, prior 2] per row, so the priors' heads are the heads of one attention."""
        _, rows, width = x.shape
        n = self.n_state
        heads = 2 * self.config.heads
        qkv = torch.baddbmm(layer.qkv[1], F.layer_norm(x, (width,), eps=layer.eps), layer.qkv[0])
        kv = qkv[..., n:].view(2, rows, 2, n).permute(1, 2, 0, 3).reshape(rows, 4 * n)  # [k1 k2 v1 v2]
        context = cache.store(index, kv)
        fresh = True
        if context is None:  # previous-row layer in row 0: the projection's bias alone
            a, fresh = layer.attn_out[1].expand(2, rows, width), False
        else:
            q = qkv[..., :n].transpose(0, 1).reshape(rows, 2 * n)
            keys, values = context.chunk(2, dim=-1)
            groups = cache.groups.get(layer.kind)
            if groups is None:
                out = _attend_one(q, keys, values, heads)
            else:
                out = _attend_grouped(q, keys, values, heads, groups)
            a = torch.baddbmm(layer.attn_out[1], out.view(rows, 2, n).transpose(0, 1), layer.attn_out[0])
        h = a.add_(x) if fresh and layer.scale == 1.0 else x + a
        f = torch.baddbmm(layer.fc[1], F.layer_norm(h, (width,), eps=layer.eps), layer.fc[0])
        m = torch.baddbmm(layer.mlp_out[1], F.silu(f, inplace=True), layer.mlp_out[0])
        return _block_output(x, a, h, m, layer.scale, in_place=True)


__all__ = ["TwinPriors", "can_step_as_twins"]
