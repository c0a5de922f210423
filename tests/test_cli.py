"""The inference commands end to end, and every kind of bad input: one line, exit status 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from blt.config import from_dict, save_yaml
from blt.data.corpus import load_corpus
from blt.evaluation.bpb import evaluate_split
from blt.inference.args import GenerationArgs
from blt.runs.checkpoint import save_checkpoint
from blt.runs.config import RunConfig
from blt.runs.kinds import build_model
from blt.runs.loading import open_run

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"


def make_run(run: Path, step: int = 7, corpus: str = str(SHAKESPEARE)) -> Path:
    """A run directory with an initialised (untrained) tiny ByteLM, as training would leave it."""
    cfg = from_dict(
        RunConfig,
        {"model": {"dim": 32, "n_layers": 1, "n_heads": 2, "context": 32}, "data": {"corpus": corpus}},
    )
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    save_checkpoint(run, step, model, cfg, {})
    return run


def blt(*args, stdin=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "blt.cli", *map(str, args)], cwd=REPO, capture_output=True, env=env, timeout=300
    )


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("cli") / "run")


@pytest.fixture(scope="module")
def corrupt_runs(tmp_path_factory, run_dir) -> list[Path]:
    """Two copies of the run: model.safetensors replaced by garbage, and cut in half."""
    weights = next(run_dir.glob("checkpoints/step_*/model.safetensors")).read_bytes()
    runs = []
    for name, payload in [("garbage", os.urandom(600)), ("truncated", weights[: len(weights) // 2])]:
        run = make_run(tmp_path_factory.mktemp(name) / "run")
        next(run.glob("checkpoints/step_*/model.safetensors")).write_bytes(payload)
        runs.append(run)
    return runs


# ---- commands that work


def test_eval_prints_json_last_matching_in_process_eval(run_dir):
    proc = blt("eval", run_dir, "--max-bytes", 3000)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    run = open_run(run_dir, "cpu")
    model = run.model
    expected = evaluate_split(run.scores, load_corpus(str(SHAKESPEARE)).split("val"), 3000)
    assert summary["bytes"] == 3000 and summary["split"] == "val" and summary["step"] == 7
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["corpus"] == str(SHAKESPEARE)
    assert summary["bpb"] == pytest.approx(expected["bpb"], rel=1e-5)
    assert summary["nats"] == pytest.approx(expected["nats"], rel=1e-5)


def test_score_binary_file(run_dir, tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 1500, dtype=np.uint8).tobytes() + b"\x00\xff\n"
    src, out = tmp_path / "random.bin", tmp_path / "nats.npy"
    src.write_bytes(data)
    proc = blt("score", run_dir, "--input", src, "--out", out)
    assert proc.returncode == 0, proc.stderr.decode()
    nats = np.load(out)
    assert nats.dtype == np.float32 and nats.shape == (len(data),)
    expected = open_run(run_dir, "cpu").scores([np.frombuffer(data, dtype=np.uint8)])[0]
    np.testing.assert_allclose(nats, expected, rtol=1e-5)
    summary = json.loads(proc.stdout.decode())
    assert summary["bytes"] == len(data)
    assert summary["nats"] == pytest.approx(float(expected.sum(dtype=np.float64)), rel=1e-5)


def test_generate_text_raw_and_stream_agree(run_dir):
    prompt = "Ünïcode: "
    (expected,) = open_run(run_dir, "cpu").generate([prompt.encode()], GenerationArgs(40, temperature=0.9, seed=3))
    args = ["generate", run_dir, "--prompt", prompt, "--max-new-bytes", 40, "--temperature", 0.9, "--seed", 3]
    raw = blt(*args, "--raw")
    assert raw.returncode == 0, raw.stderr.decode()
    assert raw.stdout == prompt.encode() + expected  # exact bytes, no newline
    text = blt(*args)
    streamed = blt(*args, "--stream")
    raw_streamed = blt(*args, "--stream", "--raw")
    want = (prompt.encode() + expected).decode("utf-8", errors="replace") + "\n"
    assert text.stdout.decode() == want  # invalid UTF-8 still prints, as U+FFFD
    assert streamed.stdout.decode() == want
    assert raw_streamed.stdout == raw.stdout


def test_long_prompt_is_truncated_with_a_note(run_dir):
    prompt = "abcdefghij" * 5  # 50 bytes, context 32
    proc = blt("generate", run_dir, "--prompt", prompt, "--max-new-bytes", 5, "--temperature", 0, "--raw")
    assert proc.returncode == 0
    assert "using its last 32 bytes" in proc.stderr.decode()
    assert proc.stdout.startswith(prompt.encode()) and len(proc.stdout) == 55


# ---- bad input


def test_missing_run_dir(tmp_path):
    assert_user_error(blt("eval", tmp_path / "nope"), "not found")


def test_run_dir_without_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_yaml(RunConfig(), run / "config.yaml")
    assert_user_error(blt("generate", run, "--prompt", "x"), "no checkpoint")


def test_corrupted_checkpoint_leaves_outputs_alone(corrupt_runs, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    src.write_bytes(b"hello")
    out.write_bytes(b"earlier results")
    for run in corrupt_runs:
        assert_user_error(blt("score", run, "--input", src, "--out", out), "corrupted")
        assert out.read_bytes() == b"earlier results"
    assert_user_error(blt("eval", corrupt_runs[0]), "corrupted")


@pytest.mark.parametrize("kind", ["missing", "empty file", "empty dir"])
def test_bad_data_paths(run_dir, tmp_path, kind):
    path = tmp_path / "data"
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "empty dir":
        path.mkdir()
    assert_user_error(blt("eval", run_dir, "--data", path))


@pytest.mark.parametrize("kind", ["missing", "empty file", "dir"])
def test_bad_score_inputs(run_dir, tmp_path, kind):
    path = tmp_path / "input"
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "dir":
        path.mkdir()
    assert_user_error(blt("score", run_dir, "--input", path, "--out", tmp_path / "o.npy"))
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["--split", "dev"], ["invalid choice"]),
        (["--split", "test"], ["no 'test' split"]),  # tiny shakespeare splits 90/10: no test split
        (["--max-bytes", "0"], ["--max-bytes"]),
    ],
)
def test_bad_eval_arguments(run_dir, args, words):
    assert_user_error(blt("eval", run_dir, *args), *words)


@pytest.mark.parametrize(
    "args,words",
    [
        (["--max-new-bytes", "-1"], ["max-new-bytes"]),
        (["--temperature", "-1"], ["temperature"]),
        (["--top-p", "0"], ["top-p"]),
    ],
)
def test_bad_generate_arguments(run_dir, args, words):
    assert_user_error(blt("generate", run_dir, "--prompt", "x", *args), *words)


def test_quickstart_smoke(tmp_path):
    pytest.importorskip("blt.train.loop")
    out = tmp_path / "qs"
    args = ["quickstart", "--out", out, "--eval-bytes", 2000, "--sample-bytes", 16]
    overrides = ["train.steps=3", "train.progress=false", "blt.context=64", "blt.latent.dim=32", "data.batch_size=4"]
    tiny_data = ["data.max_bytes=60000", "entropy.train.steps=3", "entropy.train.progress=false"]
    proc = blt(*args, *overrides, *tiny_data)
    assert proc.returncode == 0, proc.stderr.decode()
    results = json.loads((out / "quickstart.json").read_text())
    assert results["eval"]["bytes"] == 2000 and results["eval"]["split"] == "val"
    assert results["eval"]["corpus"] == "stdlib" and results["eval"]["step"] == 3
    assert f"val bpb {results['eval']['bpb']:.4f}" in proc.stdout.decode()
    assert results["entropy_model"]["step"] == 3 and (out / "blt" / "patching.json").is_file()
    assert results["eval"]["mean_patch_size"] >= 1 and results["eval"]["theta"] is not None
    assert results["sample"].startswith("def ")
    assert_user_error(blt(*args), "already holds a run")  # a second run never overwrites the first
