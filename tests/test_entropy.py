"""Entropies (alignment, windowing, row independence, the entropy file), calibration, BPE, CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED_DATA
from blt.cli import main
from blt.data.corpus import load_corpus
from blt.data.stream import WindowSampler
from blt.errors import UserError
from blt.evaluation.entropies import compute_entropies, split_entropies
from blt.evaluation.scorer import byte_lm_scores, document_signals
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.patching.bpe import BPETrie, load_bpe_vocab, save_bpe_vocab, train_bpe
from blt.patching.calibration import calibrate_config, calibration_rows
from blt.patching.entropy import online_entropies, prediction_entropies
from blt.patching.entropy_file import load_entropy_file
from blt.patching.patchers import PatcherConfig, build_patcher, mean_patch_size, patch_lengths
from blt.runs.kind_blt import write_run_entropies as write_entropy_file
from blt.vocab import BOS_ID, EOS_ID

SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"


def tiny_model(seed=0, context=64, window=16) -> ByteLM:
    torch.manual_seed(seed)
    model = ByteLM(ByteLMConfig(dim=32, n_layers=1, n_heads=2, context=context, window=window))
    model.init_weights()
    return model.eval()


def random_docs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n).astype(np.uint8) for n in lengths]


# ---------------------------------------------------------------- entropies


def test_prediction_entropies_alignment():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 259) * 3
    h = prediction_entropies(logits)
    assert h.shape == (2, 6)
    assert torch.all(h[:, 0] == 0)
    want = torch.distributions.Categorical(logits=logits).entropy()  # (2, 5): predicts q = 1..5
    assert torch.allclose(h[:, 1:], want, atol=1e-5)


def test_compute_entropies_rows_independent():
    model = tiny_model()
    docs = random_docs([50, 5, 1, 90, 0, 17])
    together = compute_entropies(model, docs, batch_size=5, chunk=24)  # windowed chunks, ragged rows
    for doc, ent in zip(docs, together):
        alone = compute_entropies(model, [doc], batch_size=1, chunk=24)[0]
        assert ent.shape == (len(doc) + 1,)
        np.testing.assert_allclose(ent, alone, rtol=0, atol=1e-6)
    reordered = compute_entropies(model, docs[::-1], batch_size=3, chunk=24)[::-1]
    for a, b in zip(together, reordered):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_compute_entropies_match_one_forward_over_the_document():
    model = tiny_model(window=16)
    docs = random_docs([150, 9], seed=1)
    chunked = compute_entropies(model, docs, batch_size=2, chunk=20)
    for doc, ent in zip(docs, chunked):
        ids = torch.tensor([BOS_ID, *doc.tolist(), EOS_ID])[None]  # predicts bytes and the EOS
        online = online_entropies(model, ids)[0, 1:]  # same sliding window, one pass
        np.testing.assert_allclose(ent, online.numpy(), rtol=0, atol=1e-4)


def test_online_entropies_reset_at_documents_and_rows():
    model = tiny_model()
    a, b = random_docs([20, 30], seed=2)
    both = torch.tensor([BOS_ID, *a.tolist(), EOS_ID, BOS_ID, *b.tolist()])[None]
    alone = torch.tensor([BOS_ID, *b.tolist()])[None]
    h_both, h_alone = online_entropies(model, both), online_entropies(model, alone)
    assert torch.allclose(h_both[0, 22:], h_alone[0], atol=1e-5)  # b never sees a
    assert h_both[0, 22] == 0  # the BOS position
    batch = torch.cat([both, torch.cat([alone, torch.full((1, 22), EOS_ID)], 1)])  # rows of other lengths
    assert torch.allclose(online_entropies(model, batch)[0], h_both[0], atol=1e-6)


def test_byte_scores_equal_one_forward_within_the_context():
    model = tiny_model(window=None, context=256)
    doc = random_docs([40], seed=3)[0]
    ids = torch.tensor([BOS_ID, *doc.tolist()])[None]
    with torch.no_grad():
        logp = F.log_softmax(model(ids[:, :-1]), dim=-1)[0]  # (40, V)
    want = -logp[torch.arange(40), ids[0, 1:]]
    np.testing.assert_allclose(byte_lm_scores(model, [doc])[0], want.numpy(), atol=1e-5)


# ---------------------------------------------------------------- entropy file


@pytest.fixture()
def corpus_dir(tmp_path, blt_cache):
    d = tmp_path / "corpus"
    d.mkdir()
    rng = np.random.default_rng(4)
    for i, n in enumerate([400, 0, 90, 250]):
        (d / f"f{i}.txt").write_bytes(bytes(rng.choice(list(b"the cat, a hat.\n"), n).astype(np.uint8)))
    return d


def test_entropy_file_round_trip(entropy_run, corpus_dir, tmp_path):
    run, model = entropy_run
    corpus = load_corpus(str(corpus_dir), "60/20/20")
    stats = write_entropy_file(run, corpus, tmp_path / "ent", progress=False)
    assert stats["bytes"] == 740
    meta = json.loads((tmp_path / "ent" / "entropies.json").read_text())
    assert meta["model"]["dim"] == 32 and meta["corpus"]["bytes"] == 740
    assert meta["signals"] == ["entropy", "surprisal"]
    loaded = load_entropy_file(tmp_path / "ent", corpus)
    totals = {"entropy": 0.0, "surprisal": 0.0}
    for signal in totals:
        data, _ = loaded.values[signal]
        assert data.dtype == np.float16 and len(data) == 740
        for name in corpus.split_names:
            want = split_entropies(model, corpus.split(name), signal=signal)  # documents restart at the cuts
            got = loaded.split(name, signal)
            np.testing.assert_allclose(got.data.astype(np.float32), want.data, atol=4e-3, rtol=2e-3)
            np.testing.assert_allclose(got.eos.astype(np.float32), want.eos, atol=4e-3, rtol=2e-3)
            totals[signal] += float(want.data.sum()) + (float(want.eos.sum()) if signal == "surprisal" else 0.0)
    assert stats["mean_entropy"] == pytest.approx(totals["entropy"] / 740, rel=1e-5)
    # surprisals: the bytes' nats, shifted one position on (the last byte's onto the EOS)
    assert stats["mean_surprisal"] == pytest.approx(totals["surprisal"] / 740, rel=1e-5)
    docs = [d for name in corpus.split_names for d in corpus.split(name).documents() if len(d)]
    nats = float(sum(x.sum(dtype=np.float64) for x in byte_lm_scores(model, docs)))
    assert totals["surprisal"] == pytest.approx(nats, rel=1e-5)
    # the EOS entropies feed the sampler's EOS positions
    split = corpus.split("train")
    assert len(loaded.split("train").eos) == int((np.diff(split.docs) > 0).sum())


def test_entropy_file_without_surprisals_asks_to_recompute(entropy_run, corpus_dir, tmp_path):
    """A file written before surprisals were stored still serves entropies."""
    run, _ = entropy_run
    corpus = load_corpus(str(corpus_dir), "60/20/20")
    write_entropy_file(run, corpus, tmp_path / "ent", progress=False)
    meta_path = tmp_path / "ent" / "entropies.json"
    meta = json.loads(meta_path.read_text())
    del meta["signals"]
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "ent" / "surprisals.f16").unlink()
    old = load_entropy_file(tmp_path / "ent", corpus)
    assert len(old.split("train").data) == corpus.split("train").n_bytes
    with pytest.raises(UserError, match="no surprisal values .* recompute"):
        old.split("train", "surprisal")


def test_entropy_file_refuses_another_corpus(entropy_run, corpus_dir, tmp_path):
    run, _ = entropy_run
    write_entropy_file(run, load_corpus(str(corpus_dir), "60/20/20"), tmp_path / "ent", progress=False)
    with pytest.raises(UserError, match="another corpus"):
        load_entropy_file(tmp_path / "ent", load_corpus(str(corpus_dir), "80/10/10"))
    (corpus_dir / "f2.txt").write_bytes(b"changed")
    with pytest.raises(UserError, match="another corpus"):
        load_entropy_file(tmp_path / "ent", load_corpus(str(corpus_dir), "60/20/20"))
    with pytest.raises(UserError, match="no entropy file"):
        load_entropy_file(tmp_path / "nowhere", load_corpus(str(corpus_dir), "60/20/20"))


# ---------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def trained_model():
    """A briefly trained tiny byte LM and 4 documents of held-out Shakespeare (val split)."""
    corpus = load_corpus(str(SHAKESPEARE))
    torch.manual_seed(0)
    model = ByteLM(ByteLMConfig(dim=32, n_layers=1, n_heads=2, context=32, window=16))
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sampler = WindowSampler(corpus.split("train"), 32, 8, seed=0)
    for step in range(40):
        loss, _ = model.loss(*sampler.batch(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = corpus.split("val")
    docs = [np.asarray(val.data[i * 3000 : (i + 1) * 3000]) for i in range(4)]
    return model.eval(), docs


@pytest.fixture(scope="module")
def trained_entropies(trained_model):
    """The trained model's entropies over the held-out documents."""
    model, docs = trained_model
    return docs, compute_entropies(model, docs, batch_size=8)


@pytest.mark.parametrize("kind", ["entropy", "relative"])
@pytest.mark.parametrize("target", [3.0, 4.5, 6.0])
def test_calibration_hits_target(trained_entropies, kind, target):
    docs, ents = trained_entropies
    cfg, achieved = calibrate_config(PatcherConfig(kind=kind), docs, ents, target)
    assert abs(achieved / target - 1) <= 0.03
    ids, ent = calibration_rows(docs, ents)  # re-patch independently with the returned threshold
    starts = build_patcher(cfg).starts(ids, ent)
    assert mean_patch_size(starts, ids < 256) == pytest.approx(achieved)


@pytest.mark.parametrize("target", [3.0, 4.5, 6.0])
def test_equal_info_calibration_hits_target(trained_model, target):
    model, docs = trained_model
    surprisals = document_signals(model, docs, "surprisal", batch_size=8)
    cfg, achieved = calibrate_config(PatcherConfig(kind="equal_info", max_patch_length=12), docs, surprisals, target)
    assert abs(achieved / target - 1) <= 0.03 and cfg.budget > 0
    ids, ent = calibration_rows(docs, surprisals)
    starts = build_patcher(cfg).starts(ids, ent)
    assert mean_patch_size(starts, ids < 256) == pytest.approx(achieved)
    assert int(patch_lengths(starts).max()) <= 12
    # equal information: patches hold about equally many nats, far more equally than static patches
    def information(starts):  # nats of each patch's bytes: position q carries the surprisal of byte q-1
        patch = starts[0].long().cumsum(0) - 1  # (T+1,)
        info = torch.zeros(int(starts.sum())).scatter_add_(0, patch[:-1], ent[0, 1:])
        return info[info > 0]  # BOS patches hold no byte

    static = build_patcher(PatcherConfig(kind="static", patch_size=round(target))).starts(ids, ent)
    assert information(starts).std() < 0.6 * information(static).std()


def test_calibration_with_max_patch_length_and_combined(trained_entropies):
    docs, ents = trained_entropies
    cfg, achieved = calibrate_config(PatcherConfig(kind="entropy", max_patch_length=6), docs, ents, 4.5)
    assert abs(achieved / 4.5 - 1) <= 0.03
    ids, ent = calibration_rows(docs, ents)
    assert int(patch_lengths(build_patcher(cfg).starts(ids, ent)).max()) <= 6
    cfg, achieved = calibrate_config(PatcherConfig(kind="entropy_relative", theta_r=-0.5), docs, ents, 4.5)
    assert abs(achieved / 4.5 - 1) <= 0.03 and cfg.theta is not None
    with pytest.raises(UserError, match="out of reach"):
        calibrate_config(PatcherConfig(kind="entropy", max_patch_length=6), docs, ents, 7.0)


# ---------------------------------------------------------------- BPE


def test_bpe_training_is_deterministic_and_round_trips(tmp_path):
    data = SHAKESPEARE.read_bytes()
    tokens = train_bpe(data, 400, sample_bytes=100_000)
    assert tokens == train_bpe(data, 400, sample_bytes=100_000)
    assert len(tokens) == 400 and tokens[:256] == [bytes([b]) for b in range(256)]
    assert len(set(tokens)) == 400 and b" the" in tokens
    assert load_bpe_vocab(save_bpe_vocab(tokens, tmp_path / "bpe_vocab.json")) == tokens
    with pytest.raises(UserError):
        load_bpe_vocab(tmp_path / "missing.json")
    trie = BPETrie(tokens)
    assert trie.is_proper_prefix(b" th") and not trie.is_proper_prefix(b"\x00\x01")


def test_bpe_training_takes_any_bytes():
    rng = np.random.default_rng(5)
    data = bytes(rng.integers(0, 256, 20_000).astype(np.uint8)) * 3  # repeats make merges
    tokens = train_bpe(data, 300)
    assert len(tokens) == 300 and all(len(t) > 1 for t in tokens[256:])


# ---------------------------------------------------------------- commands


def test_entropies_and_patches_commands(entropy_run, corpus_dir, tmp_path, capsysbinary):
    run, _ = entropy_run
    out = tmp_path / "ent"
    assert main(["entropies", str(run), "--data", str(corpus_dir), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsysbinary.readouterr().out.decode().strip().splitlines()[-1])
    assert summary["bytes"] == 740 and (out / "entropies.f16").is_file()

    text = tmp_path / "in.txt"
    text.write_bytes(SHAKESPEARE.read_bytes()[:600])
    assert main(["patches", str(run), "--input", str(text), "--target-patch-size", "3", "--color", "never"]) == 0
    lines = capsysbinary.readouterr().out.decode("utf-8", "replace").splitlines()
    assert "calibrated on this file" in lines[-1]
    mean = float(lines[-1].split()[3])
    shown = "\n".join(lines[:-1])
    assert abs(mean / 3 - 1) <= 0.03
    assert shown.replace("|", "") == SHAKESPEARE.read_bytes()[:600].decode().replace("|", "")
    assert shown.count("|") == pytest.approx(600 / mean, abs=1)

    assert main(["patches", str(run), "--input", str(text), "--kind", "space", "--color", "never"]) == 0
    assert "SpacePatcher" in capsysbinary.readouterr().out.decode().splitlines()[-1]
    assert main(["patches", str(run), "--input", str(tmp_path / "none.txt")]) == 2
