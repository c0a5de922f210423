"""BLT local decoder: byte states + latent outputs -> next-byte logits.

    encoder byte states (B, T, D_enc) -> [projection to D_dec] -> byte states (B, T, D_dec)
    latent outputs (B, P, D_latent) -> projection -> k key/value slots per patch (B, P, k, D_dec)
    cross-attention: byte p attends to the k slots of ONE patch, `source_patch[p]`
    -> transformer blocks (causal, sliding window, document-aware) -> norm -> head -> (B, T, V)

Which patch a byte reads is decided by the caller (ByteLatentTransformer.decoder_patches):
the last patch that closed at or before p, so that nothing after byte p reaches the
prediction made at p. Each byte's slots are gathered, so the cross-attention is over k keys
per byte, with no mask and no (T, P) score matrix.
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
    def __init__(self, cfg: TransformerConfig, encoder_dim: int, latent_dim: int, k: int):
        super().__init__()
        self.cfg, self.k = cfg, k
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

    def forward(self, ids, byte_states, latent_out, source_patch):
        """ids (B, T), byte_states (B, T, D_enc), latent_out (B, P, D_latent),
        source_patch (B, T) the patch each byte reads -> logits (B, T, V) float"""
        B, T = ids.shape
        h = byte_states if self.from_encoder is None else self.from_encoder(byte_states)  # (B, T, D)
        slots = self.from_latent(latent_out).unflatten(-1, (self.k, -1))  # (B, P, k, D)
        rows = torch.arange(B, device=ids.device)[:, None]
        kv = slots[rows, source_patch]  # (B, T, k, D)
        h = self.cross(h[:, :, None, :], kv).squeeze(2)  # (B, T, D)
        pos = torch.arange(T, device=ids.device).expand(B, T)
        h = self.stack(h, pos, sequence_mask(ids, self.cfg.window, BOS_ID))
        return self.head(h).float()
