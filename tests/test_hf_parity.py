"""Released-BLT compatibility: Hugging Face BLT checkpoints load with exact parity, and our BLTs
export to that format.

Small random `transformers.BltConfig`s (a local window shorter than the inputs, GQA, a global width
that needs the k x encoder -> global projection, and one that does not), saved with
`save_pretrained`, loaded by the toolkit: patcher entropies (1e-5), patch starts (identical),
logits (1e-4, fp32) and 64 greedy bytes (HF `generate(use_cache=False)` vs our incremental and
slow paths) agree on several byte strings, one not UTF-8. Each architecture difference switched
off alone moves the logits far past that tolerance, so the test would catch it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from blt.inference.args import GenerationArgs  # noqa: E402
from blt.inference.blt import generate_blt  # noqa: E402
from blt.inference.slow import generate_slow  # noqa: E402
from blt.models.blt import BLTConfig, ByteLatentTransformer  # noqa: E402
from blt.models.byte_lm import ByteLM, ByteLMConfig  # noqa: E402
from blt.models.transformer import TransformerConfig  # noqa: E402
from blt.patching.entropy import online_entropies, window_starts  # noqa: E402
from blt.errors import UserError  # noqa: E402
from blt.patching.patchers import EntropyPatcher, PatcherConfig  # noqa: E402
from blt.runs import hf_format  # noqa: E402
from blt.runs.config import RunConfig  # noqa: E402
from blt.runs.loading import load_model  # noqa: E402
from blt.vocab import RELEASED_NUMBERING, encode  # noqa: E402

SAMPLES = [
    b"Hello, hello world! Byte Latent Transformer, patched by entropy.",
    "h\u00e9llo w\u00f6rld \u2713 \u00fcber caf\u00e9 \u65e5\u672c".encode(),
    b"\xff\xfe\x00\x80 not utf-8: \xc3\x28 \xa0\xa1 end\n",
]


def hf_config(global_dim: int):
    """k = 2, local width 32: global 48 needs the 64 -> 48 projection, global 64 does not."""
    rope = lambda theta: {"rope_type": "default", "rope_theta": theta}  # noqa: E731
    local = dict(hidden_size=32, num_hidden_layers=2, rms_norm_eps=1e-5, rope_parameters=rope(500000.0),
                 max_position_embeddings=512, cross_attn_k=2, hidden_size_global=global_dim)
    return transformers.BltConfig(
        vocab_size=260, patch_in_forward=True, patching_mode="entropy", patch_size=4, patching_threshold=1.0,
        max_patch_length=None, local_attention_window_len=6, cross_attn_k=2,
        encoder_hash_byte_group_size=[3, 4, 5, 6], encoder_hash_byte_group_vocab=101,
        encoder_hash_byte_group_nb_functions=2, bos_token_id=1, eos_token_id=2, pad_token_id=3, use_cache=False,
        encoder_config=dict(local, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                            cross_attn_all_layers=False),
        decoder_config=dict(local, num_attention_heads=2, num_key_value_heads=1, intermediate_size=80,
                            cross_attn_all_layers=True),
        global_config=dict(hidden_size=global_dim, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                           intermediate_size=128, rms_norm_eps=1e-5, rope_parameters=rope(500000.0),
                           max_position_embeddings=512),
        patcher_config=dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                            intermediate_size=96, rms_norm_eps=1e-5, sliding_window=8, rope_parameters=rope(10000.0),
                            max_position_embeddings=512),
    )


def hf_ids(data: bytes) -> torch.Tensor:
    return torch.tensor([[1] + [b + 4 for b in data]])


@torch.no_grad()
def hf_patcher(model, ids):
    """The HF model's own patching: entropies (1, T) and patch start positions."""
    c = model.config
    ent, lengths, _ = model.model.patcher(ids, patch_size=c.patch_size, threshold=c.patching_threshold,
                                          max_patch_length=c.max_patch_length)
    starts = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), lengths[0].long()]), 0)[:-1]
    return ent, starts.tolist()


def build_hf(global_dim: int, seed: int = 0):
    """A random BltForCausalLM whose patcher gives patches of several lengths on SAMPLES."""
    torch.manual_seed(seed)
    model = transformers.BltForCausalLM(hf_config(global_dim)).eval()
    with torch.no_grad():
        model.model.patcher.lm_head.weight.mul_(12)  # random patcher logits are nearly flat: spread them
    ents = torch.cat([hf_patcher(model, hf_ids(s))[0][0, 1:] for s in SAMPLES])
    model.config.patching_threshold = round(float(ents.quantile(0.6)), 4)
    return model


@pytest.fixture(scope="module", params=[48, 64], ids=["with-projection", "no-projection"])
def checkpoint(request, tmp_path_factory):
    hf = build_hf(request.param)
    path = tmp_path_factory.mktemp(f"hf{request.param}")
    hf.save_pretrained(path)
    return hf, path


def ours_from_hf(hf_logits: torch.Tensor) -> torch.Tensor:
    """HF logits (..., 260) reordered into our ids (blt.vocab)."""
    return hf_logits[..., RELEASED_NUMBERING]


@torch.no_grad()
def our_forward(model, data: bytes):
    window = torch.cat([encode(data), torch.tensor([258])])[None]  # (1, T+1): a placeholder at T
    starts = window_starts(model, window)
    return model(window[:, :-1], starts)[0], starts[0], online_entropies(model.entropy_model, window)[0]


def test_loaded_checkpoint_matches_transformers(checkpoint):
    hf, path = checkpoint
    model, cfg = load_model(path)
    assert cfg.blt.arch == "released" and cfg.patching.theta == hf.config.patching_threshold
    assert (model.encoder.to_latent is not None) == (hf.config.global_config.hidden_size == 48)
    n_patches = set()
    for data in SAMPLES:
        ids = hf_ids(data)
        with torch.no_grad():
            want = hf(ids, use_cache=False).logits[0]  # (T, 260)
        hf_ent, hf_starts = hf_patcher(hf, ids)
        logits, starts, ent = our_forward(model, data)
        assert (ent[1:] - hf_ent[0]).abs().max() < 1e-5  # ours[q] predicts q; theirs[t] predicts t + 1
        assert torch.nonzero(starts).flatten().tolist() == hf_starts  # a trailing patch at T included
        assert (logits - ours_from_hf(want)).abs().max() < 1e-4
        n_patches.add(len(hf_starts))
    assert min(n_patches) > 3 and any(s < len(d) for s, d in zip(n_patches, SAMPLES))  # varied patches


def _mapping_of(address: int) -> tuple[str, set[str]]:
    """(path, VmFlags) of this process's memory mapping that holds address (/proc/self/smaps)."""
    path, inside = "", False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            inside, path = lo <= address < hi, head[5] if len(head) > 5 else ""
        elif inside and head[0] == "VmFlags:":
            return path, set(head[1:])
    return "", set()


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc/self/smaps")
def test_hash_tables_stay_mapped_without_read_ahead(checkpoint):
    """The hash tables are views of the checkpoint file (never copied), advised for random reads
    ('rr'): a released model's 6 GB of tables must not be read in around every row a byte uses."""
    _, path = checkpoint
    model, _ = load_model(path)
    table = model.encoder.embed.tables[0].weight
    mapped, flags = _mapping_of(table.data_ptr())
    assert mapped == str(path / "model.safetensors") and "rr" in flags


def test_greedy_bytes_match_transformers_generate(checkpoint):
    hf, path = checkpoint
    model, _ = load_model(path)
    for prompt in SAMPLES[::2]:
        with torch.no_grad():
            out = hf.generate(hf_ids(prompt), max_new_tokens=64, do_sample=False, use_cache=False,
                              suppress_tokens=[0, 1, 3], pad_token_id=3, eos_token_id=2)
        want = bytes(i - 4 for i in out[0, len(prompt) + 1 :].tolist() if i >= 4)
        args = GenerationArgs(64, temperature=0)
        assert generate_blt(model, [prompt], args)[0] == want
        assert generate_slow(model, [prompt], args)[0] == want
        assert len(want) > 8


@pytest.mark.parametrize("difference", ["numbering", "hash_order", "cross_residual", "encoder_final_norm",
                                        "latent_final_norm", "decoder_cross", "rope_layout"])
def test_each_difference_matters(checkpoint, difference):
    """One difference switched off alone moves the logits far past the parity tolerance."""
    hf, path = checkpoint
    cfg = released = hf_format.run_config(hf_format.read_config(path))
    permute = difference != "rope_layout"
    changes = {"hash_order": dict(hash_order="newest_first"), "cross_residual": dict(cross_residual="single"),
               "decoder_cross": dict(decoder_cross="first")}
    blt = dataclasses.replace(cfg.blt, **changes.get(difference, {}))
    if difference.endswith("final_norm"):
        part = difference.removesuffix("_final_norm")
        blt = dataclasses.replace(blt, **{part: dataclasses.replace(getattr(blt, part), final_norm=True)})
    cfg = dataclasses.replace(cfg, blt=blt)
    model = ByteLatentTransformer(blt)
    model.init_weights()  # then the checkpoint's weights; a norm it lacks keeps gain 1
    model.set_patching(EntropyPatcher(cfg.patching.theta), ByteLM(cfg.entropy_model))
    model.entropy_model.init_weights()
    state = hf_format.to_ours(released, hf_format.open_weights(path), permute_rope=permute)
    if difference == "decoder_cross":  # one cross-attention, before the first block: the first of theirs
        state = {k.replace("decoder.cross.0.", "decoder.cross."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in model.state_dict()}
    model.load_state_dict(state, strict=False)
    if difference.endswith("final_norm"):
        # a norm the checkpoint lacks gets a trained-like gain: with gain 1 a norm after the latent
        # is invisible (the decoder's cross-attention normalises its slots, whose scale it sets)
        with torch.no_grad():
            getattr(model, difference.removesuffix("_final_norm")).stack.norm.weight.uniform_(0.5, 1.5)
    if difference == "numbering":
        model.encoder.embed.hasher.numbering = None
    model.eval()
    data = SAMPLES[0]
    with torch.no_grad():
        want = ours_from_hf(hf(hf_ids(data), use_cache=False).logits[0])
    logits, _, _ = our_forward(model, data)
    assert (logits - want).abs().max() > 1e-2, difference


def test_export_round_trip(tmp_path):
    """An arch: released BLT of ours exports to a directory transformers loads, with our logits."""
    torch.manual_seed(3)
    def part(**kw):
        return TransformerConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                    "rope_theta": 500000.0, **kw})

    blt = BLTConfig(context=256, latent_context=128, encoder=part(window=8), latent=part(dim=48),
                    decoder=part(window=8), hash_ngram_sizes=[3, 4], n_hash_functions=2, hash_buckets=53,
                    arch="released")
    model = ByteLatentTransformer(blt)
    model.init_weights()
    entropy = ByteLM(ByteLMConfig(dim=32, n_layers=1, n_heads=2, context=256, window=16, vocab="released"))
    entropy.init_weights()
    with torch.no_grad():
        entropy.head.weight.mul_(12)
    model.set_patching(EntropyPatcher(5.0), entropy)
    model.eval()
    cfg = RunConfig(model_kind="blt", blt=blt, patching=PatcherConfig(kind="entropy", theta=5.0),
                    entropy_model=entropy.cfg)
    out = hf_format.export(model, cfg, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "blt"
    hf = transformers.BltForCausalLM.from_pretrained(out).eval()
    for data in SAMPLES:
        logits, starts, _ = our_forward(model, data)
        with torch.no_grad():
            want = ours_from_hf(hf(hf_ids(data), use_cache=False).logits[0])
        assert (logits - want).abs().max() < 1e-4
        assert torch.nonzero(starts).flatten().tolist() == hf_patcher(hf, hf_ids(data))[1]
    # and back: the exported directory loads into the toolkit with the same weights
    again, _ = load_model(out)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_what_the_format_cannot_express_is_named(tmp_path):
    cfg = RunConfig(model_kind="blt")  # arch: toolkit
    with pytest.raises(UserError, match="blt.vocab must be 'released'"):
        hf_format.hf_config(cfg)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="'llama' model"):
        load_model(tmp_path)
