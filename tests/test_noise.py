"""Noise kinds (blt.evaluation.noise) and the robustness scoring on clean continuations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from blt.cli import main
from blt.errors import UserError
from blt.config import from_dict
from blt.runs.config import RunConfig
from blt.train.loop import train
from blt.evaluation.noise import (
    NOISE_KINDS,
    char_starts,
    check_noise,
    noise,
    robustness,
    scoring_pairs,
)

MIXED = "Héllo wörld, 日本語 😀 The QUICK brown fox; ünïcode at the end: ß".encode()


def chars(data: bytes) -> list[bytes]:
    starts = list(char_starts(np.frombuffer(data, dtype=np.uint8))) + [len(data)]
    return [data[a:b] for a, b in zip(starts[:-1], starts[1:])]


def runs(units: list[bytes]) -> list[tuple[bytes, int]]:
    """Run-length encoding of a sequence of characters."""
    out: list[tuple[bytes, int]] = []
    for u in units:
        if out and out[-1][0] == u:
            out[-1] = (u, out[-1][1] + 1)
        else:
            out.append((u, 1))
    return out


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_probability_zero_changes_nothing(kind):
    assert noise(MIXED, kind, 0.0, seed=3) == MIXED


def test_case_kinds_at_probability_one():
    assert noise(MIXED, "random_case", 1.0) == MIXED.swapcase()  # bytes.swapcase touches ASCII only
    assert noise(MIXED, "uppercase", 1.0) == MIXED.upper()
    assert noise(MIXED, "uppercase") == MIXED.upper()  # its default probability is 1


def test_drop_at_probability_one_leaves_nothing():
    assert noise(MIXED, "drop", 1.0) == b""


def test_repeat_at_probability_one_writes_every_character_two_to_four_times():
    text = ("abcdefghij" * 40 + "é日😀").encode()  # no character equals its neighbour
    out = noise(text, "repeat", 1.0, seed=1)
    r = runs(chars(out))
    assert [u for u, _ in r] == chars(text)
    counts = [n for _, n in r]
    assert min(counts) >= 2 and max(counts) <= 4
    assert set(counts) == {2, 3, 4}  # all three counts occur in 403 draws


def test_swap_at_probability_one_swaps_neighbouring_pairs_whole():
    assert noise(b"abcdefg", "swap", 1.0) == b"badcfeg"  # the odd character out stays
    assert noise("aé日b".encode(), "swap", 1.0) == "éab日".encode()


@pytest.mark.parametrize("kind,p", [("drop", 0.1), ("repeat", 0.2), ("swap", 0.3), ("random_case", 0.5)])
def test_intermediate_probabilities_hit_about_that_share(kind, p):
    text = "".join(chr(ord("a") + i % 26) for i in range(20000)).encode()  # letters, no neighbours alike
    out = noise(text, kind, p, seed=7)
    if kind == "drop":
        share = 1 - len(out) / len(text)
    elif kind == "repeat":
        share = sum(n > 1 for _, n in runs(chars(out))) / len(text)
    elif kind == "swap":  # a swapped pair leaves both of its characters out of place
        share = sum(a != b for a, b in zip(out, text)) / 2 / len(text)
        p = p / (1 + p)  # share of characters that begin a swap under the left-to-right rule
    else:
        share = sum(a != b for a, b in zip(out, text)) / len(text)
    assert share == pytest.approx(p, abs=0.02), share


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_deterministic_by_seed(kind):
    text = MIXED * 20
    assert noise(text, kind, 0.5, seed=11) == noise(text, kind, 0.5, seed=11)
    assert noise(text, kind, 0.5, seed=11) != noise(text, kind, 0.5, seed=12)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_never_splits_a_utf8_character(kind):
    text = MIXED * 10
    for seed in range(5):
        out = noise(text, kind, 0.5, seed)
        decoded = out.decode("utf-8")  # raises if a multi-byte character was cut
        originals = set(text.decode("utf-8").swapcase()) | set(text.decode("utf-8"))
        assert set(decoded) <= originals
        if kind == "swap":
            assert sorted(chars(out)) == sorted(chars(text))
        if kind == "drop":  # what is left is a subsequence of the characters
            it = iter(chars(text))
            assert all(any(c == d for d in it) for c in chars(out))


def test_invalid_utf8_is_handled_as_units():
    data = b"\x80\x81ab\xffc\xe3\x81"  # stray continuation bytes and a truncated sequence
    # units: [80 81] a b [ff] c [e3 81]; continuation bytes stay with the unit before them
    assert noise(data, "swap", 1.0) == b"a\x80\x81\xffb\xe3\x81c"
    assert noise(data, "drop", 1.0) == b""


def test_bad_kind_or_probability_is_a_user_error():
    with pytest.raises(UserError):
        check_noise("antspeak")
    with pytest.raises(UserError):
        noise(b"abc", "drop", 1.5)


# ---- scoring pairs ------------------------------------------------------------------------------


def _doc(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "über", "日本", "lazy", "dog,"]
    text = " ".join(words[i] for i in rng.integers(0, len(words), size=n))
    return np.frombuffer(text.encode(), dtype=np.uint8)


def test_pairs_tile_the_document_and_cut_at_word_starts():
    doc = _doc(400)
    pairs = scoring_pairs([doc], prefix=60, continuation=20)
    assert len(pairs) >= 10
    joined = b"".join(a + b for a, b in pairs)
    assert doc.tobytes().startswith(joined)  # consecutive pieces, nothing skipped or changed
    for a, b in pairs:
        assert 30 < len(a) <= 60 and 0 < len(b) <= 20
        assert b.startswith(b" ") and not b[1:2].isspace()  # a word begins the continuation
        b.decode("utf-8")  # no character cut in two
        a.decode("utf-8")
    assert len(scoring_pairs([doc], 60, 20, max_pairs=3)) == 3
    assert scoring_pairs([doc[:50]], 60, 20) == []


class CountingScorer:
    """A stand-in scorer: each byte costs 1 nat plus 1 per upper-case letter before it in the
    document, so noise in the prefix shows up only through the context."""

    def __init__(self):
        self.seen: list[bytes] = []

    def __call__(self, docs):
        out = []
        for d in docs:
            b = bytes(d)
            self.seen.append(b)
            upper = np.cumsum([0] + [65 <= c <= 90 for c in b[:-1]])
            out.append((1.0 + upper).astype(np.float32))
        return out


def test_robustness_scores_clean_continuations_after_noised_prefixes():
    pairs = scoring_pairs([_doc(300, seed=1)], prefix=60, continuation=20)
    model = CountingScorer()
    r = robustness(model, pairs, {"uppercase": 1.0, "drop": 0.5}, seed=0)
    n = sum(len(b) for _, b in pairs)
    assert r["bytes"] == n and r["pairs"] == len(pairs)
    # no upper-case letters anywhere in the clean text: every continuation byte costs 1 nat
    assert r["clean_bpb"] == pytest.approx(1 / math.log(2))
    seen = model.seen
    assert seen[: len(pairs)] == [a + b for a, b in pairs]  # the clean pass
    for k in range(2):  # each noised pass: noised prefixes, the very same clean continuations
        batch = seen[len(pairs) * (k + 1): len(pairs) * (k + 2)]
        assert all(doc.endswith(b) and doc[: len(doc) - len(b)] != a for doc, (a, b) in zip(batch, pairs))
    expected = sum(len(b) * (1 + sum(65 <= c <= 90 for c in a.upper())) for a, b in pairs) / (math.log(2) * n)
    assert r["kinds"]["uppercase"]["bpb"] == pytest.approx(expected)
    assert r["kinds"]["uppercase"]["increase"] > 1.0
    assert r["kinds"]["drop"]["increase"] == pytest.approx(0.0)  # dropping lower-case letters adds no cost here


def test_blt_eval_reports_noised_and_clean_bpb(tmp_path, text_file, capsys):
    torch.manual_seed(0)
    cfg = from_dict(RunConfig, {
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "context": 64},
        "data": {"corpus": str(text_file), "batch_size": 4},
        "train": {"steps": 3, "eval_bytes": 512, "progress": False, "device": "cpu"},
    })
    train(cfg, tmp_path / "run")
    capsys.readouterr()
    argv = ["eval", str(tmp_path / "run"), "--max-bytes", "3000", "--noise", "random_case", "--noise-seed", "5"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["noise"] == "random_case" and out["noise_p"] == 0.5 and out["noise_seed"] == 5
    assert out["noise_pairs"] >= 5 and 60 * out["noise_pairs"] < out["noise_bytes"] <= 64 * out["noise_pairs"]
    assert out["noise_bpb_increase"] == pytest.approx(out["noised_pair_bpb"] - out["clean_pair_bpb"])
    assert out["clean_pair_bpb"] != out["noised_pair_bpb"]
    assert main(["eval", str(tmp_path / "run"), "--noise", "nonsense"]) == 2
