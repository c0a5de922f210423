"""Failure behaviour (README: "Failure behaviour"): every bad input gives one line and exit
status 2, one writer per run directory, no silent NaN, checksummed checkpoints, special files
written in place, full disks and unwritable places named in one line with no temporary left,
bounded generation buffers. Signals and closed pipes: test_interrupts.py.

The tiny runs are trained once per module. Unreadable files and read-only directories are
made with chmod; as root (which chmod does not stop) those cases run in one subprocess under
`setpriv` without the capabilities that bypass file permissions, and are skipped where setpriv
is missing. Full disks are a file-size limit (RLIMIT_FSIZE: EFBIG) or a mocked ENOSPC.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from blt import files
from blt.cli import main
from blt.config import from_dict
from blt.data.corpus import load_corpus
from blt.errors import UserError
from blt.inference import blt as incremental
from blt.inference import rows
from blt.inference.args import GenerationArgs
from blt.runs.checkpoint import latest_checkpoint
from blt.runs.config import RunConfig
from blt.runs.loading import load_model, open_run
from blt.train import loop
from test_train import tiny_tree

REPO = Path(__file__).resolve().parents[1]
STUDY_CONFIG = REPO / "configs" / "study_micro.yaml"
SETPRIV = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
QUICKSTART_TINY = ["--eval-bytes", "2000", "--sample-bytes", "8", "train.steps=3", "train.progress=false",
                   "blt.context=64", "blt.latent.dim=32", "data.batch_size=4", "data.max_bytes=60000",
                   "entropy.train.steps=3", "entropy.train.progress=false"]


def stdlib_text(n_bytes: int) -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    text = b"".join((root / name).read_bytes() for name in ("argparse.py", "json/decoder.py", "textwrap.py"))
    return (text * (n_bytes // len(text) + 1))[:n_bytes]


def byte_tree(corpus: Path, **train) -> dict:
    """test_train's tiny byte model, trained for 2 steps unless told otherwise."""
    return tiny_tree(corpus, **{"steps": 2, **train})


def blt_tree(corpus: Path, entropy_run: Path) -> dict:
    local = {"dim": 32, "n_layers": 1, "n_heads": 2, "window": 16}
    return {
        "model_kind": "blt",
        "blt": {"context": 64, "encoder": local, "latent": {"dim": 32, "n_layers": 1, "n_heads": 2},
                "decoder": local, "k": 2, "hash_buckets": 512},
        "patching": {"kind": "entropy", "target_patch_size": 3.0, "entropy_run": str(entropy_run)},
        "data": {"corpus": str(corpus), "batch_size": 4},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 2, "log_every": 1, "eval_every": 0, "eval_bytes": 1000, "ckpt_every": 0,
                  "progress": False},
    }


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """A corpus, configs, a trained byte run and a trained BLT run (with entropy patching)."""
    tmp = tmp_path_factory.mktemp("hardening")
    corpus = tmp / "corpus.txt"
    corpus.write_bytes(stdlib_text(64_000))
    small = tmp / "small.txt"
    small.write_bytes(stdlib_text(300))
    config = write_yaml(tmp / "tiny.yaml", byte_tree(corpus))
    byte_run, blt_run = tmp / "byte", tmp / "blt"
    loop.train(from_dict(RunConfig, byte_tree(corpus)), byte_run)
    blt_config = write_yaml(tmp / "blt.yaml", blt_tree(corpus, byte_run))
    loop.train(from_dict(RunConfig, blt_tree(corpus, byte_run)), blt_run)
    return SimpleNamespace(tmp=tmp, corpus=corpus, small=small, config=config, blt_config=blt_config,
                           byte_run=byte_run, blt_run=blt_run)


def copy_run(src: Path, d: Path) -> Path:
    return Path(shutil.copytree(src, d / src.name))


def weights_of(run: Path) -> Path:
    return latest_checkpoint(run) / "model.safetensors"


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


def one_line(status, err: str, *words: str) -> str:
    """The single stderr line of a command that must fail with status 2, checked."""
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def run_main(argv: list, capsys) -> tuple[int, str]:
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


# ---- the table of bad inputs ----------------------------------------------------------------------
# name -> builder(world, fresh directory) -> (argv, words the one line must hold, paths that must not exist)


def _train(w, d, *extra):
    return ["train", w.config, "--out", d / "run", *extra]


def _damaged(w, d, path: str, content: bytes, run_name: str = "byte_run"):
    run = copy_run(getattr(w, run_name), d)
    (run / path).write_bytes(content)
    return run


def _nan_weights(w, d):
    """A copy of the byte run whose weights hold a NaN, its recorded checksum updated to match."""
    run = copy_run(w.byte_run, d)
    path = weights_of(run)
    state = load_file(str(path))
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(path))
    info_path = path.parent / "model.json"
    info = json.loads(info_path.read_text())
    info["sha256"]["model.safetensors"] = files.sha256_file(path)
    info_path.write_text(json.dumps(info))
    return run


def _flipped_bit(w, d):
    run = copy_run(w.byte_run, d)
    data = bytearray(weights_of(run).read_bytes())
    data[len(data) * 3 // 4] ^= 0x10  # inside the tensor data, not the header
    weights_of(run).write_bytes(bytes(data))
    return run


def _train_state_wrong_keys(w, d):
    """train_state.pt with other keys, in a checkpoint without recorded sums (an older one)."""
    run = copy_run(w.byte_run, d)
    ckpt = latest_checkpoint(run)
    torch.save({"weights": torch.zeros(2)}, ckpt / "train_state.pt")
    info = json.loads((ckpt / "model.json").read_text())
    del info["sha256"]
    (ckpt / "model.json").write_text(json.dumps(info))
    return run


def _a_file(d):
    (d / "file").write_text("not a directory")
    return d / "file"


def _unreadable(path: Path) -> Path:
    path.chmod(0)
    return path


def _unreadable_in_dir(d):
    docs = d / "docs"
    docs.mkdir()
    (docs / "a.txt").write_bytes(stdlib_text(2000))
    (docs / "b.txt").write_bytes(b"secret")
    _unreadable(docs / "b.txt")
    return docs


def _binary_config(d):
    (d / "bad.yaml").write_bytes(b"model:\n  dim: 32\n\xff\xfe\x00")
    return d / "bad.yaml"


def _read_only_dir(d):
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


CASES = {
    "model.dim negative": lambda w, d: (_train(w, d, "model.dim=-64"), ["'model.dim'", "at least 1"], [d / "run"]),
    "model.dim zero": lambda w, d: (_train(w, d, "model.dim=0"), ["'model.dim'"], [d / "run"]),
    "model.n_heads negative": lambda w, d: (_train(w, d, "model.n_heads=-4"), ["'model.n_heads'"], [d / "run"]),
    "heads not dividing dim": lambda w, d: (_train(w, d, "model.n_heads=3"), ["'model.n_heads'", "divisor"], []),
    "optim.lr nan": lambda w, d: (_train(w, d, "optim.lr=.nan"), ["'optim.lr'"], [d / "run"]),
    "optim.lr inf": lambda w, d: (_train(w, d, "optim.lr=.inf"), ["'optim.lr'", "finite"], []),
    "optim.lr negative": lambda w, d: (_train(w, d, "optim.lr=-1"), ["'optim.lr'"], []),
    "optim.beta1 two": lambda w, d: (_train(w, d, "optim.beta1=2"), ["'optim.beta1'", "[0, 1)"], []),
    "weight_decay nan": lambda w, d: (_train(w, d, "optim.weight_decay=.nan"), ["'optim.weight_decay'"], []),
    "eval_bytes zero": lambda w, d: (_train(w, d, "train.eval_bytes=0"), ["'train.eval_bytes'"], []),
    "train seed beyond 64 bits": lambda w, d: (_train(w, d, f"train.seed={2**64}"), ["'train.seed'"], []),
    "blt.context 100000": lambda w, d: (["train", w.blt_config, "--out", d / "run", "blt.context=100000"],
                                        ["blt.context=100000", "GiB"], [d / "run"]),
    "model.context 400000": lambda w, d: (_train(w, d, "model.context=400000"), ["model.context=400000", "GiB"], []),
    "binary bytes in a config": lambda w, d: (
        ["train", _binary_config(d), "--out", d / "run"], ["bad.yaml", "not UTF-8"], [d / "run"]),
    "binary bytes in a run's config.yaml": lambda w, d: (
        ["eval", _damaged(w, d, "config.yaml", b"model_kind: byte\n\x80\x81")], ["config.yaml", "not UTF-8"], []),
    "train --out is a file": lambda w, d: (["train", w.config, "--out", _a_file(d)], ["not a directory"], []),
    "study --out is a file": lambda w, d: (["study", STUDY_CONFIG, "--out", _a_file(d)], ["not a directory"], []),
    "quickstart --out is a file": lambda w, d: (["quickstart", "--out", _a_file(d)], ["not a directory"], []),
    "resume with another model size": lambda w, d: (
        ["train", copy_run(w.byte_run, d), "--resume", "--steps", "3", "model.dim=64"],
        ["does not fit", "(259, 32) in the checkpoint but (259, 64)"], []),
    "train_state.pt with the wrong keys": lambda w, d: (
        ["train", _train_state_wrong_keys(w, d), "--resume", "--steps", "3"],
        ["train_state.pt lacks", "optimizer"], []),
    "damaged metrics.jsonl line at resume": lambda w, d: (
        ["train", _damaged(w, d, "metrics.jsonl", b'{"step": 1}\n{"step": 2, "lo'), "--resume",
         "--steps", "3"], ["metrics.jsonl line 2 is damaged"], []),
    "damaged run.json at resume": lambda w, d: (
        ["train", _damaged(w, d, "run.json", b'{"corpus": '), "--resume", "--steps", "3"], ["run.json", "damaged"], []),
    "damaged entropies.json at resume": lambda w, d: (
        ["train", _damaged(w, d, "entropies/entropies.json", b"{", "blt_run"), "--resume", "--steps", "3"],
        ["entropies.json", "damaged"], []),
    "BLT setup fails": lambda w, d: (
        ["train", w.blt_config, "--out", d / "run", f"patching.entropy_run={d / 'nowhere'}"], ["not found"],
        [d / "run"]),
    "generate --temperature inf": lambda w, d: (["generate", w.byte_run, "--temperature", "inf"], ["temperature"], []),
    "generate --seed beyond 64 bits": lambda w, d: (["generate", w.byte_run, "--seed", str(2**64)], ["seed"], []),
    "NaN weights, generate": lambda w, d: (["generate", _nan_weights(w, d)], ["not finite", "head.weight"], []),
    "NaN weights, eval": lambda w, d: (["eval", _nan_weights(w, d), "--max-bytes", "100"], ["not finite"], []),
    "one flipped bit in the weights": lambda w, d: (["eval", _flipped_bit(w, d)], ["corrupted", "sha256"], []),
}

# need chmod to bite: run as a user, or as root without the capabilities that bypass permissions
UNPRIVILEGED = {
    "unreadable --data file": lambda w, d: (
        _train(w, d, "--data", _unreadable(Path(shutil.copy(w.small, d / "data.txt")))),
        ["cannot read", "Permission denied"], [d / "run"]),
    "unreadable file in a --data directory": lambda w, d: (
        _train(w, d, "--data", _unreadable_in_dir(d)), ["cannot read", "b.txt", "Permission denied"], [d / "run"]),
    "unreadable score --input": lambda w, d: (
        ["score", w.byte_run, "--input", _unreadable(Path(shutil.copy(w.small, d / "in.txt"))), "--out", d / "o.npy"],
        ["cannot read", "Permission denied"], [d / "o.npy"]),
    "unreadable model.safetensors": lambda w, d: (
        ["eval", _unreadable_weights(w, d)], ["cannot read", "model.safetensors", "Permission denied"], []),
    "read-only --out directory, train": lambda w, d: (
        ["train", w.config, "--out", _read_only_dir(d) / "run"], ["cannot write", "Permission denied"], []),
    "read-only --out directory, score": lambda w, d: (
        ["score", w.byte_run, "--input", w.small, "--out", _read_only_dir(d) / "o.npy"],
        ["cannot write", "o.npy", "Permission denied"], []),
    "read-only --out directory, entropies": lambda w, d: (
        ["entropies", w.byte_run, "--data", w.small, "--out", _read_only_dir(d) / "ents"],
        ["cannot write", "Permission denied"], []),
}


def _unreadable_weights(w, d):
    run = copy_run(w.byte_run, d)
    _unreadable(weights_of(run))
    return run


RUNNER = r"""
import contextlib, io, json, sys, traceback
from blt.cli import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
        except BaseException:
            status = None
            traceback.print_exc(file=err)
    results[name] = [status, err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def unprivileged(world, tmp_path_factory) -> dict:
    """name -> (status, stderr, words, paths that must not exist, case directory) of the
    UNPRIVILEGED cases, all run by one interpreter (one start-up) without the power to ignore
    file permissions."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: chmod cannot make a file unreadable")
        prefix = SETPRIV
    argvs, checks = {}, {}
    for name, build in UNPRIVILEGED.items():
        d = tmp_path_factory.mktemp("case")
        argv, words, absent = build(world, d)
        argvs[name], checks[name] = [str(a) for a in argv], (words, absent, d)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BLT_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    proc = subprocess.run([*prefix, sys.executable, "-c", RUNNER, json.dumps(argvs)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: (*results[name], *checks[name]) for name in argvs}


@pytest.mark.parametrize("name", [*CASES, *UNPRIVILEGED])
def test_bad_input_gives_one_line_and_status_2(name, world, tmp_path, capsys, request):
    if name in CASES:
        argv, words, absent = CASES[name](world, tmp_path)
        status, err = run_main(argv, capsys)
        where = tmp_path
    else:
        status, err, words, absent, where = request.getfixturevalue("unprivileged")[name]
    line = one_line(status, err, *words)
    assert line.startswith("blt "), line
    for path in absent:
        assert not Path(path).exists(), f"{name} left {path} behind"
    assert not temporaries(where)


# ---- one writer per run directory -------------------------------------------------------------------


def test_second_writer_is_refused_and_a_dead_holder_is_taken_over(world, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from blt.runs.lock import RunLock; RunLock(sys.argv[1]).__enter__(); "
                               "print('locked', flush=True); sys.stdin.read()", str(run)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (["train", world.config, "--out", run], ["quickstart", "--out", run, *QUICKSTART_TINY],
                     ["study", STUDY_CONFIG, "--out", run]):
            one_line(*run_main(argv, capsys), "in use by another blt process", f"pid {holder.pid}")
        assert not (run / "config.yaml").exists()
    finally:
        holder.kill()  # kill -9: its lock is stale now
        holder.wait()
    assert run_main(["train", world.config, "--out", run], capsys)[0] == 0
    assert latest_checkpoint(run).name == "step_0000002"
    assert (run / "lock").read_text().strip() == str(os.getpid())


# ---- non-finite values, checksums ------------------------------------------------------


def test_non_finite_loss_stops_at_its_step_without_saving_it(world, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", world.config, "--out", out, "--steps", "12", "optim.lr=1e20", "train.ckpt_every=1"]
    line = one_line(*run_main(argv, capsys), "training stopped at step", "not finite")
    step = int(re.search(r"step (\d+)", line).group(1))
    saved = sorted((out / "checkpoints").glob("step_*"))
    assert [int(p.name.split("_")[1]) for p in saved] == list(range(1, step))[-2:]  # kept: the 2 newest
    for ckpt in saved:
        assert all(bool(t.isfinite().all()) for t in load_file(str(ckpt / "model.safetensors")).values())


def test_checkpoints_without_recorded_sums_still_load(world, tmp_path):
    run = copy_run(world.byte_run, tmp_path)
    info_path = latest_checkpoint(run) / "model.json"
    info = json.loads(info_path.read_text())
    assert set(info["sha256"]) == {"model.safetensors", "train_state.pt"}
    del info["sha256"]  # as checkpoints written before the sums were recorded
    info_path.write_text(json.dumps(info))
    model, _ = load_model(run)
    saved = load_file(str(weights_of(run)))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if k in saved)


# ---- outputs: special files, full disks ------------------------------------------------------------------


def test_special_files_are_written_in_place(world, tmp_path, capsysbinary):
    expected = open_run(world.byte_run, "cpu").scores([np.frombuffer(world.small.read_bytes(), np.uint8)])[0]
    assert main(["score", str(world.byte_run), "--input", str(world.small), "--out", os.devnull]) == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert main(["score", str(world.byte_run), "--input", str(world.small), "--out", str(fifo)]) == 0
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    np.testing.assert_allclose(np.load(io.BytesIO(received[0])), expected, rtol=1e-5)
    capsysbinary.readouterr()

    assert main(["score", str(world.byte_run), "--input", str(world.small), "--out", "-"]) == 0
    out, err = capsysbinary.readouterr()
    np.testing.assert_allclose(np.load(io.BytesIO(out)), expected, rtol=1e-5)
    assert json.loads(err)["bytes"] == len(expected)  # the summary goes to stderr then
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_no_space_left_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    real_open = open

    class FullDisk:
        """A file opened for writing whose every write finds the disk full."""

        def __init__(self, path, mode="r", *args):
            self.file = real_open(path, mode, *args)

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(files, "open", FullDisk, raising=False)
    with pytest.raises(UserError, match=f"cannot write {re.escape(str(target))}: No space left on device"):
        files.atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_file_size_limit_during_a_checkpoint(world, tmp_path):
    run = copy_run(world.byte_run, tmp_path)
    limit = weights_of(run).stat().st_size // 2  # config.yaml, run.json and metrics fit; the weights do not

    proc = subprocess.run(
        [sys.executable, "-m", "blt.cli", "train", str(run), "--resume", "--steps", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    one_line(proc.returncode, proc.stderr, "cannot write", "step_0000003", "File too large")
    assert not temporaries(run)
    assert latest_checkpoint(run).name == "step_0000002"
    load_model(run)  # the previous checkpoint is whole


# ---- smaller cases ----------------------------------------------------------------------------------------


def test_generation_buffers_grow_with_the_positions_reached(world, monkeypatch):
    run = open_run(world.blt_run, "cpu")
    args = GenerationArgs(max_new_bytes=40, temperature=0.0)
    (expected,) = run.generate([b"import "], args)
    monkeypatch.setattr(rows, "FIRST_COLUMNS", 3)
    monkeypatch.setattr(incremental, "FIRST_COLUMNS", 3)
    assert run.generate([b"import "], args) == [expected]  # buffers that grew many times: the same bytes
    every_byte = tuple(bytes([b]) for b in range(256))  # stops at the first byte: nothing is allocated for 10**12
    assert len(run.generate([b"x"], GenerationArgs(max_new_bytes=10**12, stop=every_byte))[0]) == 0


def test_a_symlink_loop_reads_each_file_once(tmp_path, blt_cache):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"alpha")
    (tmp_path / "d" / "b.txt").write_bytes(b"beta")
    (tmp_path / "d" / "loop").symlink_to("..")
    corpus = load_corpus(str(tmp_path / "**" / "*.txt"))
    assert len(corpus.docs) - 1 == 2 and bytes(corpus.data) == b"alphabeta"


def test_corpus_warning_goes_to_stderr(world, tmp_path, capsys):
    run = copy_run(world.byte_run, tmp_path)
    status = main(["train", str(run), "--resume", "--steps", "3", "--data", str(world.small)])
    out, err = capsys.readouterr()
    assert status == 0 and "corpus differs" in err and "corpus differs" not in out
