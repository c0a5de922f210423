"""Patchers: every rule against a plain-Python reference, causality, bookkeeping, sampler."""

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from blt.config import from_dict
from blt.data.corpus import load_corpus
from blt.data.stream import ShardPlan, WindowSampler
from blt.errors import UserError
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.patching.entropy import online_signal
from blt.patching.entropy_file import SplitEntropies
from blt.patching.patchers import (
    BPEPatcher,
    CombinedEntropyPatcher,
    EntropyPatcher,
    EqualInfoPatcher,
    Patcher,
    PatcherConfig,
    RelativeEntropyPatcher,
    SpacePatcher,
    StaticPatcher,
    build_patcher,
    mean_patch_size,
    patch_ids,
    patch_lengths,
)
from blt.patching.sampler import PatchedWindowSampler
from blt.vocab import BOS_ID, EOS_ID, encode

SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
SMALL_VOCAB = [bytes([b]) for b in range(256)] + [b"ab", b"abc", b"bcd", b"cd", b" the", b"th", b"he"]


# ---------------------------------------------------------------- plain-Python reference


def ref_space_like(i: int) -> bool:
    if i >= 256:
        return True
    return not (chr(i).isascii() and chr(i).isalnum()) and not (0x80 <= i <= 0xBF)


def ref_starts(kind, ids, ent=None, theta=None, theta_r=None, k=None, L=None, vocab=None, budget=None):
    """The convention of patchers.py, one position at a time."""
    out, last, first, spent = [], 0, 0, 0.0
    for q in range(len(ids)):
        if q <= 1 or ids[q - 1] == BOS_ID:
            first = q  # where static counting starts
        if q <= 1 or ids[q] == BOS_ID or ids[q - 1] == BOS_ID:
            s = True
        elif kind == "entropy":
            s = ent[q] > theta
        elif kind == "relative":
            s = ent[q] - ent[q - 1] > theta_r
        elif kind == "entropy_relative":
            s = ent[q] > theta and ent[q] - ent[q - 1] > theta_r
        elif kind == "equal_info":
            spent += max(ent[q], 0.0)  # the surprisal of byte q-1 joins the open patch
            s = spent >= budget
        elif kind == "static":
            s = (q - first) % k == 0
        elif kind == "byte":
            s = True
        elif kind == "space":
            s = ref_space_like(ids[q - 1]) and not ref_space_like(ids[q - 2])
        elif kind == "bpe":
            open_patch = ids[last:q]
            s = any(i >= 256 for i in open_patch) or not any(
                len(t) > len(open_patch) and t.startswith(bytes(open_patch)) for t in vocab
            )
        if L is not None and q - last >= L:
            s = True
        if s:
            last, spent = q, 0.0
        out.append(s)
    return out


def make_patcher(kind, theta=None, theta_r=None, k=None, L=None, vocab=None, budget=None) -> Patcher:
    cfg = PatcherConfig(kind=kind, theta=theta, theta_r=theta_r, budget=budget, patch_size=k or 4, max_patch_length=L)
    return build_patcher(cfg, vocab)


def segments(ids: torch.Tensor, starts: torch.Tensor) -> list[bytes]:
    """Patches of one row as byte strings (special ids dropped), BOS patch included as b''."""
    cuts = torch.nonzero(starts).flatten().tolist() + [len(ids)]
    return [bytes(i for i in ids[a:b].tolist() if i < 256) for a, b in zip(cuts[:-1], cuts[1:])]


def random_rows(seed: int, B: int = 4, n: int = 60):
    """Rows mixing letters, digits, spaces, punctuation, UTF-8 and BOS/EOS document breaks."""
    rng = np.random.default_rng(seed)
    pool = list(b"abcdeth  ,.\n09") + list("é—".encode()) + [EOS_ID, BOS_ID]
    ids = torch.tensor(rng.choice(pool, size=(B, n)), dtype=torch.long)
    ids[:, 0] = BOS_ID
    ids[1, 0] = ord("x")  # a window that starts mid-document
    # quarters are exact in float32 and float64, so differences and sums compare the same in both;
    # a few negative values: equal_info counts them as 0
    ent = torch.tensor(rng.integers(-1, 16, size=(B, n)) / 4, dtype=torch.float32)
    return ids, ent


CASES = [
    dict(kind="entropy", theta=2.1),
    dict(kind="relative", theta_r=0.6),
    dict(kind="entropy_relative", theta=1.6, theta_r=0.1),
    dict(kind="equal_info", budget=4.5),
    dict(kind="static", k=3),
    dict(kind="byte"),
    dict(kind="space"),
    dict(kind="bpe", vocab=SMALL_VOCAB),
]


# ---------------------------------------------------------------- rules


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["kind"])
@pytest.mark.parametrize("L", [None, 1, 3])
def test_rule_matches_reference(case, L):
    ids, ent = random_rows(seed=len(case["kind"]) + (L or 0))
    got = make_patcher(**case, L=L).starts(ids, ent)
    for r in range(ids.shape[0]):
        want = ref_starts(case["kind"], ids[r].tolist(), ent[r].tolist(), case.get("theta"),
                          case.get("theta_r"), case.get("k"), L, case.get("vocab"), case.get("budget"))
        assert got[r].tolist() == want, f"row {r}"


def test_space_patching_hand_example():
    ids = encode(b"Hello, world  foo")[None]
    assert segments(ids[0], SpacePatcher().starts(ids)[0]) == [b"", b"Hello,", b" world ", b" foo"]
    # a UTF-8 lead byte is space-like, a continuation byte is not: each 'é' ends a patch
    ids = encode(b"a\xc3\xa9\xc3\xa9 b")[None]
    assert segments(ids[0], SpacePatcher().starts(ids)[0]) == [b"", b"a\xc3", b"\xa9\xc3", b"\xa9 ", b"b"]


def test_static_and_max_length_hand_examples():
    ids = torch.tensor([[BOS_ID, *b"abcd", EOS_ID, BOS_ID, *b"efghi"]])
    assert segments(ids[0], StaticPatcher(3).starts(ids)[0]) == [b"", b"abc", b"d", b"", b"efg", b"hi"]
    ids = encode(b"abcdefgh")[None]
    assert segments(ids[0], StaticPatcher(100, max_patch_length=3).starts(ids)[0]) == [b"", b"abc", b"def", b"gh"]


def test_entropy_rules_hand_examples():
    ids = encode(b"abcde")[None]
    ent = torch.tensor([[0.0, 1.0, 2.0, 1.0, 3.0, 3.2]])
    assert segments(ids[0], EntropyPatcher(1.5).starts(ids, ent)[0]) == [b"", b"a", b"bc", b"d", b"e"]
    assert segments(ids[0], RelativeEntropyPatcher(0.5).starts(ids, ent)[0]) == [b"", b"a", b"bc", b"de"]
    assert segments(ids[0], CombinedEntropyPatcher(2.5, 0.5).starts(ids, ent)[0]) == [b"", b"abc", b"de"]


def test_equal_info_hand_example():
    ids = encode(b"abcde")[None]
    # surprisals of a, b, c, d: 1, 2, 1, 3 nats, each at the position after its byte
    surprisal = torch.tensor([[0.0, 0.0, 1.0, 2.0, 1.0, 3.0]])
    assert segments(ids[0], EqualInfoPatcher(2.5).starts(ids, surprisal)[0]) == [b"", b"ab", b"cd", b"e"]
    assert segments(ids[0], EqualInfoPatcher(3.5).starts(ids, surprisal)[0]) == [b"", b"abc", b"de"]
    assert segments(ids[0], EqualInfoPatcher(0.0).starts(ids, surprisal)[0]) == [b"", b"a", b"b", b"c", b"d", b"e"]
    assert segments(ids[0], EqualInfoPatcher(9.0, max_patch_length=2).starts(ids, surprisal)[0]) == [
        b"", b"ab", b"cd", b"e"]
    assert EqualInfoPatcher(1.0).signal == "surprisal" and EqualInfoPatcher(1.0).needs_entropy


def test_bpe_causal_rule_hand_example():
    ids = encode(b"abcdab")[None]
    # 'abc' is a token that no longer token extends: the patch closes before 'd', without looking at 'd'
    assert segments(ids[0], BPEPatcher(SMALL_VOCAB).starts(ids)[0]) == [b"", b"abc", b"d", b"ab"]
    ids = encode(b"xbcd")[None]
    assert segments(ids[0], BPEPatcher(SMALL_VOCAB).starts(ids)[0]) == [b"", b"x", b"bcd"]


def test_bookkeeping():
    starts = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert patch_ids(starts).tolist() == [[0, 1, 1, 1, 2, 3, 3, 3], [0, 1, 2, 3, 4, 4, 4, 4]]
    assert patch_lengths(starts).tolist() == [[1, 3, 1, 3, 0], [1, 1, 1, 1, 4]]
    ids = torch.tensor([[BOS_ID, 97, 98, 99, 100, 97, 98, EOS_ID], [BOS_ID, 97, 98, 99, 100, 97, 98, EOS_ID]])
    # row 0: patches abc | d | ab+EOS; row 1: a | b | c | d+a+b+EOS -> 12 bytes in 7 patches
    assert mean_patch_size(starts, ids < 256) == pytest.approx(12 / 7)
    assert mean_patch_size(starts[:1], ids[:1] < 256) == pytest.approx(2.0)


def test_build_patcher_errors():
    with pytest.raises(UserError, match="theta"):
        build_patcher(PatcherConfig(kind="entropy"))
    with pytest.raises(UserError, match="theta_r"):
        build_patcher(PatcherConfig(kind="relative", theta=1.0))
    with pytest.raises(UserError, match="budget"):
        build_patcher(PatcherConfig(kind="equal_info", theta=1.0))
    with pytest.raises(UserError, match="BPE"):
        build_patcher(PatcherConfig(kind="bpe"))
    with pytest.raises(UserError, match="kind"):
        from_dict(PatcherConfig, {"kind": "word"})
    with pytest.raises(UserError, match="max_patch_length"):
        from_dict(PatcherConfig, {"kind": "space", "max_patch_length": 0})
    assert isinstance(build_patcher(from_dict(PatcherConfig, {"kind": "space"})), SpacePatcher)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["kind"])
def test_rows_are_independent(case):
    ids, ent = random_rows(seed=7, B=3, n=50)
    patcher = make_patcher(**case, L=5)
    batch = patcher.starts(ids, ent)
    for r in range(3):
        assert torch.equal(patcher.starts(ids[r : r + 1], ent[r : r + 1])[0], batch[r])


# ---------------------------------------------------------------- causality


@pytest.fixture(scope="module")
def entropy_model():
    torch.manual_seed(0)
    model = ByteLM(ByteLMConfig(dim=32, n_layers=1, n_heads=2, context=64, window=16))
    model.init_weights()
    return model.eval()


def perturbed(ids, model, positions, signal="entropy"):
    """(j, ids with byte j changed, their signal) for each j; the signal's [:j+1] must not move."""
    ent = online_signal(model, ids, signal)
    out = []
    for j in positions:
        # byte values only: a BOS is by definition a forced start at its own position
        other = ids.clone()
        other[0, j] = (int(ids[0, j]) + 1 + j) % 256 if ids[0, j] < 256 else ord("q")
        ent2 = online_signal(model, other, signal)
        assert torch.equal(ent2[:, : j + 1], ent[:, : j + 1]), f"{signal} before {j} moved"
        out.append((j, other, ent2))
    return ent, out


def causality_violations(patcher, ids, ent, changes) -> list[int]:
    """Positions j where changing byte j (and recomputing entropies) moved starts[:j+1]."""
    base = patcher.starts(ids, ent)
    bad = []
    for j, other, ent2 in changes:
        if not torch.equal(patcher.starts(other, ent2)[:, : j + 1], base[:, : j + 1]):
            bad.append(j)
    return bad


def causal_sequences():
    rng = np.random.default_rng(0)
    rand = torch.tensor([BOS_ID, *rng.integers(0, 256, 40), EOS_ID, BOS_ID, *rng.integers(0, 256, 30)])
    text = encode(SHAKESPEARE.read_bytes()[:70])
    return [rand[None], text[None]]


def patchers_for(ids, model):
    ent = online_signal(model, ids, "entropy")[0, 2:]
    med = float(ent.median())
    budget = 3 * float(online_signal(model, ids, "surprisal")[0, 2:].mean())  # about 3 bytes per patch
    vocab = SMALL_VOCAB + [b"First", b"Citizen", b" we ", b"proceed"]
    return [
        EntropyPatcher(med), RelativeEntropyPatcher(0.0), CombinedEntropyPatcher(med, 0.0),
        EntropyPatcher(med, max_patch_length=2), StaticPatcher(3), SpacePatcher(),
        SpacePatcher(max_patch_length=3), BPEPatcher(vocab), BPEPatcher(vocab, max_patch_length=2),
        EqualInfoPatcher(budget), EqualInfoPatcher(budget, max_patch_length=2),
    ]


@pytest.mark.parametrize("which", ["random", "text"])
def test_every_patcher_is_causal(which, entropy_model):
    ids = causal_sequences()[0 if which == "random" else 1]
    changes = {signal: perturbed(ids, entropy_model, range(1, ids.shape[1], 3), signal)
               for signal in ("entropy", "surprisal")}
    for patcher in patchers_for(ids, entropy_model):
        ent, changed = changes[patcher.signal or "entropy"]
        starts = patcher.starts(ids, ent)
        assert 1 < int(starts.sum()) < ids.shape[1], f"{patcher!r} makes no decisions to test"
        assert causality_violations(patcher, ids, ent, changed) == [], repr(patcher)


class _PeekingPatcher(Patcher):
    """Looks at the byte it is deciding for: the mistake the causality check must catch."""

    def rule(self, ids, entropies):
        return ids == ord(" ")


def test_causality_check_catches_a_leak(entropy_model):
    ids = causal_sequences()[1]
    spaces = torch.nonzero(ids[0] == ord(" ")).flatten().tolist()
    ent, changes = perturbed(ids, entropy_model, spaces)
    assert causality_violations(_PeekingPatcher(), ids, ent, changes) != []


# ---------------------------------------------------------------- sampler


@pytest.fixture()
def small_split(tmp_path, blt_cache):
    rng = np.random.default_rng(1)
    for i, n in enumerate([300, 0, 41, 700, 5]):
        (tmp_path / f"doc{i}.txt").write_bytes(bytes(rng.choice(list(b"ab c.\n"), n).astype(np.uint8)))
    return load_corpus(str(tmp_path), "80/20").split("train")


def test_sampler_gathers_entropies_and_is_deterministic(small_split):
    rng = np.random.default_rng(2)
    n_docs = int((np.diff(small_split.docs) > 0).sum())
    ent = SplitEntropies(rng.uniform(0, 3, small_split.n_bytes).astype(np.float16),
                         rng.uniform(0, 3, n_docs).astype(np.float16))
    patcher = EntropyPatcher(1.5, max_patch_length=6)
    sampler = PatchedWindowSampler(small_split, ent, patcher, seq_len=32, batch_size=4, seed=3,
                                   plan=ShardPlan(grad_accum=2))
    b1, b2 = sampler.batch(5, 1), sampler.batch(5, 1)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    assert not torch.equal(sampler.batch(6)["ids"], b1["ids"])
    x, y = WindowSampler(small_split, 32, 4, 3, ShardPlan(grad_accum=2)).batch(5, 1)
    assert torch.equal(b1["ids"], x) and torch.equal(b1["targets"], y)
    # the virtual stream spelled out: [BOS 0] [byte ent[offset]]... [EOS eos[d]] per document
    stream = []
    d = 0
    for a, b in zip(small_split.docs[:-1], small_split.docs[1:]):
        if b > a:
            stream += [(BOS_ID, 0.0)] + [(int(small_split.data[o]), float(ent.data[o])) for o in range(a, b)]
            stream += [(EOS_ID, float(ent.eos[d]))]
            d += 1
    starts = WindowSampler(small_split, 32, 4, 3, ShardPlan(grad_accum=2)).starts(5, 1)
    want_ids = torch.tensor([[stream[s + i][0] for i in range(33)] for s in starts])
    want_ent = torch.tensor([[stream[s + i][1] for i in range(33)] for s in starts])
    assert torch.equal(want_ids[:, :-1], b1["ids"])
    assert torch.equal(b1["starts"], patcher.starts(want_ids, want_ent))
    assert b1["starts"].shape == (4, 33)


def test_sampler_without_entropies(small_split):
    sampler = PatchedWindowSampler(small_split, None, SpacePatcher(), seq_len=16, batch_size=2, seed=0)
    batch = sampler.batch(0)
    full = torch.cat([batch["ids"], batch["targets"][:, -1:]], dim=1)
    assert torch.equal(batch["starts"], SpacePatcher().starts(full))
    with pytest.raises(ValueError, match="entropies"):
        PatchedWindowSampler(small_split, None, EntropyPatcher(1.0), seq_len=16, batch_size=2, seed=0)
