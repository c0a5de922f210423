"""A TransformerStack decoding one position per step, with a preallocated ring-buffer cache.

The fused twin of `transformer.TransformerStack` for incremental generation: the same blocks
and the same arithmetic (RMSNorm, RoPE in apply_rotary's half-split form, SDPA, SwiGLU), one
position per row per step. Exactness tests pin it to the stack's own forward
(tests/test_blt_generate.py).

Weights: a small stack gets q|k|v and w1|w3 fused into one matmul each and laid out for
`x @ W` (fewer, larger matmuls per step: ~25% faster than F.linear for a few rows here). A stack
whose weights exceed FUSE_MAX_BYTES computes with its own parameters, never copying them: at
that size each step streams the weights from memory anyway, and a copy would double the memory
of a released model.

- per_row=False: every step advances all B rows to the same next position, so the valid keys
  are the first min(count, capacity) slots and attention needs no mask.
- per_row=True: a step advances only the given rows, each at its own position; a mask of filled
  slots per row keeps rows apart. Optionally each key carries a `start` (the byte offset of the
  patch it stands for, for a BLT latent): a query then sees only keys whose start lies fewer than
  `start_span` bytes before its own (`latent.byte_span_mask`, the rule of the latent's forward).
With capacity = window the ring holds exactly the last `window` positions of a row.
`prefill` hands TransformerStack.forward a cache for one pass over a prompt that leaves the
ring as that many steps would. `step`'s before_layer / after_layer hooks are the stack's own;
a Memory+ block's feed-forward runs as its module does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from blt.models.masks import attention_mask
from blt.models.transformer import TransformerStack

FUSE_MAX_BYTES = 128 << 20  # stacks up to this many bytes of weights get fused copies


def transposed(*weights: torch.Tensor) -> torch.Tensor:
    """Linear weights (out, in), stacked along out, as one contiguous (in, sum of out) matrix."""
    return torch.cat(weights).t().contiguous()


class _Fused:
    """One block's weights, fused and transposed: x @ W (a memory block's feed-forward is its own)."""

    def __init__(self, block):
        a, f = block.attn, block.ffn
        self.qkv = transposed(a.wq.weight, a.wk.weight, a.wv.weight)
        self.o = transposed(a.wo.weight)
        if not block.has_memory:
            self.w13, self.w2 = transposed(f.w1.weight, f.w3.weight), transposed(f.w2.weight)

    def project_qkv(self, x):
        return torch.mm(x, self.qkv)

    def out(self, x, y):
        return torch.addmm(x, y, self.o)

    def gate_up(self, x):
        return torch.mm(x, self.w13).chunk(2, dim=-1)

    def down(self, x, y):
        return torch.addmm(x, y, self.w2)


class _Shared:
    """One block's weights as the module holds them (no copy): F.linear."""

    def __init__(self, block):
        self.attn, self.ffn = block.attn, block.ffn

    def project_qkv(self, x):
        a = self.attn
        return torch.cat([F.linear(x, a.wq.weight), F.linear(x, a.wk.weight), F.linear(x, a.wv.weight)], -1)

    def out(self, x, y):
        return x + F.linear(y, self.attn.wo.weight)

    def gate_up(self, x):
        return F.linear(x, self.ffn.w1.weight), F.linear(x, self.ffn.w3.weight)

    def down(self, x, y):
        return x + F.linear(y, self.ffn.w2.weight)


class CachedStack:
    def __init__(self, stack: TransformerStack, batch: int, window: int, max_positions: int,
                 per_row: bool = False, start_span: int | None = None):
        cfg = stack.cfg
        ref = stack.layers[0].attn_norm.weight
        self.H, self.Hkv, self.Dh, self.eps = cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.norm_eps
        self.window, self.cap = window, max(1, min(window, max_positions))
        self.per_row, self.start_span = per_row, start_span
        size = sum(p.numel() * p.element_size() for p in stack.parameters())
        kind = _Fused if size <= FUSE_MAX_BYTES else _Shared
        self.layers = [(b.attn_norm.weight, b.ffn_norm.weight, kind(b), b.ffn if b.has_memory else None)
                       for b in stack.layers]
        self.values = None if stack.memory_values is None else stack.memory_values.weight
        self.norm = None if stack.norm is None else stack.norm.weight
        # slots are allocated as the rows fill them (doubling), so a cache sized for the worst
        # case (a patch per byte) costs what the positions actually seen need; zeros, not empty:
        # a masked slot still enters the products, and garbage may be NaN
        self.k = ref.new_zeros(cfg.n_layers, batch, self.Hkv, min(self.cap, 64), self.Dh)
        self.v = torch.zeros_like(self.k)
        # RoPE as x * C + roll(x, Dh/2) * S, which is apply_rotary's arithmetic term for term; rows
        # are computed as positions are reached (`_rope_upto`), never for max_positions up front
        self.inv_freq = stack.rotary.inv_freq
        self.rope_c = ref.new_zeros(0, self.Dh)  # (positions so far, Dh)
        self.rope_s = ref.new_zeros(0, self.Dh)
        self.count = 0  # positions seen (per_row=False); the most any row has seen (per_row)
        if per_row:
            self.row_count = torch.zeros(batch, dtype=torch.long, device=ref.device)
            self.filled = torch.zeros(batch, 1, 1, self.cap, dtype=torch.bool, device=ref.device)
            self.key_start = torch.zeros(batch, self.cap, dtype=torch.long, device=ref.device)

    def _rope_upto(self, n: int):
        """RoPE rows for positions < n at least (doubling): each row is the one a full table has."""
        have = self.rope_c.shape[0]
        if n <= have:
            return
        angles = torch.arange(have, max(n, 2 * have), device=self.inv_freq.device).float()[:, None] * self.inv_freq
        cos, sin = angles.cos(), angles.sin()  # (new, Dh/2)
        self.rope_c = torch.cat([self.rope_c, torch.cat([cos, cos], -1).to(self.rope_c.dtype)])  # (N, Dh)
        self.rope_s = torch.cat([self.rope_s, torch.cat([-sin, sin], -1).to(self.rope_s.dtype)])

    def _grow(self, slots: int):
        """Allocate at least `slots` slots (before the ring first wraps: order is kept)."""
        size = min(self.cap, max(slots, 2 * self.k.shape[3]))
        pad = (0, 0, 0, size - self.k.shape[3])
        self.k, self.v = F.pad(self.k, pad), F.pad(self.v, pad)

    def prefill(self, positions: torch.Tensor, starts: torch.Tensor | None = None) -> "PrefillCache":
        """The cache to hand TransformerStack.forward for one pass over the first positions
        (B, T) (-1 = padding; per_row stacks only), with their keys' starts (B, T) if any."""
        return PrefillCache(self, positions, starts)

    def _row_mask(self, rows: torch.Tensor, n_keys: int, start: torch.Tensor | None) -> torch.Tensor:
        mask = self.filled[rows, :, :, :n_keys]  # (n, 1, 1, S)
        if self.start_span is not None:
            near = (start[:, None] - self.key_start[rows, :n_keys]) < self.start_span  # (n, S)
            mask = mask & near[:, None, None]
        return mask

    def step(self, x: torch.Tensor, rows: torch.Tensor | None = None, start: torch.Tensor | None = None,
             before_layer=None, after_layer=None) -> torch.Tensor:
        """x (n, D): the next position of every row, or of `rows` (n,) when per_row, whose keys
        start at `start` (n,) when the stack has a start_span -> (n, D)"""
        n = x.shape[0]
        H, Hkv, Dh = self.H, self.Hkv, self.Dh
        gqa = H != Hkv
        if self.per_row:
            pos = self.row_count[rows]  # (n,)
            slot = pos % self.cap
            self.filled[rows, 0, 0, slot] = True
            if self.start_span is not None:
                self.key_start[rows, slot] = start
            self.count = max(self.count, int(pos.max()) + 1)
            if min(self.count, self.cap) > self.k.shape[3]:
                self._grow(self.count)
            self.row_count[rows] += 1
            n_keys = min(self.count, self.cap)
            subset = n != self.k.shape[1]
            mask = self._row_mask(rows, n_keys, start)
            self._rope_upto(self.count)
            rope_c, rope_s = self.rope_c[pos][:, None, None], self.rope_s[pos][:, None, None]  # (n, 1, 1, Dh)
        else:
            pos, slot = self.count, self.count % self.cap
            self.count += 1
            if min(self.count, self.cap) > self.k.shape[3]:
                self._grow(self.count)
            n_keys, mask = min(self.count, self.cap), None
            self._rope_upto(self.count)
            rope_c, rope_s = self.rope_c[pos], self.rope_s[pos]  # (Dh,)
        for layer, (w_an, w_fn, w, memory_ffn) in enumerate(self.layers):
            if before_layer is not None:
                x = before_layer(layer, x)
            qkv = w.project_qkv(F.rms_norm(x, (x.shape[-1],), w_an, self.eps))  # (n, (H+2Hkv)*Dh)
            qk = qkv[:, : (H + Hkv) * Dh].view(n, H + Hkv, 1, Dh)
            qk = torch.addcmul(qk * rope_c, qk.roll(Dh // 2, -1), rope_s)
            k, v = qk[:, H:, 0], qkv[:, (H + Hkv) * Dh :].view(n, Hkv, Dh)
            if self.per_row:
                self.k[layer, rows, :, slot] = k
                self.v[layer, rows, :, slot] = v
            else:
                self.k[layer, :, :, slot] = k
                self.v[layer, :, :, slot] = v
            keys, values = self.k[layer, :, :, :n_keys], self.v[layer, :, :, :n_keys]  # (B, Hkv, S, Dh)
            if self.per_row and subset:
                keys, values = keys.index_select(0, rows), values.index_select(0, rows)
            y = F.scaled_dot_product_attention(qk[:, :H], keys, values, attn_mask=mask, enable_gqa=gqa)
            x = w.out(x, y.view(n, H * Dh))
            normed = F.rms_norm(x, (x.shape[-1],), w_fn, self.eps)
            if memory_ffn is not None:
                x = x + memory_ffn(normed, self.values)
            else:
                gate, up = w.gate_up(normed)
                x = w.down(x, F.silu(gate) * up)
            if after_layer is not None:
                x = after_layer(layer, x)
        return x if self.norm is None else F.rms_norm(x, (x.shape[-1],), self.norm, self.eps)


class PrefillCache:
    """Plays a KVCache for TransformerStack.forward over the first positions (B, T) of a
    CachedStack: the pass gets the causal sliding-window mask of training (and the start rule),
    and the last `capacity` keys/values of each row land in the ring where steps would have put
    them."""

    def __init__(self, cache: CachedStack, positions: torch.Tensor, starts: torch.Tensor | None = None):
        self.cache, self.starts = cache, starts
        count = (positions >= 0).sum(1)  # (B,) positions per row
        keep = (positions >= 0) & (positions >= (count - cache.cap)[:, None])
        self.rows, self.cols = keep.nonzero(as_tuple=True)
        self.slots = positions[self.rows, self.cols] % cache.cap
        cache.count = int(count.max())
        if min(cache.count, cache.cap) > cache.k.shape[3]:
            cache._grow(cache.count)
        if cache.per_row:
            cache.row_count = count
            cache.filled[self.rows, 0, 0, self.slots] = True
            if cache.start_span is not None:
                cache.key_start[self.rows, self.slots] = starts[self.rows, self.cols]

    def begin(self, positions: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(positions, positions, self.cache.window)
        if self.cache.start_span is not None:
            near = (self.starts[:, :, None] - self.starts[:, None, :]) < self.cache.start_span  # (B, T, T)
            mask = mask & (near | (positions < 0)[:, :, None])[:, None]
        return mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, Hkv, T, Dh) of the pass: stored, and handed back for the pass to attend to."""
        self.cache.k[layer, self.rows, :, self.slots] = k[self.rows, :, self.cols]
        self.cache.v[layer, self.rows, :, self.slots] = v[self.rows, :, self.cols]
        return k, v
