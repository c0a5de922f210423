"""The Byte Latent Transformer: local encoder -> latent transformer over patches -> local decoder.

    ids (B, T), starts (B, T+1) -> LocalEncoder -> byte states (B, T, De), patches (B, P, Dl)
                                -> LatentTransformer -> latent outputs (B, P, Dl)
                                -> LocalDecoder -> logits (B, T, V)

Patch bookkeeping (the convention shared with blt.patching.patchers): a window has T+1 ids,
inputs ids[:, :-1], targets ids[:, 1:]; starts[:, q] marks the first position of a patch and
patch(q) = cumsum(starts)[q] - 1. Byte p is pooled into encoder patch patch(p); the latent runs
over the P = patch(T-1) + 1 patches of the inputs (ragged per row: padded and masked).

THE DECODER RULE, which keeps the future out: the prediction made at input position p (for
the id at p+1) reads only the latent output of patch(p+1) - 1, the last patch that closed at
or before p. Every byte of that patch, and of every patch the latent let it see, is <= p, and
starts[:p+2] depend only on ids[:p+1] (but for the start forced at a BOS, whose target is never
scored), so nothing after byte p reaches the prediction. The first real byte (position 1,
always a start) is predicted from the BOS patch. Reading patch(p+1) itself would leak the
target's own patch (tests/test_no_leak.py checks both).

Starts are completed with the forced ones (q = 0, q = 1, BOS, after BOS) whatever the
patcher gave, so a patch never spans two documents. The model is built first and initialised
by init_weights() afterwards (meta-device / FSDP2 friendly).

Inputs longer than `context` (scoring long documents) are run the way the levels slide: byte
attention spans min(window, context) bytes and the latent sees patches starting within the
last `context` bytes (latent.py), so every byte gets the left context it had in training.

ARCHITECTURE OPTIONS (BLTConfig, ARCHITECTURES): the released BLTs differ from this toolkit's
first design in six choices, each an option honoured by training, scoring and both generation
paths: the vocabulary (260 ids, with their numbering in the n-gram hashes), the hash term order
and padding, the cross-attention residual (2x + o), no final norm after the encoder and after
the latent, and cross-attention before every decoder block; the paper's cross-attention after
every encoder layer is a seventh. `arch: released` sets the released column; `arch: toolkit`
(the default, and what every older run directory holds) the first.

The network does not patch: a run attaches its patcher and, for entropy patchers, a frozen
entropy model (a ByteLM, saved under 'entropy_model.') with `set_patching`; blt.patching
computes starts with them and blt.inference generates with them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blt.config import InvalidValue, must
from blt.errors import UserError
from blt.models.byte_lm import ByteLM, masked_targets
from blt.models.hash_ngram import HASH_PRIMES
from blt.models.latent import LatentTransformer, pack_rows, patch_documents, patch_start_positions
from blt.models.local_decoder import LocalDecoder
from blt.models.local_encoder import LocalEncoder
from blt.models.masks import document_ids
from blt.models.transformer import TransformerConfig
from blt.vocab import BOS_ID, is_byte


# The architecture choices in which the released BLTs (and transformers' port of them) differ from
# this toolkit's first models; `arch` picks a column, any field set explicitly wins.
ARCHITECTURES = {
    #                   toolkit          released
    "vocab": ("bytes", "released"),  # 259 ids / the released 260 (blt.vocab)
    "hash_order": ("newest_first", "oldest_first"),  # n-gram hash term order and padding (hash_ngram.py)
    "cross_residual": ("single", "double"),  # cross-attention: x + o / 2x + o (cross_attention.py)
    "encoder_cross": ("last", "last"),  # 'every_layer': the paper's pooling after every encoder layer
    "decoder_cross": ("first", "every_layer"),  # cross-attention before the first / every decoder block
    "latent_projection": ("always", "when_widths_differ"),  # k*D_enc -> D_latent projection
    "encoder_final_norm": (True, False),  # an RMSNorm after the encoder's / the latent's last block
    "latent_final_norm": (True, False),
}


@dataclass
class BLTConfig:
    context: int = 512  # bytes per training window (input positions)
    latent_context: int | None = None  # patches the latent attends to; None = context
    encoder: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(dim=128, n_layers=1, n_heads=4, window=128)
    )
    latent: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(dim=256, n_layers=4, n_heads=4)
    )
    decoder: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(dim=128, n_layers=2, n_heads=4, window=128)
    )
    k: int = 2  # query vectors (encoder) and key/value slots (decoder) per patch
    hash_ngram_sizes: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    n_hash_functions: int = 1
    hash_buckets: int = 30000  # rows of each hash n-gram table
    # architecture options (ARCHITECTURES); null = the `arch` preset's choice
    arch: Literal["toolkit", "released"] = "toolkit"
    vocab: Literal["bytes", "released"] | None = None
    hash_order: Literal["newest_first", "oldest_first"] | None = None
    cross_residual: Literal["single", "double"] | None = None
    encoder_cross: Literal["last", "every_layer"] | None = None
    decoder_cross: Literal["first", "every_layer"] | None = None
    latent_projection: Literal["always", "when_widths_differ"] | None = None

    def __post_init__(self):
        self.resolve_architecture()

    def resolve_architecture(self):
        """Fill every option left null with the `arch` preset's choice (final norms: in the parts)."""
        column = ("toolkit", "released").index(self.arch)
        for name, choices in ARCHITECTURES.items():
            if name.endswith("_final_norm"):
                part = getattr(self, name.removesuffix("_final_norm"))
                if part.final_norm is None:
                    part.final_norm = choices[column]
            elif getattr(self, name) is None:
                setattr(self, name, choices[column])

    def validate(self):
        self.resolve_architecture()
        for name in ("encoder", "latent", "decoder"):
            try:
                getattr(self, name).validate()
            except InvalidValue as e:
                raise InvalidValue(f"{name}.{e.field}", e.problem) from None
        must(self.context >= 2, "context", "at least 2", self.context)
        must(self.latent_context is None or self.latent_context >= 1, "latent_context", "at least 1 or null",
             self.latent_context)
        must(self.k >= 1, "k", "at least 1 (queries per patch)", self.k)
        sizes = self.hash_ngram_sizes
        must(all(n >= 2 for n in sizes) and len(set(sizes)) == len(sizes), "hash_ngram_sizes",
             "distinct integers >= 2", sizes)
        must(0 <= self.n_hash_functions <= len(HASH_PRIMES), "n_hash_functions",
             f"between 0 and {len(HASH_PRIMES)}", self.n_hash_functions)
        must(self.hash_buckets >= 1, "hash_buckets", "at least 1", self.hash_buckets)

    def attention_mask_bytes(self, batch: int, positions: int) -> int:
        """Bytes of the largest attention mask of a training window of `positions` bytes: the
        encoder's pooling mask (B, 1, P*k, T), at worst one patch per byte (P = T)."""
        return batch * self.k * positions * positions

    @property
    def latent_span(self) -> int:
        return self.latent_context or self.context


def complete_starts(ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """starts (B, T+1) plus the forced starts visible from the inputs ids (B, T). (B, T+1) bool"""
    B, T = ids.shape
    if starts.shape != (B, T + 1):
        raise ValueError(f"starts must be (B, T+1) = {(B, T + 1)}, got {tuple(starts.shape)}")
    is_bos = ids == BOS_ID
    out = starts.bool().clone()
    out[:, :T] |= is_bos
    out[:, 1:] |= is_bos
    out[:, :2] = True
    return out


def patch_stats(ids: torch.Tensor, targets: torch.Tensor, starts: torch.Tensor) -> dict:
    """What a batch ids, targets (B, T), starts (B, T+1) holds and costs: 'targets' counts the
    targets the loss averages over (bytes and EOS), 'bytes' the real bytes among them, 'patches'
    the patches starting at a real byte (bytes / patches is the mean patch size); padding
    included, 'patch_slots' the patches the local models' per-patch steps compute (B rows of
    the longest row's count P) and 'latent_patches' those the latent computes (its packed rows
    of P: latent.pack_rows)."""
    complete = complete_starts(ids, starts)
    is_real = is_byte(targets)
    counts = complete[:, : ids.shape[1]].sum(1).tolist()  # patches per row
    P = max(counts)
    return {"targets": ByteLM.count_targets(targets), "bytes": int(is_real.sum()),
            "patches": int((complete[:, 1:] & is_real).sum()),
            "patch_slots": len(counts) * P, "latent_patches": pack_rows(counts, P)[2] * P}


class ByteLatentTransformer(nn.Module):
    def __init__(self, cfg: BLTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = LocalEncoder(cfg.encoder, cfg.latent.dim, cfg.k, cfg.hash_ngram_sizes,
                                    cfg.n_hash_functions, cfg.hash_buckets, cfg.context, vocab=cfg.vocab,
                                    hash_order=cfg.hash_order, cross_residual=cfg.cross_residual,
                                    cross_layers=cfg.encoder_cross, latent_projection=cfg.latent_projection)
        self.latent = LatentTransformer(cfg.latent, cfg.latent_span, cfg.context)
        self.decoder = LocalDecoder(cfg.decoder, cfg.encoder.dim, cfg.latent.dim, cfg.k, cfg.context,
                                    vocab=cfg.vocab, cross_residual=cfg.cross_residual,
                                    cross_layers=cfg.decoder_cross)
        self.patcher = None  # a blt.patching.patchers.Patcher: how this model's inputs are cut
        self.entropy_model = None  # a frozen ByteLM when the patcher needs entropies

    @torch.no_grad()
    def init_weights(self):
        """Initialise every weight (the entropy model too, if one is attached: load it after)."""
        self.encoder.init_weights()
        self.latent.init_weights()
        self.decoder.init_weights()
        if self.entropy_model is not None:
            self.entropy_model.init_weights()

    def set_patching(self, patcher, entropy_model: ByteLM | None = None):
        """Attach the patcher used at inference and, for entropy patchers, a frozen entropy model."""
        if patcher.needs_entropy and entropy_model is None:
            raise UserError(f"{type(patcher).__name__} needs an entropy model")
        self.patcher = patcher
        if entropy_model is not None:
            self.entropy_model = entropy_model.requires_grad_(False).eval()

    def check_patching(self):
        """UserError unless a patcher (and the entropy model it needs) is attached."""
        if self.patcher is None:
            raise UserError("this BLT model has no patcher: call set_patching() first")
        if self.patcher.needs_entropy and self.entropy_model is None:
            raise UserError(f"{type(self.patcher).__name__} needs an entropy model, and none is attached")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.entropy_model is not None:
            self.entropy_model.eval()  # frozen: never in training mode
        return self

    def decoder_patches(self, patch: torch.Tensor) -> torch.Tensor:
        """THE DECODER RULE: input position p reads latent output patch(p+1) - 1.
        patch (B, T+1) patch index of every window position -> (B, T)"""
        return patch[:, 1:] - 1

    def forward(self, ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """ids (B, T) inputs, starts (B, T+1) patch starts of the whole window -> logits (B, T, V)"""
        B, T = ids.shape
        patch = complete_starts(ids, starts).long().cumsum(dim=1) - 1  # (B, T+1)
        byte_patch = patch[:, :T]  # (B, T)
        n_patches = byte_patch[:, -1] + 1  # (B,)
        P = int(n_patches.max())
        byte_states, patches = self.encoder(ids, byte_patch, P)  # (B, T, De), (B, P, Dl)
        patch_docs = patch_documents(document_ids(ids, BOS_ID), byte_patch, P)  # (B, P)
        starts_at = patch_start_positions(byte_patch, P) if T > self.cfg.context else None  # (B, P)
        latent_out = self.latent(patches, patch_docs, n_patches, starts_at)  # (B, P, Dl)
        return self.decoder(ids, byte_states, latent_out, self.decoder_patches(patch))

    count_targets = staticmethod(ByteLM.count_targets)  # the targets `loss` averages over

    def loss(self, ids: torch.Tensor, targets: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy (nats) over byte and EOS targets; stats {'targets', 'patches'}.

        BOS and PAD targets are not scored (see ByteLM). EOS is, as in ByteLM, so a BLT learns
        where documents end: its boundary is causal because the EOS position carries the
        entropy model's real value (the entropy file stores it, and `online_entropies`
        computes it), never a constant that would reveal the EOS id.
        See `patch_stats` for the stats.
        """
        logits = self(ids, starts)
        t = masked_targets(targets)  # (B, T), -100 where not scored
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), t.view(-1), ignore_index=-100)
        return loss, patch_stats(ids, targets, starts)
