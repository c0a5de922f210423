"""Hugging Face BLT checkpoints (Meta's released BLTs, `transformers`' BltForCausalLM): read and write.

A HF BLT directory holds config.json (`model_type: blt`) and model.safetensors, or shards listed
in model.safetensors.index.json. Every command that takes a run directory takes such a directory
as it is (blt.runs.loading): nothing is converted on disk, and the weights are memory-mapped.

Config (`run_config`): the released architecture (`BLTConfig.arch: released`, models/blt.py) with
the shapes of config.json, read with the defaults transformers 5.24 applies to missing fields; the
patcher becomes the BLT's entropy model (a 'released'-vocabulary ByteLM), `patching_threshold`
its global entropy threshold (no calibration), contexts from `max_position_embeddings` (encoder:
bytes, global: patches). Settings the toolkit cannot express give one clear error naming them.

Weights (`to_ours` / `to_hf`), one rename table plus three transformations:
- rows of embeddings and heads are reordered between the released numbering and the toolkit's ids
  (blt.vocab.RELEASED_NUMBERING), a copy of a few hundred rows;
- RoPE: the released models rotate interleaved pairs (2i, 2i+1), the toolkit half-split pairs
  (i, i + D/2); permuting each head's rows of wq and wk by [0, 2, 4, ..., 1, 3, 5, ...] gives the
  same function (q.k is unchanged when both are permuted alike);
- the fused n-gram hash table is cut into the toolkit's per-(function, n) tables as VIEWS: the
  released tables are ~3 B parameters and are never copied.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from blt.errors import UserError
from blt.files import temporary_name
from blt.models.blt import BLTConfig
from blt.models.byte_lm import ByteLMConfig
from blt.models.transformer import TransformerConfig
from blt.patching.patchers import PatcherConfig
from blt.runs.config import RunConfig
from blt.vocab import RELEASED_NUMBERING

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
# transformers 5.24's defaults for fields a config.json may leave out
PART_DEFAULTS = {
    "encoder_config": dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=1, intermediate_size=None,
                           rope_theta=500000.0, max_position_embeddings=24576, cross_attn_all_layers=False),
    "decoder_config": dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=9, intermediate_size=2816,
                           rope_theta=500000.0, max_position_embeddings=24576, cross_attn_all_layers=True),
    "global_config": dict(hidden_size=2048, num_attention_heads=16, num_hidden_layers=25, intermediate_size=5632,
                          rope_theta=500000.0, max_position_embeddings=4096),
    "patcher_config": dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=14, intermediate_size=2048,
                           rope_theta=10000.0, max_position_embeddings=8192, sliding_window=512),
}
TOP_DEFAULTS = dict(patch_in_forward=True, patching_mode="entropy", patching_threshold=1.335442066192627,
                    max_patch_length=None, local_attention_window_len=512, cross_attn_k=2,
                    encoder_hash_byte_group_size=None, encoder_hash_byte_group_vocab=500002,
                    encoder_hash_byte_group_nb_functions=1, vocab_size=260)


def is_hf_checkpoint(path: Path) -> bool:
    """A Hugging Face model directory: a config.json and no run config.yaml (read_config then
    says whether it is a BLT)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and not (path / "config.yaml").is_file()


def read_config(path: Path) -> dict:
    try:
        cfg = json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}/{CONFIG_FILE} is not readable JSON ({e.__class__.__name__})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "blt":
        kind = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise UserError(f"{path} holds a '{kind}' model, not a Hugging Face BLT (model_type: blt)")
    return cfg


def _part(cfg: dict, name: str) -> dict:
    """A sub-config with defaults, legacy `rope_theta` folded into rope_parameters."""
    part = {**PART_DEFAULTS[name], **(cfg.get(name) or {})}
    theta = (part.get("rope_parameters") or {}).get("rope_theta", part.get("rope_theta"))
    rope_type = (part.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type != "default":
        raise UserError(f"{name}.rope_parameters.rope_type '{rope_type}' is not supported (only 'default' RoPE)")
    part["rope_theta"] = float(theta)
    part["intermediate_size"] = part["intermediate_size"] or int(8 * part["hidden_size"] / 3)
    part["num_key_value_heads"] = part.get("num_key_value_heads") or part["num_attention_heads"]
    return part


def _transformer(part: dict, window, final_norm: bool) -> TransformerConfig:
    return TransformerConfig(
        dim=part["hidden_size"], n_layers=part["num_hidden_layers"], n_heads=part["num_attention_heads"],
        n_kv_heads=part["num_key_value_heads"], ffn_dim=part["intermediate_size"],
        norm_eps=float(part.get("rms_norm_eps", 1e-5)), rope_theta=part["rope_theta"], window=window,
        final_norm=final_norm,
    )


def run_config(cfg: dict) -> RunConfig:
    """The toolkit's RunConfig of a HF BLT config.json (see the module docstring)."""
    top = {**TOP_DEFAULTS, **cfg}
    enc, dec, glb, pat = (_part(cfg, n) for n in ("encoder_config", "decoder_config", "global_config",
                                                  "patcher_config"))
    k = top["cross_attn_k"]
    unsupported = {
        "encoder_config.cross_attn_all_layers": enc["cross_attn_all_layers"],  # the port re-pools every layer
        "max_patch_length": top["max_patch_length"] is not None,  # the port drops empty patches after splitting
        "patching_mode": top["patching_mode"] != "entropy",
        "vocab_size": top["vocab_size"] != 260,
        "decoder hidden_size != encoder hidden_size": dec["hidden_size"] != enc["hidden_size"],
        "decoder_config.hidden_size_global": dec.get("hidden_size_global", glb["hidden_size"]) != glb["hidden_size"],
        "encoder/decoder cross_attn_k": any(p.get("cross_attn_k", k) != k for p in (enc, dec)),
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise UserError(f"this Hugging Face BLT uses a setting the toolkit cannot express: {bad[0]}")
    window = top["local_attention_window_len"]
    blt = BLTConfig(
        context=enc["max_position_embeddings"], latent_context=glb["max_position_embeddings"],
        encoder=_transformer(enc, window, False), latent=_transformer(glb, None, False),
        decoder=_transformer(dec, window, True), k=k,
        hash_ngram_sizes=list(top["encoder_hash_byte_group_size"] or [3, 4, 5, 6, 7, 8]),
        n_hash_functions=top["encoder_hash_byte_group_nb_functions"],
        hash_buckets=top["encoder_hash_byte_group_vocab"], arch="released",
        decoder_cross="every_layer" if dec["cross_attn_all_layers"] else "first",
    )
    if not top["patch_in_forward"]:  # no patcher: a patch per byte
        return RunConfig(model_kind="blt", blt=blt, patching=PatcherConfig(kind="byte"))
    entropy_model = ByteLMConfig(**vars(_transformer(pat, pat["sliding_window"], True)),
                                 context=pat["max_position_embeddings"], vocab="released")
    patching = PatcherConfig(kind="entropy", theta=float(top["patching_threshold"]))
    return RunConfig(model_kind="blt", blt=blt, patching=patching, entropy_model=entropy_model)


# ---- weights ---------------------------------------------------------------------------------

BLOCK = {  # released block names -> ours, within a layer
    "self_attn.q_proj": "attn.wq", "self_attn.k_proj": "attn.wk", "self_attn.v_proj": "attn.wv",
    "self_attn.o_proj": "attn.wo", "mlp.gate_proj": "ffn.w1", "mlp.up_proj": "ffn.w3", "mlp.down_proj": "ffn.w2",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
CROSS = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo", "q_norm": "q_norm", "k_norm": "kv_norm"}
STACKS = {  # released prefix of a part's layers -> ours
    "model.local_encoder.layers": "encoder.stack.layers",
    "model.global_transformer.layers": "latent.stack.layers",
    "model.local_decoder.layers": "decoder.stack.layers",
    "model.patcher.layers": "entropy_model.stack.layers",
}
SINGLE = {  # everything else, one name each
    "model.local_encoder.patch_embedding_projection.weight": "encoder.query_proj.weight",
    "model.global_transformer.token_embedding_projection.weight": "encoder.to_latent.weight",
    "model.local_decoder.patch_embedding_projection.weight": "decoder.from_latent.weight",
    "model.local_decoder.norm.weight": "decoder.stack.norm.weight",
    "model.patcher.norm.weight": "entropy_model.stack.norm.weight",
}
VOCAB_ROWS = {  # tensors with one row per id
    "model.local_encoder.embed_tokens.weight": "encoder.embed.byte_embed.weight",
    "lm_head.weight": "decoder.head.weight",
    "model.patcher.embed_tokens.weight": "entropy_model.embed.weight",
    "model.patcher.lm_head.weight": "entropy_model.head.weight",
}
HASH_TABLE = "model.encoder_hash_tok_embedding.weight"


def rope_rows(head_dim: int, n_heads: int) -> torch.Tensor:
    """Row order turning an interleaved-pair projection into a half-split one, for every head."""
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (per_head[None] + head_dim * torch.arange(n_heads)[:, None]).flatten()


def _names(cfg: RunConfig) -> dict[str, str]:
    """Released name -> our name for every tensor of a (released-architecture) model."""
    b = cfg.blt
    out = dict(SINGLE)
    parts = {"model.local_encoder.layers": b.encoder, "model.global_transformer.layers": b.latent,
             "model.local_decoder.layers": b.decoder, "model.patcher.layers": cfg.entropy_model}
    for prefix, part in parts.items():
        for i in range(part.n_layers if part is not None else 0):
            for theirs, ours in BLOCK.items():
                out[f"{prefix}.{i}.{theirs}.weight"] = f"{STACKS[prefix]}.{i}.{ours}.weight"
    for theirs, ours in CROSS.items():
        out[f"model.local_encoder.cross_attn_layers.0.{theirs}.weight"] = f"encoder.pool.{ours}.weight"
        for j in range(b.decoder.n_layers if b.decoder_cross == "every_layer" else 1):
            where = f"decoder.cross.{j}" if b.decoder_cross == "every_layer" else "decoder.cross"
            out[f"model.local_decoder.cross_attn_layers.{j}.{theirs}.weight"] = f"{where}.{ours}.weight"
    out.update(VOCAB_ROWS)
    return out


def _rope_parts(cfg: RunConfig) -> dict[str, TransformerConfig]:
    """Our stack prefix -> its config, for every part with RoPE."""
    b = cfg.blt
    parts = {"encoder.stack.layers": b.encoder, "latent.stack.layers": b.latent, "decoder.stack.layers": b.decoder}
    if cfg.entropy_model is not None:
        parts["entropy_model.stack.layers"] = cfg.entropy_model
    return parts


def _rope_order(cfg: RunConfig, ours: str) -> torch.Tensor | None:
    """The row order of a q or k projection of ours (None for every other tensor)."""
    for prefix, part in _rope_parts(cfg).items():
        if ours.startswith(prefix + ".") and ours.endswith(("attn.wq.weight", "attn.wk.weight")):
            heads = part.n_heads if ours.endswith("wq.weight") else part.kv_heads
            return rope_rows(part.head_dim, heads)
    return None


def to_ours(cfg: RunConfig, tensors: dict[str, torch.Tensor], permute_rope: bool = True) -> dict[str, torch.Tensor]:
    """Released tensors (by released name) -> our state dict. The hash tables are views."""
    names = _names(cfg)
    state = {}
    for theirs, tensor in tensors.items():
        if theirs == HASH_TABLE:
            buckets = cfg.blt.hash_buckets
            for c in range(tensor.shape[0] // buckets):
                state[f"encoder.embed.tables.{c}.weight"] = tensor[c * buckets : (c + 1) * buckets]
            continue
        if theirs not in names:
            raise UserError(f"the checkpoint holds a tensor this architecture has no place for: {theirs}")
        ours = names[theirs]
        if theirs in VOCAB_ROWS:
            tensor = tensor[RELEASED_NUMBERING]
        order = _rope_order(cfg, ours) if permute_rope else None
        state[ours] = tensor if order is None else tensor[order]
    return state


def to_hf(cfg: RunConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> released tensors (contiguous copies, ready for safetensors)."""
    ours_to_theirs = {ours: theirs for theirs, ours in _names(cfg).items()}
    out, tables = {}, []
    for ours, tensor in state.items():
        if ours.startswith("encoder.embed.tables."):
            tables.append((int(ours.split(".")[3]), tensor))
            continue
        theirs = ours_to_theirs.get(ours)
        if theirs is None:
            raise UserError(f"no released tensor corresponds to {ours}")
        order = _rope_order(cfg, ours)
        if order is not None:
            tensor = tensor[torch.argsort(order)]
        if theirs in VOCAB_ROWS:
            tensor = tensor[torch.argsort(RELEASED_NUMBERING)]
        out[theirs] = tensor.contiguous()
    if tables:
        out[HASH_TABLE] = torch.cat([t for _, t in sorted(tables, key=lambda x: x[0])])
    return out


def open_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a HF checkpoint directory, memory-mapped (nothing is read until used)."""
    path = Path(path)
    if (path / INDEX_FILE).is_file():
        try:
            shards = sorted(set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{path}/{INDEX_FILE} is not a safetensors index") from None
    elif (path / WEIGHTS_FILE).is_file():
        shards = [WEIGHTS_FILE]
    else:
        raise UserError(f"{path} holds no {WEIGHTS_FILE} (or {INDEX_FILE})")
    tensors = {}
    for shard in shards:
        if not (path / shard).is_file():
            raise UserError(f"{path} is missing the shard {shard} named in {INDEX_FILE}")
        try:
            with safe_open(str(path / shard), framework="pt") as f:  # zero-copy: views of the mapped file
                tensors.update({name: f.get_tensor(name) for name in f.keys()})
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path / shard} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return tensors


def hf_config(cfg: RunConfig) -> dict:
    """The config.json of a run the released architecture can express (UserError naming the
    first option it cannot)."""
    b, e = cfg.blt, cfg.entropy_model
    p = cfg.patching
    checks = {
        "blt.vocab must be 'released'": b.vocab != "released",
        "blt.hash_order must be 'oldest_first'": b.hash_order != "oldest_first",
        "blt.cross_residual must be 'double'": b.cross_residual != "double",
        "blt.encoder_cross must be 'last'": b.encoder_cross != "last",
        "blt.encoder.final_norm must be false": b.encoder.final_norm is not False,
        "blt.latent.final_norm must be false": b.latent.final_norm is not False,
        "blt.decoder.final_norm must be true": b.decoder.final_norm is False,
        "blt.latent_projection must be 'when_widths_differ' when k x encoder width equals the latent width":
            b.latent_projection == "always" and b.k * b.encoder.dim == b.latent.dim,
        "blt.decoder.dim must equal blt.encoder.dim": b.decoder.dim != b.encoder.dim,
        "blt.encoder.window must equal blt.decoder.window": b.encoder.window != b.decoder.window,
        "blt.latent.window must be null": b.latent.window is not None,
        "patching.kind must be 'entropy' or 'byte'": p.kind not in ("entropy", "byte"),
        "patching.max_patch_length must be null": p.max_patch_length is not None,
        "entropy_model.vocab must be 'released'": e is not None and e.vocab != "released",
        "entropy_model.final_norm must be true": e is not None and e.final_norm is False,
    }
    bad = [name for name, is_bad in checks.items() if is_bad]
    if bad:
        raise UserError(f"the Hugging Face BLT format cannot express this run: {bad[0]}")

    def part(t: TransformerConfig, **extra) -> dict:
        return dict(hidden_size=t.dim, num_attention_heads=t.n_heads, num_key_value_heads=t.kv_heads,
                    num_hidden_layers=t.n_layers, intermediate_size=t.hidden_dim, rms_norm_eps=t.norm_eps,
                    rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta}, **extra)

    out = dict(
        model_type="blt", architectures=["BltForCausalLM"], vocab_size=260, use_cache=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
        cross_attn_k=b.k, local_attention_window_len=b.encoder.window,
        encoder_hash_byte_group_size=list(b.hash_ngram_sizes), encoder_hash_byte_group_vocab=b.hash_buckets,
        encoder_hash_byte_group_nb_functions=b.n_hash_functions, max_patch_length=None,
        patching_mode="entropy", patch_in_forward=p.kind == "entropy",
        patching_threshold=p.theta if p.kind == "entropy" else TOP_DEFAULTS["patching_threshold"],
        max_position_embeddings=b.latent_span,
        encoder_config=part(b.encoder, cross_attn_all_layers=False, cross_attn_k=b.k, vocab_size=260,
                            hidden_size_global=b.latent.dim, max_position_embeddings=b.context),
        decoder_config=part(b.decoder, cross_attn_all_layers=b.decoder_cross == "every_layer", cross_attn_k=b.k,
                            vocab_size=260, hidden_size_global=b.latent.dim, max_position_embeddings=b.context),
        global_config=part(b.latent, max_position_embeddings=b.latent_span),
    )
    if e is not None:
        out["patcher_config"] = part(e, sliding_window=e.window, vocab_size=260, max_position_embeddings=e.context)
    return out


def export(model, cfg: RunConfig, out_dir) -> Path:
    """Write a run's model as a Hugging Face BLT directory (config.json, model.safetensors) that
    `transformers.BltForCausalLM.from_pretrained` loads; the directory appears whole or not at all."""
    config = hf_config(cfg)
    tensors = to_hf(cfg, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not empty; choose a new directory for the export")
    tmp = temporary_name(out_dir)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
