"""Corpora, splits, training windows and the enwik8 loader."""
import functools
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
import blt.data.enwik8 as enwik8
from blt.data.corpus import load_corpus
from blt.data.stream import ShardPlan, VirtualStream, WindowSampler, draw_starts
from blt.errors import UserError
from blt.vocab import BOS_ID, EOS_ID

SHARED = SHARED_DATA
SHAKESPEARE = SHARED / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BLT_DATA_DIR", raising=False)


def split_bytes(corpus, name) -> bytes:
    return np.asarray(corpus.split(name).data).tobytes()


def test_tiny_shakespeare_splits_90_10_and_others_90_5_5(tmp_path):
    raw = SHAKESPEARE.read_bytes()
    n = len(raw)
    c = load_corpus(str(SHAKESPEARE))
    assert c.split_names == ("train", "val")
    assert split_bytes(c, "train") == raw[: int(0.9 * n)]
    assert split_bytes(c, "val") == raw[int(0.9 * n) :]
    assert split_bytes(c, "all") == raw
    with pytest.raises(UserError, match="no 'test' split"):
        c.split("test")
    # the same bytes under another name split 90/5/5, the enwik8 convention
    other = tmp_path / "other.txt"
    other.write_bytes(raw)
    c = load_corpus(str(other))
    cuts = [0, int(0.9 * n), int(0.95 * n), n]
    for name, lo, hi in zip(("train", "val", "test"), cuts[:-1], cuts[1:]):
        assert split_bytes(c, name) == raw[lo:hi], name
    # a copy still named tinyshakespeare* splits like the original, and loading is deterministic
    copy = tmp_path / "tinyshakespeare_copy.txt"
    copy.write_bytes(raw)
    assert split_bytes(load_corpus(str(copy)), "val") == split_bytes(load_corpus(str(SHAKESPEARE)), "val")


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"b/2.txt": b"second file\n", "a.txt": b"first", "c/d/3.md": b"third, nested", "b/1.txt": b"x" * 40}
    for rel in reversed(list(files)):  # creation order must not matter
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(files[rel])
    return files


def test_directory_corpus_order_documents_and_cut_documents(tmp_path):
    files = make_tree(tmp_path / "tree")
    order = sorted(files, key=lambda rel: (tmp_path / "tree" / rel))
    c = load_corpus(str(tmp_path / "tree"))
    assert np.asarray(c.data).tobytes() == b"".join(files[r] for r in order)
    assert c.docs.tolist() == np.cumsum([0] + [len(files[r]) for r in order]).tolist()
    again = load_corpus(str(tmp_path / "tree"))  # now from the cache
    assert np.array_equal(np.asarray(again.data), np.asarray(c.data)) and again.fingerprint == c.fingerprint
    # documents of every split tile the split; one straddling a cut appears in both splits
    splits = [c.split(name) for name in ("train", "val", "test")]
    for s in splits:
        assert s.docs[0] == 0 and s.docs[-1] == s.n_bytes and np.all(np.diff(s.docs) > 0)
    assert sum(s.n_bytes for s in splits) == len(c.data)
    assert sum(len(s.docs) - 1 for s in splits) > len(files)


def test_glob_corpus(tmp_path):
    files = make_tree(tmp_path / "tree")
    c = load_corpus(str(tmp_path / "tree" / "**" / "*.txt"))
    txt = sorted(r for r in files if r.endswith(".txt"))
    assert np.asarray(c.data).tobytes() == b"".join(files[r] for r in txt)
    assert len(c.docs) - 1 == len(txt)
    with pytest.raises(UserError, match="matches no files"):
        load_corpus(str(tmp_path / "tree" / "*.nothing"))


@pytest.mark.parametrize("kind", ["missing", "empty file", "empty dir"])
def test_bad_corpus_paths_are_user_errors(tmp_path, kind):
    path = tmp_path / "data"
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "empty dir":
        path.mkdir()
    with pytest.raises(UserError):
        load_corpus(str(path))


def test_windows_put_bos_and_eos_at_document_edges(tmp_path):
    (tmp_path / "d").mkdir()
    for name, text in [("1", b"abc"), ("2", b"de"), ("3", b"fghij")]:
        (tmp_path / "d" / name).write_bytes(text)
    split = load_corpus(str(tmp_path / "d"), splits="90/10").split("all")
    stream = VirtualStream(split)
    B, E = BOS_ID, EOS_ID
    expected = [B, *b"abc", E, B, *b"de", E, B, *b"fghij", E]
    assert stream.length == len(expected)
    assert stream.ids(np.arange(stream.length)).tolist() == expected
    sampler = WindowSampler(split, seq_len=6, batch_size=8, seed=0)
    x, y = sampler.batch(step=3)
    for row_x, row_y, start in zip(x.tolist(), y.tolist(), sampler.starts(3)):
        assert row_x == expected[start : start + 6]
        assert row_y == expected[start + 1 : start + 7]


def test_sampler_is_a_pure_function_of_seed_plan_step():
    split = load_corpus(str(SHAKESPEARE)).split("train")
    a = WindowSampler(split, seq_len=32, batch_size=4, seed=1)
    first = [a.batch(s)[0] for s in range(4)]
    fresh = WindowSampler(split, seq_len=32, batch_size=4, seed=1)
    assert all((fresh.batch(s)[0] == first[s]).all() for s in (3, 0, 2, 1))  # any order, any instance
    assert not (a.batch(0)[0] == a.batch(1)[0]).all()
    assert not (WindowSampler(split, 32, 4, 1, ShardPlan(rank=1, world=2)).batch(0)[0] == first[0]).all()
    assert not (WindowSampler(split, 32, 4, seed=2).batch(0)[0] == first[0]).all()
    # one process, one shard: the draws of the key (seed, 0, step, micro), as before shard plans
    two = WindowSampler(split, 32, 4, 1, ShardPlan(grad_accum=2))
    for step, micro in ((0, 0), (5, 1)):
        want = draw_starts((0, two.stream.length), 32, 4, [1, 0, step, micro])
        assert (two.starts(step, micro) == want).all()
    with pytest.raises(ValueError, match="micro-step 1"):
        a.starts(0, 1)


def test_each_rank_draws_only_from_its_shard():
    split = load_corpus(str(SHAKESPEARE)).split("train")
    whole = WindowSampler(split, 32, 64, seed=1)
    length = whole.stream.length
    assert whole.starts.bounds == {0: (0, length)}
    for world in (2, 3):
        for rank in range(world):
            s = WindowSampler(split, 32, 64, 1, ShardPlan(rank, world))
            lo, hi = rank * length // world, (rank + 1) * length // world
            starts = np.concatenate([s.starts(step) for step in range(20)])
            assert starts.min() >= lo and starts.max() + 33 <= hi  # whole windows inside the shard
            assert starts.max() - starts.min() > (hi - lo) // 2  # and spread over it
            again = WindowSampler(split, 32, 64, 1, ShardPlan(rank, world))
            assert (again.starts(7) == s.starts(7)).all()  # a pure function of (seed, plan, step)
    with pytest.raises(UserError, match="shard 1 of 2"):
        WindowSampler(split, length // 2, 4, 1, ShardPlan(1, 2))


def test_fixed_shards_make_the_global_batch_independent_of_world_and_accumulation():
    split = load_corpus(str(SHAKESPEARE)).split("train")

    def global_batch(world, accum, step):
        return np.concatenate([
            WindowSampler(split, 32, 4, 1, ShardPlan(rank, world, accum, shards=2)).starts(step, micro)
            for rank in range(world) for micro in range(accum)
        ])

    for step in (0, 3):
        one = global_batch(1, 4, step)
        assert (global_batch(2, 2, step) == one).all() and (global_batch(4, 1, step) == one).all()
        length = WindowSampler(split, 32, 4, 1).stream.length
        assert one[:8].max() < length // 2 <= one[8:].min()  # micro-batches 0-1 from shard 0, 2-3 from shard 1
    one_shard = np.concatenate([WindowSampler(split, 32, 4, 1, ShardPlan(grad_accum=4)).starts(0, m) for m in range(4)])
    assert not (one_shard == global_batch(1, 4, 0)).all()  # the shards are part of the draw
    with pytest.raises(UserError, match="data.shards=3"):
        ShardPlan(0, 1, 2, shards=3)


@pytest.fixture
def stand_in(tmp_path):
    """A small fake enwik8, its zip, and the loader pointed at them (checksums of the fake)."""
    payload = b"<page><title>stand-in</title> enwik8 bytes \xc3\xa9 </page>\n" * 300
    zpath = tmp_path / "zips" / "enwik8.zip"
    zpath.parent.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("enwik8", payload)
    zpath.write_bytes(buf.getvalue())
    sha = hashlib.sha256(payload).hexdigest()
    loader = functools.partial(enwik8.enwik8_path, url=zpath.as_uri(), sha256=sha, size=len(payload))
    return payload, zpath, loader


def test_enwik8_from_data_dir_zip_and_download(tmp_path, stand_in, monkeypatch):
    payload, zpath, loader = stand_in
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / "enwik8").write_bytes(payload)
    assert loader(str(raw_dir)) == raw_dir / "enwik8"  # a local copy is used in place
    got = loader(str(zpath.parent))  # a local zip is unpacked into the cache
    assert got.read_bytes() == payload and got.parent == tmp_path / "cache" / "enwik8"
    got.unlink()
    got = loader(None)  # nothing local: 'downloaded' from the file:// URL
    assert got.read_bytes() == payload
    monkeypatch.setattr(enwik8, "enwik8_path", loader)
    c = load_corpus("enwik8")
    assert c.split_names == ("train", "val", "test")
    assert split_bytes(c, "train") == payload[: int(0.9 * len(payload))]


def test_enwik8_checksum_and_offline_errors(tmp_path, stand_in):
    payload, zpath, loader = stand_in
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "enwik8").write_bytes(payload[:-1] + b"?")  # right size, wrong bytes
    with pytest.raises(UserError, match="sha256"):
        loader(str(bad))
    (bad / "enwik8").write_bytes(payload[:100])
    with pytest.raises(UserError, match="bytes"):
        loader(str(bad))
    offline = functools.partial(loader, url=(tmp_path / "no" / "such.zip").as_uri())
    with pytest.raises(UserError, match="BLT_DATA_DIR"):
        offline(None)


def test_max_bytes_keeps_a_deterministic_prefix():
    from blt.data.corpus import truncated

    full = load_corpus(str(SHAKESPEARE))
    cut = truncated(full, 100_000)
    assert len(cut.data) == 100_000 and cut.docs.tolist() == [0, 100_000]
    assert bytes(cut.split("train").data) == bytes(full.data[:90_000])
    assert cut.fingerprint["max_bytes"] == 100_000 and cut.fingerprint["sha256"] == full.fingerprint["sha256"]
    assert truncated(full, None) is full
