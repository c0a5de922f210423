"""Interruptions (README: "Failure behaviour"): a closed stdout lets training go on; Ctrl-C and
SIGTERM end commands with 128 + N, remove their temporaries (the BLT's entropy pass included)
and leave the newest complete checkpoint; an interrupted quickstart continues when rerun.
Each case runs the command in a subprocess, except the quickstart's, which runs in-process
with the signal sent from inside its training loop.
"""
from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blt.runs.checkpoint import latest_checkpoint
from blt.runs.loading import load_model

import test_hardening
from test_hardening import QUICKSTART_TINY, REPO, byte_tree, one_line, run_main, stdlib_text, temporaries, write_yaml
from test_train import _interrupt_at

world = test_hardening.world  # the tiny runs, built once for this module too


def test_closed_stdout_drops_progress_and_training_goes_on(world, tmp_path):
    config = write_yaml(tmp_path / "long.yaml", byte_tree(world.corpus, steps=60, progress=True))
    out, err, status = tmp_path / "run", tmp_path / "stderr", tmp_path / "status"
    train = f"{shlex.quote(sys.executable)} -m blt.cli train {config} --out {out}"
    script = f"{train} 2>{err} | head -n 3 >/dev/null; echo ${{PIPESTATUS[0]}} > {status}"
    subprocess.run(["bash", "-c", script], cwd=REPO, timeout=300, check=True)
    assert status.read_text().strip() == "0", err.read_text()
    assert err.read_text() == ""
    assert latest_checkpoint(out).name == "step_0000060"  # it trained to the end and saved


def _signal_once_visible(argv: list, watch: Path, pattern: str, signum: int) -> subprocess.CompletedProcess:
    """Run a command, send it `signum` once a file matching pattern appears under watch."""
    proc = subprocess.Popen([sys.executable, "-m", "blt.cli", *map(str, argv)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(watch.glob(pattern)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def big_corpus(world) -> Path:
    """Enough bytes that the entropy pass takes seconds (it is interrupted at its start)."""
    path = world.tmp / "big.txt"
    path.write_bytes(stdlib_text(8_000_000))
    return path


def test_ctrl_c_during_the_blt_entropy_pass(world, big_corpus, tmp_path):
    out = tmp_path / "run"
    proc = _signal_once_visible(["train", world.blt_config, "--out", out, "--data", big_corpus],
                                out / "entropies", ".entropies.f16.tmp*", signal.SIGINT)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "blt train: stopped by SIGINT"
    assert not out.exists()  # the temporary is gone, and so is the run directory it was made for


def test_sigterm_during_blt_entropies(world, big_corpus, tmp_path):
    out = tmp_path / "ents"
    proc = _signal_once_visible(["entropies", world.byte_run, "--data", big_corpus, "--out", out],
                                out, ".entropies.f16.tmp*", signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip() == "blt entropies: stopped by SIGTERM"
    assert list(out.iterdir()) == []


def test_two_ctrl_c_within_one_step(world, tmp_path):
    tree = byte_tree(world.corpus, steps=100_000, ckpt_every=1)
    tree["model"] = {"dim": 192, "n_layers": 2, "n_heads": 2, "context": 128}  # steps of a few tenths of a second
    config = write_yaml(tmp_path / "slow.yaml", tree)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "blt.cli", "train", str(config), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "LATEST").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)  # the step under way would finish and save...
        time.sleep(0.05)  # (two signals sent at once may arrive as one)
        proc.send_signal(signal.SIGINT)  # ...but the second stops it at once
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "blt train: stopped by SIGINT"
    assert not temporaries(out)
    load_model(out)  # the newest complete checkpoint loads


def test_interrupted_quickstart_continues(tmp_path, capsys, monkeypatch):
    out = tmp_path / "qs"
    argv = ["quickstart", "--out", out, *QUICKSTART_TINY]
    with monkeypatch.context() as m:
        _interrupt_at(m, stop_step=1, signum=signal.SIGINT, kind="blt")  # the BLT stops after its step 2
        assert run_main(argv, capsys)[0] == 130
    assert latest_checkpoint(out / "blt").name == "step_0000002" and not (out / "quickstart.json").exists()
    entropy_metrics = (out / "entropy" / "metrics.jsonl").read_bytes()

    assert run_main(argv, capsys)[0] == 0  # the same command again: the BLT resumes, the entropy model is kept
    results = json.loads((out / "quickstart.json").read_text())
    assert results["blt"]["step"] == 3 and results["eval"]["step"] == 3
    assert (out / "entropy" / "metrics.jsonl").read_bytes() == entropy_metrics
    one_line(*run_main(argv, capsys), "already holds a run")
