"""Data at scale: JSONL and Parquet shards read in place, and `blt entropies` over two processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from blt.data.corpus import load_corpus
from blt.data.stream import ShardPlan, WindowSampler
from blt.errors import UserError
from blt.evaluation.entropies import write_entropy_file
from blt.patching.entropy_file import load_entropy_file
from blt.runs.config import RunConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def texts(n: int = 60, seed: int = 0) -> list[str]:
    """Documents of varied lengths, one empty, with non-ASCII text and characters JSON escapes."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "\"quoted\"", "naïve", "日本", "tab\there", "line\n", "back\\slash"]
    out = [" ".join(rng.choice(words, int(rng.integers(1, 80)))) for _ in range(n)]
    out[7] = ""
    return out


def write_shards(root: Path, docs: list[str], n_shards: int = 3) -> dict[str, Path]:
    """The same documents as JSONL shards, Parquet shards (small row groups) and plain files."""
    dirs = {kind: root / kind for kind in ("jsonl", "parquet", "files")}
    for d in dirs.values():
        d.mkdir(parents=True)
    per = -(-len(docs) // n_shards)
    for s in range(n_shards):
        part = docs[s * per : (s + 1) * per]
        with open(dirs["jsonl"] / f"part-{s:03d}.jsonl", "w", encoding="utf-8") as f:
            for i, t in enumerate(part):
                f.write(json.dumps({"id": i, "body": t}) + "\n" + ("\n" if i == 2 else ""))  # a blank line
        pq.write_table(pa.table({"id": list(range(len(part))), "body": part}),
                       dirs["parquet"] / f"part-{s:03d}.parquet", row_group_size=7)
    for i, t in enumerate(docs):
        (dirs["files"] / f"doc{i:04d}.txt").write_bytes(t.encode())
    return dirs


@pytest.fixture
def shards(tmp_path, blt_cache):
    docs = texts()
    return docs, write_shards(tmp_path / "corpora", docs)


def test_shards_read_in_place_as_one_byte_array(shards, blt_cache):
    docs, dirs = shards
    want = np.frombuffer("".join(docs).encode(), dtype=np.uint8)
    plain = load_corpus(str(dirs["files"]), "80/10/10")
    for fmt in ("jsonl", "parquet"):
        c = load_corpus(str(dirs[fmt]), "80/10/10", text_field="body")  # format found from the suffixes
        assert c.fingerprint["format"] == fmt and c.fingerprint["documents"] == len(docs)
        assert c.fingerprint["sha256"] == plain.fingerprint["sha256"]  # the same bytes
        assert np.array_equal(np.asarray(c.data), want) and np.array_equal(c.docs, plain.docs)
        idx = np.random.default_rng(1).integers(0, len(want), size=(4, 33))
        assert np.array_equal(c.data[idx], want[idx])
        for name in ("train", "val", "test", "all"):
            a, b = c.split(name), plain.split(name)
            assert np.array_equal(a.docs, b.docs)
            assert [bytes(np.asarray(x)) for x in a.documents()] == [bytes(x) for x in b.documents()]
        # training windows are those of the same documents given as files
        for rank in (0, 1):
            x, y = WindowSampler(c.split("train"), 24, 6, 3, ShardPlan(rank, 2)).batch(5)
            x0, y0 = WindowSampler(plain.split("train"), 24, 6, 3, ShardPlan(rank, 2)).batch(5)
            assert torch.equal(x, x0) and torch.equal(y, y0)
    # read in place: the cache holds small indexes (and the plain files' concatenation), no copy of the shards
    index_bytes = sum(p.stat().st_size for p in (blt_cache / "shards").iterdir())
    assert 0 < index_bytes < len(want)
    assert load_corpus(str(dirs["jsonl"]), "80/10/10", fmt="files").fingerprint["files"] == 3  # raw files on request


def test_shard_errors_are_user_errors(shards, tmp_path):
    _, dirs = shards
    with pytest.raises(UserError, match="field 'text'"):
        load_corpus(str(dirs["jsonl"]), "80/10/10", text_field="text")  # no such field: no text at all
    with pytest.raises(UserError, match="no column 'text'"):
        load_corpus(str(dirs["parquet"]), "80/10/10", text_field="text")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(UserError, match=r"a.jsonl:2: field 'text' is int"):
        load_corpus(str(bad))
    (bad / "a.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(UserError, match=r"a.jsonl:2: not valid JSON"):
        load_corpus(str(bad))
    with pytest.raises(UserError, match="data.format"):
        load_corpus(str(bad), fmt="csv")


def test_entropies_on_two_processes_equal_one(shards, entropy_run, tmp_path, blt_cache):
    """`blt entropies` under torchrun (2 gloo ranks, each its share of the jobs) writes the file
    one process writes, over JSONL shards; and the file serves the same corpus given as files."""
    docs, dirs = shards
    run, model = entropy_run
    common = ["entropies", str(run), "--data", str(dirs["jsonl"]), "--text-field", "body", "--splits", "70/20/10",
              "--no-progress", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BLT_CACHE_DIR": str(blt_cache)}
    one = subprocess.run([sys.executable, "-m", "blt.cli", *common, "--out", str(tmp_path / "one")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "blt.cli", *common, "--out", str(tmp_path / "two")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert len(two.stdout.strip().splitlines()) == 1  # rank 0 alone prints
    summary = json.loads(two.stdout)
    assert summary["processes"] == 2 and summary["bytes"] == len("".join(docs).encode())
    corpus = load_corpus(str(dirs["jsonl"]), "70/20/10", text_field="body")
    a, b = load_entropy_file(tmp_path / "one", corpus), load_entropy_file(tmp_path / "two", corpus)
    for signal in ("entropy", "surprisal"):
        (data_a, eos_a), (data_b, eos_b) = a.values[signal], b.values[signal]
        np.testing.assert_allclose(data_a.astype(np.float32), data_b.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(eos_a.astype(np.float32), eos_b.astype(np.float32), atol=2e-3)
        assert (np.asarray(data_b) > 0).mean() > 0.99  # every rank's share was written
    assert json.loads(one.stdout)["mean_entropy"] == pytest.approx(summary["mean_entropy"], rel=1e-4)
    assert json.loads(one.stdout)["mean_surprisal"] == pytest.approx(summary["mean_surprisal"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "entropies.f16", "entropies.json", "entropies_eos.f16", "surprisals.f16", "surprisals_eos.f16",
    ]  # no temporaries left
    # the same entropies, computed in one process over the documents given as plain files
    plain = load_corpus(str(dirs["files"]), "70/20/10")
    write_entropy_file(model, plain, tmp_path / "plain", {}, batch_size=4, progress=False)
    np.testing.assert_allclose(np.fromfile(tmp_path / "plain" / "entropies.f16", np.float16).astype(np.float32),
                               a.values["entropy"][0].astype(np.float32), atol=2e-3)



def test_training_reads_jsonl_shards(shards, tmp_path):
    from blt.config import from_dict
    from blt.train import loop

    _, dirs = shards
    cfg = from_dict(RunConfig, {
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "context": 32},
        "data": {"corpus": str(dirs["jsonl"]), "format": "jsonl", "text_field": "body", "batch_size": 2,
                 "splits": "80/10/10"},
        "train": {"steps": 2, "log_every": 1, "eval_every": 0, "eval_bytes": 500, "progress": False, "device": "cpu"},
    })
    result = loop.train(cfg, tmp_path / "run")
    assert result["step"] == 2 and np.isfinite(result["val_bpb"])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["corpus"]["format"] == "jsonl"
