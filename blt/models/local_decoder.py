"""BLT local decoder: byte states + latent outputs -> next-byte logits.

    encoder byte states (B, T, D_enc) -> [projection to D_dec] -> byte states (B, T, D_dec)
    latent outputs (B, P, D_latent) -> projection -> k key/value slots per patch (B, P, k, D_dec)
    cross-attention: byte p attends to the k slots of ONE patch, `source_patch[p]`
    -> transformer blocks (causal, sliding window, document-aware) -> norm -> head -> (B, T, V)

Which patch a byte reads is decided by the caller (ByteLatentTransformer.decoder_patches):
the last patch that closed at or before p, so that nothing after byte p reaches the
prediction made at p. Each byte's slots are gathered, so the cross-attention is over k keys
per byte, with no mask and no (T, P) score matrix. Byte attention spans min(window, context)
bytes, as in the encoder.

Incremental generation uses the same parts one byte at a time: `slot_keys_values` once per
closed patch, then per byte `inputs`, `read_slots`, the cached stack and `logits`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from blt.models.cross_attention import CrossAttention
from blt.models.masks import sequence_mask
from blt.models.transformer import TransformerConfig, TransformerStack, init_linear
from blt.vocab import BOS_ID, VOCAB_SIZE


class LocalDecoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, encoder_dim: int, latent_dim: int, k: int, context: int):
        super().__init__()
        self.cfg, self.k = cfg, k
        self.byte_span = cfg.span_within(context)  # keys a byte sees, itself included
        # widths differ -> project; equal -> the encoder's states are used as they are
        self.from_encoder = nn.Linear(encoder_dim, cfg.dim, bias=False) if encoder_dim != cfg.dim else None
        self.from_latent = nn.Linear(latent_dim, k * cfg.dim, bias=False)
        self.cross = CrossAttention(cfg.dim, cfg.n_heads, cfg.norm_eps)
        self.stack = TransformerStack(cfg)
        self.head = nn.Linear(cfg.dim, VOCAB_SIZE, bias=False)

    @torch.no_grad()
    def init_weights(self):
        std = self.cfg.init_std
        if self.from_encoder is not None:
            init_linear(self.from_encoder, self.from_encoder.in_features**-0.5)
        init_linear(self.from_latent, self.from_latent.in_features**-0.5)
        self.cross.init_weights(std, std / math.sqrt(2))
        self.stack.init_weights()
        init_linear(self.head, self.cfg.dim**-0.5)

    def inputs(self, byte_states: torch.Tensor) -> torch.Tensor:
        """Encoder byte states (..., D_enc) -> decoder states (..., D_dec)"""
        return byte_states if self.from_encoder is None else self.from_encoder(byte_states)

    def slots(self, latent_out: torch.Tensor) -> torch.Tensor:
        """Latent outputs (..., P, D_latent) -> k key/value slots per patch (..., P, k, D_dec)"""
        return self.from_latent(latent_out).unflatten(-1, (self.k, -1))

    def slot_keys_values(self, latent_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One latent output per row (n, D_latent) -> its slots' keys, values (n, H, k, Dh)"""
        return self.cross.keys_values(self.slots(latent_out))

    def read_slots(self, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One byte per row (n, D_dec) cross-attends to its slots' keys/values (n, H, k, Dh)"""
        return self.cross.attend(h[:, None], k, v)[:, 0]

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
        rows = torch.arange(B, device=ids.device)[:, None]
        kv = self.slots(latent_out)[rows, source_patch]  # (B, T, k, D)
        h = self.cross(h[:, :, None, :], kv).squeeze(2)  # (B, T, D)
        if positions is None:
            positions = torch.arange(T, device=ids.device).expand(B, T)
        mask = None if cache is not None else sequence_mask(ids, self.byte_span, BOS_ID)
        return self.stack(h, positions, mask, cache)
