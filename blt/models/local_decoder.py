"""BLT local decoder: byte states + latent outputs -> next-byte logits.

    encoder byte states (B, T, D_enc) -> [projection to D_dec] -> byte states (B, T, D_dec)
    latent outputs (B, P, D_latent) -> projection -> k key/value slots per patch (B, P, k, D_dec)
    cross-attention: byte p attends to the k slots of ONE patch, `source_patch[p]`
    -> transformer blocks (causal, sliding window, document-aware) -> norm -> head -> (B, T, V)

`cross_layers` 'first': one cross-attention before the first block. 'every_layer' (the paper's
and the released models' form): a cross-attention before every block, each with its own
weights, all reading the same slots.

Which patch a byte reads is decided by the caller (ByteLatentTransformer.decoder_patches):
the last patch that closed at or before p, so that nothing after byte p reaches the
prediction made at p. Each cross-attention projects the k slots of every patch to keys and
values once (`CrossAttention.keys_values` on (B, P, k, D)), and each byte gathers its patch's:
the cross-attention is over k keys per byte, with no mask and no (T, P) score matrix. Byte
attention spans min(window, context) bytes, as in the encoder.

Incremental generation uses the same parts one byte at a time: `slot_keys_values` once per
closed patch (one key/value set per cross-attention), then per byte `inputs`, `read_slots`
(before the cached stack, or before each of its blocks) and `logits`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from blt.models.cross_attention import CrossAttention
from blt.models.masks import sequence_mask
from blt.models.transformer import TransformerConfig, TransformerStack, init_linear
from blt.vocab import BOS_ID, VOCAB_SIZES


class LocalDecoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, encoder_dim: int, latent_dim: int, k: int, context: int, *,
                 vocab: str = "bytes", cross_residual: str = "single", cross_layers: str = "first"):
        super().__init__()
        self.cfg, self.k = cfg, k
        self.byte_span = cfg.span_within(context)  # keys a byte sees, itself included
        self.every_layer = cross_layers == "every_layer"
        # widths differ -> project; equal -> the encoder's states are used as they are
        self.from_encoder = nn.Linear(encoder_dim, cfg.dim, bias=False) if encoder_dim != cfg.dim else None
        self.from_latent = nn.Linear(latent_dim, k * cfg.dim, bias=False)

        def cross():
            return CrossAttention(cfg.dim, cfg.n_heads, cfg.kv_heads, cfg.norm_eps, cross_residual)

        self.cross = nn.ModuleList(cross() for _ in range(cfg.n_layers)) if self.every_layer else cross()
        self.stack = TransformerStack(cfg)
        self.head = nn.Linear(cfg.dim, VOCAB_SIZES[vocab], bias=False)

    @torch.no_grad()
    def init_weights(self):
        std = self.cfg.init_std
        if self.from_encoder is not None:
            init_linear(self.from_encoder, self.from_encoder.in_features**-0.5)
        init_linear(self.from_latent, self.from_latent.in_features**-0.5)
        for cross in self.crosses:
            cross.init_weights(std, std / math.sqrt(2))
        self.stack.init_weights()
        init_linear(self.head, self.cfg.dim**-0.5)

    @property
    def crosses(self) -> list[CrossAttention]:
        return list(self.cross) if self.every_layer else [self.cross]

    def inputs(self, byte_states: torch.Tensor) -> torch.Tensor:
        """Encoder byte states (..., D_enc) -> decoder states (..., D_dec)"""
        return byte_states if self.from_encoder is None else self.from_encoder(byte_states)

    def slots(self, latent_out: torch.Tensor) -> torch.Tensor:
        """Latent outputs (..., P, D_latent) -> k key/value slots per patch (..., P, k, D_dec)"""
        return self.from_latent(latent_out).unflatten(-1, (self.k, -1))

    def slot_keys_values(self, latent_out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One latent output per row (n, D_latent) -> per cross-attention its slots' keys, values
        (n, Hkv, k, Dh)"""
        slots = self.slots(latent_out)  # (n, k, D)
        return [cross.keys_values(slots) for cross in self.crosses]

    def read_slots(self, i: int, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Cross-attention i: one byte per row (n, D_dec) attends to its slots (n, Hkv, k, Dh)"""
        return self.crosses[i].attend(h[:, None], k, v)[:, 0]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h).float()

    def forward(self, ids, byte_states, latent_out, source_patch):
        """ids (B, T), byte_states (B, T, D_enc), latent_out (B, P, D_latent),
        source_patch (B, T) the patch each byte reads -> logits (B, T, V) float"""
        return self.logits(self.hidden(ids, byte_states, latent_out, source_patch))

    def hidden(self, ids, byte_states, latent_out, source_patch, positions=None, cache=None):
        """The states before the head (B, T, D_dec); the blocks use the training mask, or
        `cache` (a prefill) at `positions` when given."""
        B, T = ids.shape
        h = self.inputs(byte_states)  # (B, T, D)
        slots = self.slots(latent_out)  # (B, P, k, D)

        def read(i, h):  # cross-attention i, to each byte's slots
            return self.crosses[i](h[:, :, None, :], slots, gather=source_patch).squeeze(2)  # (B, T, D)

        if not self.every_layer:
            h = read(0, h)
        if positions is None:
            positions = torch.arange(T, device=ids.device).expand(B, T)
        mask = None if cache is not None else sequence_mask(ids, self.byte_span, BOS_ID)
        return self.stack(h, positions, mask, cache, before_layer=read if self.every_layer else None)
