"""The BLT network (blt.models.blt and its parts): shapes, patch bookkeeping, hashing, pooling,
row and document independence, initialisation, learning, and document scoring."""
import numpy as np
import pytest
import torch

from blt.config import from_dict
from blt.errors import UserError
from blt.models.blt import BLTConfig, ByteLatentTransformer, complete_starts
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.models.hash_ngram import HASH_PRIMES, ngram_hashes
from blt.models.latent import LatentTransformer, pack_rows
from blt.models.transformer import TransformerConfig
from blt.evaluation.scorer import blt_scores
from blt.patching.entropy import online_entropies, window_starts
from blt.patching.patchers import EntropyPatcher, SpacePatcher, StaticPatcher
from blt.vocab import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, encode

TEXT = b"the quick brown fox jumps over the lazy dog. "


def tiny_config(**kw) -> BLTConfig:
    parts = dict(
        encoder=TransformerConfig(dim=32, n_layers=1, n_heads=2, window=8),
        latent=TransformerConfig(dim=48, n_layers=1, n_heads=2),
        decoder=TransformerConfig(dim=32, n_layers=1, n_heads=2, window=8),
    )
    parts.update(kw)
    return BLTConfig(**{"context": 64, "hash_ngram_sizes": [3, 4, 5], "hash_buckets": 97, **parts})


def tiny_model(seed: int = 0, **kw) -> ByteLatentTransformer:
    torch.manual_seed(seed)
    model = ByteLatentTransformer(tiny_config(**kw))
    model.init_weights()
    return model


def random_starts(gen: torch.Generator, B: int, T1: int, p: float = 0.35) -> torch.Tensor:
    return torch.rand(B, T1, generator=gen) < p


def random_bytes(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=gen)


# ---- config ---------------------------------------------------------------------------------


def test_config_from_dict_and_validation():
    cfg = from_dict(BLTConfig, {"k": 3, "encoder": {"dim": 64, "n_heads": 4}, "hash_ngram_sizes": [3, 5]})
    assert cfg.k == 3 and cfg.encoder.dim == 64 and cfg.hash_ngram_sizes == [3, 5]
    assert cfg.latent_span == cfg.context
    bad = [
        {"k": 0},
        {"hash_ngram_sizes": [1, 3]},
        {"hash_ngram_sizes": [3, 3]},
        {"n_hash_functions": len(HASH_PRIMES) + 1},
        {"hash_buckets": 0},
        {"context": 1},
        {"latent_context": 0},
        {"latent": {"dim": 30, "n_heads": 4}},
        {"decoder": {"window": 0}},
    ]
    for override in bad:
        with pytest.raises(UserError):
            from_dict(BLTConfig, override)


# ---- bookkeeping and shapes -----------------------------------------------------------------


def test_forced_starts_and_decoder_rule():
    ids = torch.tensor([[BOS_ID, 5, 6, EOS_ID, BOS_ID, 7, 8]])  # inputs, T = 7
    starts = torch.zeros(1, 8, dtype=torch.bool)
    starts[0, 6] = True
    full = complete_starts(ids, starts)
    # q = 0, 1 always; BOS at 4; the byte after it at 5; the patcher's own start at 6
    assert full[0].nonzero().flatten().tolist() == [0, 1, 4, 5, 6]
    model = tiny_model()
    patch = full.long().cumsum(1) - 1  # [0, 1, 1, 1, 2, 3, 4, 4]
    dec = model.decoder_patches(patch)[0].tolist()
    # each prediction reads the last patch that closed at or before its input position
    for p in range(7):
        closed = [j for j in range(int(patch[0, -1]) + 1) if (patch[0] == j).nonzero().max() <= p]
        assert dec[p] == max(closed)


def test_shapes_ragged_rows_and_loss_stats():
    gen = torch.Generator().manual_seed(1)
    model = tiny_model()
    B, T = 3, 40
    ids = random_bytes(gen, B, T + 1)
    ids[:, 0] = BOS_ID
    starts = random_starts(gen, B, T + 1)
    starts[1] = True  # one byte per patch: the row with the most patches
    starts[2, 2:] = False  # one long patch
    logits = model(ids[:, :-1], starts)
    assert logits.shape == (B, T, VOCAB_SIZE) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    targets = ids[:, 1:].clone()
    targets[0, -3:] = PAD_ID
    targets[1, 5] = EOS_ID
    loss, stats = model.loss(ids[:, :-1], targets, starts)
    assert torch.isfinite(loss)
    assert stats["targets"] == B * T - 3 and stats["bytes"] == B * T - 4  # the EOS is scored, and no byte
    full = complete_starts(ids[:, :-1], starts)[:, 1:]
    expected = int((full & (targets < 256)).sum())
    assert stats["patches"] == expected
    assert stats["patches"] >= T - 1  # row 1 alone has a patch per scored byte


def test_init_on_meta_device_covers_every_weight():
    cfg = tiny_config()
    with torch.device("meta"):
        model = ByteLatentTransformer(cfg)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.fill_(float("nan"))
    model.init_weights()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.isfinite(t).all(), name
    ids = encode(TEXT)[None, :33]
    assert torch.isfinite(model(ids[:, :-1], torch.ones(1, 33, dtype=torch.bool))).all()


# ---- hash n-grams ---------------------------------------------------------------------------


def reference_hash(window: list[int], n: int, prime: int, buckets: int) -> int:
    """Polynomial hash of the n ids ending at the window's last position, in Python integers."""
    padded = [PAD_ID] * n + window
    h = sum(padded[-1 - i] * prime**i for i in range(n)) % 2**64
    if h >= 2**63:  # the int64 value with the same bits
        h -= 2**64
    return h % buckets


def test_hash_ngrams_match_wraparound_formula_and_left_padding():
    gen = torch.Generator().manual_seed(2)
    ids = random_bytes(gen, 2, 12)
    sizes, n_fns, buckets = [3, 5, 8], 2, 1009
    got = ngram_hashes(ids, sizes, n_fns, buckets)  # (B, T, 6)
    assert got.shape == (2, 12, 6)
    for b in range(2):
        for t in range(12):
            window = ids[b, : t + 1].tolist()
            want = [reference_hash(window, n, HASH_PRIMES[f], buckets) for f in range(n_fns) for n in sizes]
            assert got[b, t].tolist() == want


def test_hash_ngrams_are_causal_and_stop_at_documents():
    gen = torch.Generator().manual_seed(3)
    ids = random_bytes(gen, 1, 20)
    base = ngram_hashes(ids, [3, 4, 8], 1, 500)
    for j in range(20):
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 1) % 256
        h = ngram_hashes(changed, [3, 4, 8], 1, 500)
        assert torch.equal(h[:, :j], base[:, :j])
        assert not torch.equal(h[:, j], base[:, j])
    # a document inside a window hashes as if it stood alone
    doc = torch.cat([torch.tensor([[BOS_ID]]), ids[:, :9]], dim=1)
    window = torch.cat([ids[:, 10:], torch.tensor([[EOS_ID]]), doc], dim=1)
    alone = ngram_hashes(doc, [3, 4, 8], 1, 500)
    assert torch.equal(ngram_hashes(window, [3, 4, 8], 1, 500)[:, -doc.shape[1] :], alone)


# ---- pooling --------------------------------------------------------------------------------


def test_pooling_sees_only_its_own_patch():
    # no encoder layers and no n-grams: a byte state depends on that byte alone, so any change
    # outside patch j can only come from the pooling
    model = tiny_model(encoder=TransformerConfig(dim=32, n_layers=0, n_heads=2), hash_ngram_sizes=[])
    gen = torch.Generator().manual_seed(4)
    T = 30
    ids = random_bytes(gen, 1, T)
    ids[0, 0] = BOS_ID
    starts = random_starts(gen, 1, T + 1)
    starts[0, :2] = True
    patch = starts.long().cumsum(1)[0, :T] - 1
    n = patch[-1:] + 1
    P = int(n)
    _, base = model.encoder(ids, patch[None], P)
    for t in range(1, T):
        changed = ids.clone()
        changed[0, t] = (changed[0, t] + 7) % 256
        _, out = model.encoder(changed, patch[None], P)
        moved = (out - base).abs().amax(-1)[0] > 1e-6  # (P,)
        assert moved.nonzero().flatten().tolist() == [int(patch[t])]


def test_encoder_patches_are_causal():
    model = tiny_model()
    gen = torch.Generator().manual_seed(5)
    T = 30
    ids = random_bytes(gen, 1, T)
    starts = random_starts(gen, 1, T + 1)
    starts[0, :2] = True
    patch = (starts.long().cumsum(1) - 1)[:, :T]
    n = patch[:, -1] + 1
    _, base = model.encoder(ids, patch, int(n))
    for t in range(T):
        changed = ids.clone()
        changed[0, t] = (changed[0, t] + 7) % 256
        _, out = model.encoder(changed, patch, int(n))
        j = int(patch[0, t])
        torch.testing.assert_close(out[:, :j], base[:, :j], atol=1e-6, rtol=0)
        assert (out[:, j] - base[:, j]).abs().max() > 1e-6


# ---- independence ---------------------------------------------------------------------------


def test_rows_are_independent():
    model = tiny_model()
    gen = torch.Generator().manual_seed(6)
    B, T = 4, 36
    ids = random_bytes(gen, B, T + 1)
    ids[:, 0] = BOS_ID
    ids[3, 20] = BOS_ID  # a row with two documents
    starts = random_starts(gen, B, T + 1, p=0.3)
    starts[1] = True  # rows with very different numbers of patches
    starts[2, 2:] = False
    batched = model(ids[:, :-1], starts)
    for r in range(B):
        alone = model(ids[r : r + 1, :-1], starts[r : r + 1])
        torch.testing.assert_close(batched[r : r + 1], alone, atol=1e-5, rtol=0)


def test_documents_in_one_window_do_not_see_each_other():
    model = tiny_model()
    gen = torch.Generator().manual_seed(7)
    first = torch.cat([torch.tensor([BOS_ID]), random_bytes(gen, 1, 17)[0], torch.tensor([EOS_ID])])
    second = torch.cat([torch.tensor([BOS_ID]), random_bytes(gen, 1, 25)[0]])
    window = torch.cat([first, second])[None]  # (1, T+1)
    s_first = random_starts(gen, 1, len(first))
    s_second = random_starts(gen, 1, len(second))
    s_second[0, :2] = True  # what a patcher gives a document on its own
    starts = torch.cat([s_first, s_second], dim=1)
    together = model(window[:, :-1], starts)[:, len(first) :]
    alone = model(second[None, :-1], s_second)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)


# ---- learning -------------------------------------------------------------------------------


def test_loss_falls_on_repeated_text():
    model = tiny_model()
    data = encode(TEXT * 8)
    T = 64
    windows = torch.stack([data[i : i + T + 1] for i in (0, 7, 19, 31)])  # (4, T+1)
    starts = SpacePatcher(max_patch_length=6).starts(windows)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(50):
        loss, _ = model.loss(windows[:, :-1], windows[:, 1:], starts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    for name, p in model.named_parameters():
        if name.startswith("encoder.embed.tables"):
            continue  # a bucket never hit gets no gradient, but the table as a whole does
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- inference hooks ------------------------------------------------------------------------


def entropy_model(seed: int = 0) -> ByteLM:
    torch.manual_seed(seed)
    em = ByteLM(ByteLMConfig(dim=32, n_layers=1, n_heads=2, context=64))
    em.init_weights()
    return em


def test_entropy_model_is_frozen_and_saved_with_the_model():
    model = tiny_model()
    em = entropy_model()
    with pytest.raises(UserError):
        model.set_patching(EntropyPatcher(theta=1.0))
    model.set_patching(EntropyPatcher(theta=1.0), em)
    keys = model.state_dict().keys()
    assert any(k.startswith("entropy_model.") for k in keys)
    assert all(not p.requires_grad for p in model.entropy_model.parameters())
    model.train()
    assert model.training and not model.entropy_model.training
    window = encode(TEXT)[None]
    ent = online_entropies(em, window)
    assert torch.equal(window_starts(model, window), EntropyPatcher(theta=1.0).starts(window, ent))


def test_window_starts_needs_a_patcher():
    model = tiny_model()
    with pytest.raises(UserError):
        window_starts(model, encode(TEXT)[None])


@pytest.mark.parametrize("kind", ["static", "entropy"])
def test_scores_match_a_forward_pass_and_slide_past_the_context(kind):
    model = tiny_model()
    model.eval()
    em = entropy_model(1)
    if kind == "static":
        model.set_patching(StaticPatcher(3))
    else:
        sample = encode(TEXT)[None]
        theta = float(online_entropies(em, sample)[0, 2:].median())
        model.set_patching(EntropyPatcher(theta), em)
    C = model.cfg.context
    short = np.frombuffer(TEXT[:40], dtype=np.uint8)
    long = np.frombuffer(TEXT * 4, dtype=np.uint8)  # 180 bytes, context 64
    scores = blt_scores(model, [short, long], batch_size=3)
    assert [len(s) for s in scores] == [len(short), len(long)]
    assert all(np.isfinite(s).all() for s in scores)
    # any document within one scoring window (4 contexts): one forward over [BOS, bytes]
    for doc, got in zip([short, long], scores):
        window = encode(doc.tobytes())[None]
        logits = model(window[:, :-1], window_starts(model, window))
        want = torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="none")
        np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-5)
    # the first C bytes see what a one-context document sees; later bytes see C - 1 bytes of
    # left context (every level slides), never the whole document and never less than that
    np.testing.assert_allclose(scores[1][:C], blt_scores(model, [long[:C]])[0], atol=1e-5)
    fresh = blt_scores(model, [long[C : 2 * C]])[0]
    assert np.abs(scores[1][C : 2 * C] - fresh).max() > 1e-3
    # chunked (every job with C - 1 bytes before it) the bytes near a chunk's start lose only
    # what lay beyond the receptive field of those C - 1 bytes
    chunked = blt_scores(model, [long], chunk=48)[0]
    np.testing.assert_allclose(chunked[:48], scores[1][:48], atol=1e-5)
    assert np.isfinite(chunked).all() and abs(chunked.mean() - scores[1].mean()) < 0.05


# ---- latent packing -------------------------------------------------------------------------


def test_pack_rows_first_fit_decreasing():
    row, first, n = pack_rows([3, 10, 4, 6, 2], 10)
    assert n == 3  # [10], [6, 4], [3, 2]
    slots = {(row[b], first[b] + j) for b, c in enumerate([3, 10, 4, 6, 2]) for j in range(c)}
    assert len(slots) == 25 and all(s < 10 for _, s in slots)  # no overlap, nothing past a row
    assert pack_rows([5, 5, 5], 5)[2] == 3  # full rows do not pack


@pytest.mark.parametrize("window", [None, 3])
def test_packed_latent_rows_equal_rows_run_alone(window):
    """Rows of different patch counts, packed into fewer latent rows, give each row what it gets
    alone (positions and documents stay per row); padding outputs are zeros."""
    torch.manual_seed(0)
    latent = LatentTransformer(TransformerConfig(dim=32, n_layers=2, n_heads=2, window=window), span=64, byte_span=64)
    latent.init_weights()
    counts = torch.tensor([12, 3, 5, 2, 7])
    B, P = len(counts), int(counts.max())
    assert pack_rows(counts.tolist(), P)[2] < B
    patches = torch.randn(B, P, 32)
    docs = torch.zeros(B, P, dtype=torch.long)
    docs[0, 6:] = 1  # a second document inside row 0
    docs[2, 1:] = 4
    docs = torch.where(torch.arange(P) < counts[:, None], docs, -1)
    out = latent(patches, docs, counts)
    for b in range(B):
        n = int(counts[b])
        alone = latent(patches[b : b + 1, :n], docs[b : b + 1, :n], counts[b : b + 1])
        torch.testing.assert_close(out[b, :n], alone[0], atol=1e-5, rtol=1e-5)
        assert (out[b, n:] == 0).all()
    # starts (the byte-span rule of long inputs) are packed alongside
    starts = torch.cumsum(torch.full((B, P), 20), 1)  # patches 20 bytes apart: the 64-byte span binds
    near = latent(patches, docs, counts, starts)
    alone = latent(patches[:1], docs[:1], counts[:1], starts[:1])
    torch.testing.assert_close(near[0], alone[0], atol=1e-5, rtol=1e-5)
    if window is None:  # (a 3-patch window spans 60 bytes at most: the rule never binds there)
        assert not torch.allclose(near[0], out[0], atol=1e-4)
