"""FLOPs per byte of every model in the project, computed from configs, and a counter to check them.

Convention: matmul FLOPs only, 2 per multiply-add, per byte of text. A transformer layer of width
d (query width d_q, key/value width d_kv under grouped-query attention, SwiGLU hidden f) costs,
per position whose query attends to w keys:

    2 * (d*d_q + 2*d*d_kv + d_q*d)   q, k, v, o projections
    2 * 3*d*f                        SwiGLU (w1, w3, w2)
    2 * 2*w*d_q                      scores q.k and the weighted sum of values

GQA shrinks only the k/v projections: SDPA broadcasts the key/value heads to every query head,
so scores and values still cost d_q per key. The output head costs 2*d*V per position.
Embedding lookups (byte, token and hash n-gram tables) are gathers, not matmuls: they count 0.
Training FLOPs are taken as 3 x forward (the backward pass does two matmuls per forward matmul:
gradient of the input and of the weight). Attention with recomputation (flash kernels) spends
3.5 x forward; the 3 x rule ignores that difference.

Not counted, by us or by FlopCounterMode: softmax, RMSNorm, RoPE, SiLU and the residual adds
(elementwise, O(d) per position against O(d^2) for the matmuls), max-pooling, the loss.

The attention span w, `attention=`:
- 'average': the keys the mask allows, averaged over the window's positions: (T+1)/2 for causal
  attention over T positions, mean of min(t+1, window) with a sliding window. This is the
  useful work, the convention of the scaling-law literature, and what a causal flash kernel
  (`is_causal=True`, CPU or CUDA) executes up to its block granularity.
- 'dense': every key handed to the kernel, T per query. SDPA given a boolean mask computes the
  whole T x T product and throws the masked part away. torch's own FlopCounterMode formulas
  for the CUDA SDPA kernels count this too (they ignore causality).
What our code executes today: ByteLM takes the is_causal path ('average') only for a window
holding one document with no shorter sliding window, and the masked path ('dense') otherwise,
i.e. for most training windows of concatenated documents and for every entropy-model pass
(`online_entropies`). BLT's local models follow the same rule as ByteLM; its latent always passes a mask ('dense');
its encoder pooling scores each byte against its own patch's k queries only, and its decoder's
cross-attention each byte against its k slots, whatever the mode (no mask, nothing discarded).
'average' assumes one document per window: document masks allow fewer keys still.
FlopCounterMode as shipped does not count the CPU SDPA kernel at all; `measure_flops` adds it,
counting either every (query, key) pair ('dense') or the pairs the mask allows ('average').

BLT (`blt_flops`): local encoder and decoder run once per byte (span: their sliding window over
the byte sequence), cross-attention scales with the k query/key slots per patch, the latent
transformer runs once per patch, so its per-byte cost is divided by the measured mean patch
size, and its span is counted in patches. The entropy model is a separate per-byte cost at
inference, reported on its own and added in `forward_per_byte_with_entropy`. A ragged batch
runs every row over the most patches any row has, P (padding patches are computed, then
ignored): measure the mean patch size as T / P to charge for them too. The latent packs rows
into R <= B rows of P patches (models/latent.py): its terms run over R*P patches, so it is
charged at `latent_patch_size` = B*T / (R*P) positions per latent patch (the training loop's
charge: blt.runs.kind_blt.train_flops_per_position).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from blt.errors import UserError
from blt.models.blt import BLTConfig
from blt.models.byte_lm import ByteLMConfig
from blt.models.transformer import TransformerConfig
from blt.vocab import VOCAB_SIZES

ATTENTION_MODES = ("average", "dense")
TRAIN_FACTOR = 3.0  # training FLOPs = forward + backward ~ 3 x forward


@dataclass
class FlopReport:
    forward_per_byte: float  # the model alone
    train_per_byte: float  # TRAIN_FACTOR x forward_per_byte (the entropy model is not trained)
    entropy_model_per_byte: float  # forward of the patching entropy model; 0 if none
    forward_per_byte_with_entropy: float  # inference cost including the entropy model
    params: int  # parameters of the model (embeddings included, entropy model excluded)
    breakdown: dict[str, float] = field(default_factory=dict)  # forward terms per byte; sum = forward
    attention: str = "average"  # how attention spans were counted (see module docstring)


def attention_span(seq_len: float, window: int | None = None, attention: str = "average") -> float:
    """Mean number of keys a query is charged for, in a causal window of seq_len positions."""
    check_attention(attention)
    if seq_len <= 0:
        raise UserError(f"sequence length must be positive, got {seq_len}")
    if attention == "dense":
        if window is not None and 2 * window <= seq_len:
            # masks.window_mask's blocked form: each block of W queries scores 2W keys, over
            # ceil(T / W) blocks (the last one padded)
            return 2.0 * window * math.ceil(seq_len / window) * window / seq_len
        return float(seq_len)
    # sum over t < T of min(t + 1, W), divided by T; seq_len may be fractional (latent patches).
    T = float(seq_len)
    W = float(window) if window is not None and window < T else T
    return (W * (W + 1) / 2 + (T - W) * W) / T


def check_attention(attention: str):
    if attention not in ATTENTION_MODES:
        raise UserError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got '{attention}'")


def stack_terms(cfg: TransformerConfig, span: float) -> dict[str, float]:
    """Forward FLOPs per position of a TransformerStack whose queries see `span` keys.

    A Memory+ block (models/memory.py) replaces its up-projection (2*d*f) by a memory read: the
    query projection, the two half-key scorings (2 * keys * d_k per head) and the weighted sum
    of the top-k value rows (2 * topk * f per head); its top-k selections and gathers count 0."""
    d, f, L = cfg.dim, cfg.hidden_dim, cfg.n_layers
    d_q, d_kv = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    terms = {
        "attn_proj": L * 2.0 * (d * d_q + 2 * d * d_kv + d_q * d),
        "attn_scores": L * 2.0 * 2 * span * d_q,
        "ffn": L * 2.0 * 3 * d * f,
    }
    m = cfg.memory
    if m is not None:
        terms["ffn"] -= m.layers * 2.0 * d * f
        terms["memory"] = m.layers * 2.0 * m.heads * (d * m.key_dim + m.keys * m.key_dim + m.topk * f)
    return terms


def stack_params(cfg: TransformerConfig) -> int:
    """Parameters of a TransformerStack: per layer attention, SwiGLU, two norms; a final norm;
    Memory+ blocks trade their up-projection for a query projection and half-keys, and the
    stack holds their shared value table."""
    d, f = cfg.dim, cfg.hidden_dim
    d_q, d_kv = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    per_layer = d * d_q + 2 * d * d_kv + d_q * d + 3 * d * f + 2 * d
    total = cfg.n_layers * per_layer + (d if cfg.final_norm is not False else 0)
    m = cfg.memory
    if m is not None:
        total += m.layers * (m.heads * m.key_dim * (d + m.keys) - d * f) + m.slots * f
    return total


def _prefixed(prefix: str, terms: dict[str, float], scale: float = 1.0) -> dict[str, float]:
    return {f"{prefix}.{name}": value * scale for name, value in terms.items()}


def _report(breakdown: dict[str, float], params: int, attention: str, entropy: float = 0.0) -> FlopReport:
    forward = sum(breakdown.values())
    return FlopReport(
        forward_per_byte=forward,
        train_per_byte=TRAIN_FACTOR * forward,
        entropy_model_per_byte=entropy,
        forward_per_byte_with_entropy=forward + entropy,
        params=params,
        breakdown=breakdown,
        attention=attention,
    )


def _lm_terms(cfg: TransformerConfig, vocab: int, seq_len: int, attention: str) -> dict[str, float]:
    span = attention_span(seq_len, cfg.window, attention)
    return {"embed": 0.0, **stack_terms(cfg, span), "head": 2.0 * cfg.dim * vocab}


def _seq_len(cfg, seq_len: int | None) -> int:
    seq_len = seq_len if seq_len is not None else getattr(cfg, "context", None)
    if seq_len is None:
        raise UserError("seq_len is required for a config without a context length")
    if seq_len < 1:
        raise UserError(f"seq_len must be at least 1, got {seq_len}")
    return seq_len


def byte_lm_flops(cfg: ByteLMConfig, seq_len: int | None = None, *, attention: str = "average") -> FlopReport:
    """A byte-level transformer over windows of seq_len bytes (default: its training context).

    Every term runs once per byte. Breakdown keys: embed (0), attn_proj, attn_scores, ffn, head.
    """
    T = _seq_len(cfg, seq_len)
    V = VOCAB_SIZES[cfg.vocab]
    params = 2 * V * cfg.dim + stack_params(cfg)  # embedding + head are not tied
    return _report(_lm_terms(cfg, V, T, attention), params, attention)


def bpe_lm_flops(
    cfg: TransformerConfig,
    vocab_size: int,
    bytes_per_token: float,
    seq_len: int | None = None,
    *,
    attention: str = "average",
) -> FlopReport:
    """The same transformer over BPE tokens: per byte = per token / bytes_per_token.

    seq_len (default cfg.context) and the window count tokens; the head spans the token vocabulary.
    """
    if vocab_size < 1:
        raise UserError(f"vocab_size must be positive, got {vocab_size}")
    if not bytes_per_token > 0:
        raise UserError(f"bytes_per_token must be positive, got {bytes_per_token}")
    T = _seq_len(cfg, seq_len)
    per_token = _lm_terms(cfg, vocab_size, T, attention)
    breakdown = {name: value / bytes_per_token for name, value in per_token.items()}
    return _report(breakdown, 2 * vocab_size * cfg.dim + stack_params(cfg), attention)


def _cross_attention_params(part: TransformerConfig) -> int:
    d, d_kv = part.dim, part.kv_heads * part.head_dim
    return 2 * d * d + 2 * d * d_kv + 2 * d  # wq, wo; wk, wv (grouped heads); the two pre-norms


def _blt_counts(cfg: BLTConfig) -> tuple[int, int, bool]:
    """(encoder cross-attentions, decoder cross-attentions, whether the latent projection exists)"""
    n_enc = cfg.encoder.n_layers if cfg.encoder_cross == "every_layer" else 1
    n_dec = cfg.decoder.n_layers if cfg.decoder_cross == "every_layer" else 1
    projection = not (cfg.latent_projection == "when_widths_differ" and cfg.k * cfg.encoder.dim == cfg.latent.dim)
    return n_enc, n_dec, projection


def blt_params(cfg: BLTConfig) -> int:
    """Parameters of a ByteLatentTransformer (without an attached entropy model)."""
    enc, lat, dec, k = cfg.encoder, cfg.latent, cfg.decoder, cfg.k
    V = VOCAB_SIZES[cfg.vocab]
    n_enc, n_dec, projection = _blt_counts(cfg)
    tables = cfg.n_hash_functions * len(cfg.hash_ngram_sizes)
    encoder = (
        (V + tables * cfg.hash_buckets) * enc.dim  # byte and hash n-gram tables
        + stack_params(enc)
        + enc.dim * k * enc.dim  # pooling queries
        + n_enc * _cross_attention_params(enc)
        + (k * enc.dim * lat.dim if projection else 0)  # to the latent width
    )
    decoder = (
        (enc.dim * dec.dim if enc.dim != dec.dim else 0)
        + lat.dim * k * dec.dim  # latent output -> k key/value slots
        + n_dec * _cross_attention_params(dec)
        + stack_params(dec)
        + dec.dim * V
    )
    return encoder + stack_params(lat) + decoder


def blt_flops(
    cfg: BLTConfig,
    mean_patch_size: float,
    entropy_cfg: ByteLMConfig | None = None,
    *,
    seq_len: int | None = None,
    attention: str = "average",
    latent_patch_size: float | None = None,
) -> FlopReport:
    """A BLT over windows of seq_len bytes (default cfg.context) cut into patches of
    mean_patch_size bytes: measure it (input positions per latent patch) on the data.
    latent_patch_size: input positions per patch the latent computes, when packing makes it
    differ (default mean_patch_size); the latent's rows stay seq_len / mean_patch_size long.

    Per byte, as ByteLatentTransformer computes it:
    - encoder: hash n-gram embedding (0), its stack over the byte window; cross-attention pooling,
      whose k queries per patch are made, projected and answered once per patch while keys and
      values are projected once per byte; each byte is a key for the k queries of its patch only
      (segment attention: k scores and k weighted values per byte, in either mode);
      the projection of the k*D_enc outputs to the latent width, once per patch;
    - latent: its stack once per patch, over a span of seq_len / mean_patch_size patches
      (capped by latent_context and its window);
    - decoder: the latent -> k slots projection once per patch; cross-attention per byte over
      k slots, whose keys and values are projected once per patch and gathered for each byte;
      its stack over the byte window and the byte head.
    entropy_cfg: the patching entropy model, run over the same windows under its own window
    (min(window, context)); an inference cost only, excluded from train_per_byte.
    """
    if not mean_patch_size >= 1 or not (latent_patch_size or 1) >= 1:
        raise UserError(f"patch sizes must be at least 1 byte, got {mean_patch_size}, {latent_patch_size}")
    check_attention(attention)
    T = _seq_len(cfg, seq_len)
    m, k = float(mean_patch_size), cfg.k
    enc, lat, dec = cfg.encoder, cfg.latent, cfg.decoder
    De, Dl, Dd = enc.dim, lat.dim, dec.dim
    De_kv, Dd_kv = enc.kv_heads * enc.head_dim, dec.kv_heads * dec.head_dim
    n_enc, n_dec, projection = _blt_counts(cfg)

    encoder = {
        "hash_embed": 0.0,
        **stack_terms(enc, attention_span(T, enc.window, attention)),
        "pool_queries": 2.0 * De * k * De / m,
        # per cross-attention: q, o per query; k, v per byte
        "pool_proj": n_enc * (2.0 * (2 * De * De) * k / m + 2.0 * (2 * De * De_kv)),
        "pool_scores": n_enc * 2.0 * 2 * k * De,  # each byte: k scores, k weighted values
        "to_latent": 2.0 * k * De * Dl / m if projection else 0.0,
    }
    patches = T / m
    latent_window = min(lat.window or cfg.latent_span, cfg.latent_span)
    latent = stack_terms(lat, attention_span(patches, latent_window, attention))
    decoder = {
        "from_encoder": 2.0 * De * Dd if De != Dd else 0.0,
        "from_latent": 2.0 * Dl * k * Dd / m,
        # per cross-attention: q, o per byte; k, v per slot, once per patch
        "cross_proj": n_dec * (2.0 * (2 * Dd * Dd) + 2.0 * (2 * Dd * Dd_kv) * k / m),
        "cross_scores": n_dec * 2.0 * 2 * k * Dd,
        **stack_terms(dec, attention_span(T, dec.window, attention)),
        "head": 2.0 * Dd * VOCAB_SIZES[cfg.vocab],
    }
    latent_m = float(latent_patch_size) if latent_patch_size is not None else m
    breakdown = {**_prefixed("encoder", encoder), **_prefixed("latent", latent, 1 / latent_m),
                 **_prefixed("decoder", decoder)}
    entropy = 0.0
    if entropy_cfg is not None:
        W = min(entropy_cfg.window or entropy_cfg.context, entropy_cfg.context)
        entropy = byte_lm_flops(replace(entropy_cfg, window=W), T, attention=attention).forward_per_byte
    return _report(breakdown, blt_params(cfg), attention, entropy)


def model_flops(model_or_cfg: Any, **kwargs) -> FlopReport:
    """Dispatch on a model or its config: ByteLM(Config) -> byte_lm_flops, BLT(Config) -> blt_flops.

    kwargs go to the chosen function (seq_len, attention; mean_patch_size and entropy_cfg for BLT).
    A BLT model's attached entropy model is used as entropy_cfg unless one is given.
    """
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    if isinstance(cfg, ByteLMConfig):
        return byte_lm_flops(cfg, **kwargs)
    if isinstance(cfg, BLTConfig):
        entropy_model = getattr(model_or_cfg, "entropy_model", None)
        if entropy_model is not None and "entropy_cfg" not in kwargs:
            kwargs["entropy_cfg"] = entropy_model.cfg
        if "mean_patch_size" not in kwargs:
            raise UserError("BLT FLOPs need the mean patch size measured on the data (mean_patch_size=...)")
        return blt_flops(cfg, **kwargs)
    raise UserError(f"no FLOP formula for {type(model_or_cfg).__name__}")


_UNITS = ("", "k", "M", "G", "T", "P", "E", "Z")


def format_flops(x: float) -> str:
    """1234567 -> '1.23 MFLOP', 999999 -> '1.00 MFLOP' (three significant digits)."""
    if x == 0:
        return "0 FLOP"
    exp = min(max(int(math.floor(math.log10(abs(x)) / 3)), 0), len(_UNITS) - 1)
    value = x / 1000**exp
    if float(f"{abs(value):.3g}") >= 1000 and exp < len(_UNITS) - 1:
        exp, value = exp + 1, value / 1000  # 999.999 k rounds to 1.00 M, not 1000 k
    return f"{value:#.3g}".rstrip(".") + f" {_UNITS[exp]}FLOP"  # '#' keeps zeros: 1.00, 12.0


# ---- measurement -------------------------------------------------------------------------------


def _allowed_fraction(query, key, is_causal: bool, attn_mask) -> float:
    """Share of the (query, key) pairs the kernel is given that the mask lets through."""
    Tq, S = query.shape[-2], key.shape[-2]
    if attn_mask is not None:
        allowed = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
        allowed = allowed.expand(*query.shape[:-2], Tq, S)
        return allowed.float().mean().item()
    if is_causal:  # SDPA's causal mask is top-left aligned: query i sees keys 0..i
        return sum(min(i + 1, S) for i in range(Tq)) / (Tq * S)
    return 1.0


def _sdpa_cpu_formulas(attention: str) -> dict:
    """FlopCounterMode entries for the CPU SDPA kernel, which torch's registry leaves out."""

    def forward(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None, out_val=None):
        B, H, Tq, Dq = query.shape
        S, Dv = key.shape[-2], value.shape[-1]
        dense = 2 * B * H * Tq * S * (Dq + Dv)  # scores + values, kv heads broadcast to H
        share = 1.0 if attention == "dense" else _allowed_fraction(query, key, is_causal, attn_mask)
        return int(round(dense * share))

    def backward(grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False, *,
                 attn_mask=None, scale=None, out_val=None):
        B, H, Tq, Dq = query.shape
        S, Dv = key.shape[-2], value.shape[-1]
        # recompute scores; grads of probabilities, values, queries, keys: 3 Dq- and 2 Dv-sized products
        dense = 2 * B * H * Tq * S * (3 * Dq + 2 * Dv)
        share = 1.0 if attention == "dense" else _allowed_fraction(query, key, is_causal, attn_mask)
        return int(round(dense * share))

    forward._get_raw = True  # FlopCounterMode passes tensors, not shapes, to such formulas
    backward._get_raw = True
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def measure_flops(fn: Callable[[], Any], attention: str = "average", module: str | None = None) -> int:
    """FLOPs FlopCounterMode counts while fn() runs (forward, and backward if fn runs one),
    the CPU attention kernel included; only those inside `module` if given, named as the
    counter names modules ('ByteLatentTransformer.latent').

    For that kernel, attention='dense' counts every (query, key) pair SDPA is given, 'average'
    only those its mask (or is_causal) allows; compare with the formulas under the same mode.
    Other attention paths are counted as torch counts them: the math fallback as dense bmm
    products, the CUDA kernels densely whatever the mode.
    """
    check_attention(attention)
    with FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_formulas(attention)) as counter:
        fn()
    if module is None:
        return counter.get_total_flops()
    return sum(counter.get_flop_counts().get(module, {}).values())
