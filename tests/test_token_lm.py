"""The BPE-token baseline: an exact byte-level tokenizer, token-level causality, bits per BYTE
accounting, cached token splits and their sampler, and a tiny `model_kind: bpe` run that
trains, reloads, evaluates and resumes without retraining its tokenizer."""
from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from blt.config import from_dict
from blt.data import bpe
from blt.data.corpus import ByteSplit, load_corpus
from blt.data.stream import ShardPlan
from blt.data.tokens import BOS, EOS, PAD, TokenWindowSampler, cached_tokens, load_tokenizer, train_tokenizer
from blt.errors import UserError
from blt.evaluation.bpb import evaluate_split, split_documents
from blt.evaluation.flops import bpe_lm_flops
from blt.models.masks import attention_mask
from blt.models.token_lm import TokenLM, TokenLMConfig
from blt.evaluation.scorer import token_lm_scores
from blt.runs import kind_bpe
from blt.runs.checkpoint import latest_checkpoint
from blt.runs.config import RunConfig
from blt.runs.evaluate import evaluate_run
from blt.runs.kinds import KINDS, build_model
from blt.runs.loading import open_run
from blt.train import loop
from blt.train.metrics import read_metrics

VOCAB = 320


def _text(n: int) -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    return ((root / "argparse.py").read_bytes() + (root / "textwrap.py").read_bytes())[:n]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(_text(40_000), VOCAB)


def tiny_model(tok, context=24, window=None, vocab=VOCAB) -> TokenLM:
    cfg = TokenLMConfig(dim=32, n_layers=2, n_heads=2, context=context, window=window, vocab_size=vocab)
    torch.manual_seed(0)
    model = TokenLM(cfg, tok)
    model.init_weights()
    return model.eval()


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_any_bytes_exactly(tok, monkeypatch):
    rng = np.random.default_rng(0)
    docs = [
        _text(3000),
        bytes(rng.integers(0, 256, 3000, dtype=np.uint8)),  # binary
        b"\xff\xfe\x80abc\xc3 \xed\xa0\x80 \xf4\x90\x80\x80",  # invalid UTF-8 of several kinds
        "caf\u00e9 \u27e8bos\u27e9 \u27e8eos\u27e9 \u3000 \u00a0\r\n\t".encode(),  # the specials' names, as text
        b"",
        b" ",
        b"\n\n   \n",
    ]
    for doc in docs:
        ids = tok.encode(doc)
        assert ids.dtype == np.int64 and tok.decode(ids) == doc, doc[:40]
        assert not np.isin(ids, [BOS, EOS, PAD]).any()  # no text spells a special token
    assert len(tok.encode(docs[0])) < 0.8 * len(docs[0])  # merges are used: the round trip is not trivial
    # long documents are encoded in slices, to the very same ids
    whole = [tok.encode(d) for d in docs[:2]]
    monkeypatch.setattr(bpe, "SLICE_CHARS", 100)
    for doc, ids in zip(docs[:2], whole):
        np.testing.assert_array_equal(tok.encode(doc), ids)


def test_tokens_never_cross_pieces(tok):
    """Every boundary of the GPT-2-like piece rule is a token boundary."""
    doc = _text(4000)
    pieces = bpe.PIECE_RULE.findall(doc.decode("latin-1"))
    piece_ends = set(np.cumsum([len(p) for p in pieces]).tolist())
    token_ends = set(np.cumsum([len(tok.token_bytes[i]) for i in tok.encode(doc)]).tolist())
    assert piece_ends <= token_ends
    assert len(token_ends) < 0.8 * len(doc)  # and tokens are longer than bytes


def test_tokenizer_is_deterministic_saved_exactly_and_checked(tok, tmp_path):
    again = train_tokenizer(_text(40_000), VOCAB)
    assert again.sha256 == tok.sha256
    assert 259 < tok.vocab_size <= VOCAB
    assert tok.token_bytes[:3] == [b"", b"", b""]
    assert sorted(tok.token_bytes[3:259]) == [bytes([b]) for b in range(256)]  # then every single byte
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(path)
    assert loaded.sha256 == tok.sha256 and loaded.token_bytes == tok.token_bytes
    doc = _text(2000)
    np.testing.assert_array_equal(loaded.encode(doc), tok.encode(doc))
    assert train_tokenizer(_text(40_000), VOCAB + 40).sha256 != tok.sha256

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(UserError, match="at least 259"):
        train_tokenizer(b"abc", 200)


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("window,docs", [(None, False), (5, False), (None, True)])
def test_token_lm_is_causal(tok, window, docs):
    """Changing token j never changes the logits at positions before j."""
    model = tiny_model(tok, window=window)
    torch.manual_seed(1)
    ids = torch.randint(3, tok.vocab_size, (1, 20))
    ids[0, 0] = BOS
    if docs:
        ids[0, 8], ids[0, 9] = EOS, BOS
    with torch.no_grad():
        base = model(ids)
        later_changed = False
        for j in (1, 5, 9, 14, 19):
            changed = ids.clone()
            changed[0, j] = 3 + (changed[0, j] - 2) % (tok.vocab_size - 3)
            out = model(changed)
            torch.testing.assert_close(out[:, :j], base[:, :j], atol=0, rtol=0)
            later_changed |= not torch.allclose(out[:, j:], base[:, j:])
    assert later_changed  # the perturbation does reach later positions: the check above can fail


def test_scores_sum_to_the_token_nll(tok):
    """Per-byte nats hold each token's nats on its last byte; a document's sum is its token NLL."""
    model = tiny_model(tok, context=64)
    rng = np.random.default_rng(0)
    text = _text(6000)
    docs = [np.frombuffer(text[a : a + n], dtype=np.uint8) for a, n in ((0, 1), (100, 37), (900, 120), (3000, 5))]
    docs.append(rng.integers(0, 256, 40, dtype=np.uint8))
    got = token_lm_scores(model, docs, batch_size=2)
    with torch.no_grad():
        for doc, per_byte in zip(docs, got):
            ids = tok.encode(doc)
            assert len(ids) + 1 <= 128  # one window: the direct computation below is exact
            seq = torch.from_numpy(np.concatenate([[BOS], ids]))[None]
            nll = F.cross_entropy(model(seq)[0, :-1], seq[0, 1:], reduction="sum").item()
            assert per_byte.shape == (len(doc),)
            assert float(per_byte.sum(dtype=np.float64)) == pytest.approx(nll, rel=1e-5)
            ends = np.cumsum([len(tok.token_bytes[i]) for i in ids]) - 1
            assert set(np.flatnonzero(per_byte).tolist()) <= set(ends.tolist())
    # a document's values do not depend on what else is in its batch
    alone = token_lm_scores(model, docs[2:3], batch_size=1)[0]
    np.testing.assert_allclose(alone, got[2], rtol=1e-5, atol=1e-6)


def test_long_documents_use_the_windowed_context(tok):
    """Past the context, each chunk runs with the W-1 tokens before it (W = min(window, context))."""
    model = tiny_model(tok, context=12, window=6)
    W, chunk = 6, 10
    doc = _text(400)
    ids = tok.encode(doc)
    assert len(ids) > 3 * chunk
    lengths = model.token_lengths.numpy()
    per_byte = token_lm_scores(model, [np.frombuffer(doc, np.uint8)], chunk=chunk)[0]
    got = per_byte[np.cumsum(lengths[ids]) - 1]  # each token's nats sit on its last byte
    seq = torch.from_numpy(np.concatenate([[BOS], ids]))
    ref = []
    with torch.no_grad():
        for i in range(len(ids)):  # token i is predicted at input position i of BOS + ids
            start = max(0, (i // chunk) * chunk - W + 1)
            ctx = seq[start : i + 1][None]
            pos = torch.arange(ctx.shape[1])[None]
            logits = model(ctx, positions=pos, mask=attention_mask(pos, pos, W))[0, -1]
            ref.append(F.cross_entropy(logits, seq[i + 1]).item())
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert per_byte.sum(dtype=np.float64) == pytest.approx(sum(ref), rel=1e-5)


def test_loss_counts_scored_tokens_and_their_bytes(tok):
    model = tiny_model(tok)
    a, b = tok.encode(_text(200)[:60]), tok.encode(_text(900)[800:850])
    window = np.concatenate([[BOS], a, [EOS, BOS], b, [PAD, PAD]])
    ids, targets = torch.from_numpy(window[:-1])[None], torch.from_numpy(window[1:])[None]
    loss, stats = model.loss(ids, targets)
    scored = [i for i, t in enumerate(window[1:]) if t not in (BOS, PAD)]
    assert stats["targets"] == len(scored) == len(a) + len(b) + 1  # the EOS is scored
    assert stats["bytes"] == 60 + 50  # EOS, BOS and PAD stand for no bytes
    with torch.no_grad():
        logits = model(ids)[0]
    ref = F.cross_entropy(logits[scored], targets[0, scored])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_configs_and_sizes_are_checked(tok, tmp_path):
    with pytest.raises(UserError, match="bpe.vocab_size"):
        from_dict(RunConfig, {"model_kind": "bpe", "bpe": {"vocab_size": 100}})
    with pytest.raises(UserError, match="more than bpe.vocab_size"):
        TokenLM(TokenLMConfig(dim=32, n_layers=1, n_heads=2, vocab_size=259), tok)
    cfg = from_dict(RunConfig, {"model_kind": "bpe", "bpe": {"dim": 32, "n_layers": 1, "n_heads": 2, "context": 9}})
    assert cfg.context == 9
    with pytest.raises(UserError, match="run directory"):
        build_model(cfg)
    with pytest.raises(UserError, match="not found"):
        build_model(cfg, tmp_path)
    with torch.device("meta"):  # build on meta, allocate, then initialise: the training path
        model = TokenLM(TokenLMConfig(dim=32, n_layers=1, n_heads=2, vocab_size=VOCAB + 8), tok)
    model.to_empty(device="cpu")
    model.init_weights()
    lengths = model.token_lengths.tolist()
    assert lengths[:3] == [0, 0, 0] and lengths[3:259] == [1] * 256 and lengths[-8:] == [0] * 8
    assert lengths[: tok.vocab_size] == [len(t) for t in tok.token_bytes]
    with pytest.raises(UserError, match="generation is not implemented"):
        KINDS["bpe"].generate(model, [b"def "], None)


# ---------------------------------------------------------------- token splits and windows


def test_cached_tokens_lay_out_documents_and_are_remade_when_stale(tok, tmp_path):
    text = _text(3000)
    cuts = [0, 500, 500, 1700, 3000]  # one empty document
    split = ByteSplit(np.frombuffer(text, dtype=np.uint8), np.array(cuts, dtype=np.int64))
    source = {"corpus": "x", "split": "train"}
    tokens = cached_tokens(tok, split, tmp_path / "tok" / "train", source)
    expect = np.concatenate([[BOS, *tok.encode(text[a:b]), EOS] for a, b in zip(cuts, cuts[1:]) if b > a])
    np.testing.assert_array_equal(np.asarray(tokens), expect)
    assert tokens.dtype == np.uint16
    stamp = (tmp_path / "tok" / "train.bin").stat().st_mtime_ns
    cached_tokens(tok, split, tmp_path / "tok" / "train", source)
    assert (tmp_path / "tok" / "train.bin").stat().st_mtime_ns == stamp  # reused
    other = train_tokenizer(_text(40_000), VOCAB + 30)
    remade = cached_tokens(other, split, tmp_path / "tok" / "train", source)
    assert len(remade) < len(tokens)  # a bigger vocabulary: the cache was rebuilt with it
    again = cached_tokens(other, split, tmp_path / "tok" / "train", {**source, "corpus": "y"})
    np.testing.assert_array_equal(np.asarray(again), np.asarray(remade))


def test_window_sampler_is_a_pure_function_of_its_arguments():
    tokens = np.arange(1000, dtype=np.uint16)
    s = TokenWindowSampler(tokens, seq_len=16, batch_size=4, seed=3, plan=ShardPlan(grad_accum=2))
    b = s.batch(5, 1)
    assert b["ids"].shape == b["targets"].shape == (4, 16) and b["ids"].dtype == torch.long
    assert torch.equal(b["targets"][:, :-1], b["ids"][:, 1:])  # next-token targets
    assert torch.equal(b["ids"][:, 1:] - b["ids"][:, :-1], torch.ones(4, 15, dtype=torch.long))  # contiguous
    assert torch.equal(TokenWindowSampler(tokens, 16, 4, 3, ShardPlan(grad_accum=2)).batch(5, 1)["ids"], b["ids"])
    for other in (s.batch(5, 0), s.batch(6, 1), TokenWindowSampler(tokens, 16, 4, 3, ShardPlan(1, 2, 2)).batch(5, 1)):
        assert not torch.equal(other["ids"], b["ids"])
    assert int(b["targets"].max()) <= 999
    with pytest.raises(UserError, match="fewer than one window"):
        TokenWindowSampler(tokens[:16], 16, 4, 0)


# ---------------------------------------------------------------- a tiny run


def bpe_cfg(corpus: Path, **train) -> RunConfig:
    return from_dict(RunConfig, {
        "model_kind": "bpe",
        "bpe": {"dim": 32, "n_layers": 1, "n_heads": 2, "context": 16, "vocab_size": VOCAB},
        "data": {"corpus": str(corpus), "batch_size": 8},
        "optim": {"lr": 1e-2, "warmup_steps": 4},
        "train": {"steps": 30, "log_every": 1, "eval_every": 0, "eval_bytes": 2000, "ckpt_every": 15,
                  "progress": False, **train},
    })


def test_tiny_bpe_run_learns_reloads_evaluates_and_resumes(text_file, tmp_path, monkeypatch):
    cfg = bpe_cfg(text_file)
    out = tmp_path / "run"
    result = loop.train(cfg, out)

    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0, (rows[0]["loss"], rows[-1]["loss"])
    assert all(r["bytes"] > r["targets"] for r in rows)  # targets are tokens of more than a byte on average
    tokenizer = load_tokenizer(out / "tokenizer.json")
    assert (out / "tokens" / "train.bin").is_file() and tokenizer.vocab_size <= VOCAB

    run = open_run(out, "cpu")
    assert isinstance(run.model, TokenLM) and run.cfg == cfg
    val = load_corpus(str(text_file)).split("val")
    ev = evaluate_split(run.scores, val, 2000)
    assert ev["bytes"] == 2000 and ev["bpb"] == pytest.approx(result["val_bpb"], rel=1e-6)
    assert 0 < ev["bpb"] < 8

    summary = evaluate_run(run, max_bytes=2000)
    bpt = tokenizer.bytes_per_token(split_documents(val, 2000))
    assert summary["bytes_per_token"] == pytest.approx(bpt) and bpt > 1.2
    assert summary["flops_per_byte"] == pytest.approx(bpe_lm_flops(cfg.bpe, VOCAB, bpt).forward_per_byte)
    per_token = KINDS["bpe"].train_flops_per_position(cfg, {})
    assert per_token == pytest.approx(bpe_lm_flops(cfg.bpe, VOCAB, bpt).train_per_byte * bpt)

    # resume from the middle checkpoint: the tokenizer is reused, and the run ends where it did
    final = load_file(str(latest_checkpoint(out) / "model.safetensors"))
    tok_stamp = (out / "tokenizer.json").stat().st_mtime_ns
    (out / "checkpoints" / "LATEST").write_text("step_0000015")
    monkeypatch.setattr(kind_bpe, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer retrained"))
    again = loop.train(cfg, out, resume=True)
    assert again["step"] == 30 and (out / "tokenizer.json").stat().st_mtime_ns == tok_stamp
    resumed = load_file(str(latest_checkpoint(out) / "model.safetensors"))
    for k in final:
        assert torch.equal(final[k], resumed[k]), k
    assert math.isclose(again["val_bpb"], result["val_bpb"], rel_tol=1e-6)
