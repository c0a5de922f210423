"""Training: optimizer and schedule, a tiny run that learns, exact resume, checkpoints that
survive crashes and signals, and the `blt train` command's handling of bad input."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from blt.config import from_dict
from blt.data.corpus import resolve_corpus
from blt.errors import UserError
from blt.runs.checkpoint import latest_checkpoint
from blt.runs.config import RunConfig, load_run_config
from blt.runs.kinds import KINDS
from blt.runs.loading import load_model
from blt.train import loop
from blt.train.metrics import read_metrics
from blt.train.optim import build_optimizer, build_scheduler, lr_factor

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_tree(corpus: Path, **train) -> dict:
    return {
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "context": 32},
        "data": {"corpus": str(corpus), "batch_size": 8},
        "optim": {"lr": 3e-3, "warmup_steps": 4},
        "train": {"steps": 12, "log_every": 1, "eval_every": 0, "eval_bytes": 2000, "ckpt_every": 0,
                  "progress": False, **train},
    }


def tiny_cfg(corpus: Path, **train) -> RunConfig:
    return from_dict(RunConfig, tiny_tree(corpus, **train))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


# ---------------------------------------------------------------- optimizer and schedule


def test_weight_decay_only_on_matrices(text_file):
    model = loop.setup_model(tiny_cfg(text_file), torch.device("cpu"))
    opt = build_optimizer(model, tiny_cfg(text_file).optim)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name
    assert any("norm" in n for n, p in model.named_parameters() if id(p) not in decayed)
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_schedule_warmup_then_cosine_to_floor():
    warm, total, ratio = 10, 110, 0.1
    f = [lr_factor(s, warm, total, ratio) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[warm - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:warm], f[1:warm]))  # rising
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1 :]))  # then never rising
    assert f[warm + 50] == pytest.approx(ratio + (1 - ratio) * 0.5)  # cosine midpoint
    assert lr_factor(total, warm, total, ratio) == pytest.approx(ratio)
    assert min(f) > ratio - 1e-12


def test_scheduler_state_is_plain_and_extendable(tmp_path):
    cfg = from_dict(RunConfig, {"optim": {"lr": 1.0, "warmup_steps": 2}})
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, cfg.optim, total_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = torch.optim.AdamW([p], lr=1.0)
    sched2 = build_scheduler(opt2, cfg.optim, total_steps=20)
    from blt.train.optim import load_scheduler_state

    load_scheduler_state(sched2, state)
    assert sched2.last_epoch == 5
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_factor(5, 2, 20, cfg.optim.min_lr_ratio))


# ---------------------------------------------------------------- training runs


def test_tiny_run_learns_and_records_itself(text_file, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(text_file, steps=40, log_every=5, eval_every=20, ckpt_every=20, bf16=True, grad_accum=2)
    out = tmp_path / "run"
    result = loop.train(cfg, out)

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0, (rows[0]["loss"], rows[-1]["loss"])
    for r in rows:
        assert r["bpb"] == pytest.approx(r["loss"] * r["targets"] / (math.log(2) * r["bytes"]))  # EOS nats per byte
        for key in ("lr", "grad_norm", "bytes_per_s", "elapsed", "tokens", "targets", "peak_mem_mb"):
            assert key in r, key
    assert [r["step"] for r in rows if "val_bpb" in r] == [20, 40]
    assert rows[-1]["tokens"] == 40 * 2 * 8 * 32  # steps x micro-steps x batch x context
    assert result["val_bpb"] == rows[-1]["val_bpb"] and not result["interrupted"]

    assert load_run_config(out) == cfg  # config.yaml holds the whole resolved config
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 1 and info["torch"] == torch.__version__
    import hashlib

    assert info["corpus"]["sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()

    model, _ = load_model(out)
    saved = final_weights(out)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if k in saved)


def _interrupt_at(monkeypatch, stop_step: int, signum: int, kind: str = "byte"):
    """Make the run (of model kind `kind`) receive `signum` while it draws the batch of `stop_step`."""
    real = KINDS[kind].sampler

    class Interrupting:
        def __init__(self, inner):
            self.inner = inner

        def batch(self, step, micro=0):
            if step == stop_step and micro == 0:
                os.kill(os.getpid(), signum)
            return self.inner.batch(step, micro)

    monkeypatch.setitem(KINDS, kind, dataclasses.replace(KINDS[kind], sampler=lambda *a: Interrupting(real(*a))))


def test_interrupted_and_resumed_run_is_bit_identical(text_file, tmp_path, monkeypatch):
    cfg = tiny_cfg(text_file, steps=12, grad_accum=2, ckpt_every=4)
    straight = tmp_path / "straight"
    loop.train(cfg, straight)

    broken = tmp_path / "broken"
    handler_before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        _interrupt_at(m, stop_step=5, signum=signal.SIGTERM)  # SIGINT: see the subprocess test
        first = loop.train(cfg, broken)
    assert first["interrupted"] and first["signal"] == "SIGTERM"
    assert first["step"] == 6  # the step under way finished, then it stopped
    assert latest_checkpoint(broken).name == "step_0000006"
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers restored

    second = loop.train(load_run_config(broken), broken, resume=True)
    assert second["step"] == 12 and not second["interrupted"]

    a, b = final_weights(straight), final_weights(broken)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a, rows_b = read_metrics(straight / "metrics.jsonl"), read_metrics(broken / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == list(range(1, 13))  # one file, no gaps, no repeats
    # per-step losses after the resume point match too (each row covers one step here)
    assert [r["loss"] for r in rows_a[6:]] == [r["loss"] for r in rows_b[6:]]
    # and the model did change from its initialisation
    init = loop.setup_model(cfg, torch.device("cpu")).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)


def test_leftover_temporary_checkpoint_is_ignored_and_run_extends(text_file, tmp_path):
    cfg = tiny_cfg(text_file, steps=4, ckpt_every=2)
    out = tmp_path / "run"
    loop.train(cfg, out)
    # a crash while saving step 6 leaves a half-written temporary directory behind
    crash = out / "checkpoints" / ".step_0000006.tmp99999"
    crash.mkdir()
    (crash / "model.safetensors").write_bytes(b"\x00garbage")
    model, _ = load_model(out)  # loads step 4, not the debris
    assert torch.equal(model.head.weight, final_weights(out)["head.weight"])

    with pytest.raises(UserError, match="already reached step 4"):
        loop.train(cfg, out, resume=True)
    with pytest.raises(UserError, match="--resume"):
        loop.train(cfg, out)
    longer = from_dict(RunConfig, {**tiny_tree(text_file, steps=6, ckpt_every=2)})
    result = loop.train(longer, out, resume=True)
    assert result["step"] == 6 and latest_checkpoint(out).name == "step_0000006"
    assert not crash.exists()
    assert load_run_config(out).train.steps == 6  # config.yaml records the extension
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000004", "step_0000006"]


def test_directory_corpus_trains(text_dir, tmp_path, blt_cache):
    result = loop.train(tiny_cfg(text_dir, steps=3), tmp_path / "run")
    assert result["step"] == 3 and math.isfinite(result["loss"])


# ---------------------------------------------------------------- the command


def blt_cli(*args, cwd=REPO_ROOT, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blt.cli", "train", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def test_sigint_saves_checkpoint_and_exits_cleanly(text_file, tmp_path):
    config = write_config(tmp_path / "long.yaml", tiny_tree(text_file, steps=100_000, log_every=5, progress=True))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "blt.cli", "train", str(config), "--out", str(out)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while not line.startswith("step ") and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    break
        assert line.startswith("step "), proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr  # 128 + SIGINT, the shell's convention (README: Failure behaviour)
    assert "Traceback" not in stderr
    ckpt = latest_checkpoint(out)
    assert "checkpoint saved to" in stdout and ckpt.name in stdout and "--resume" in stdout
    step = int(ckpt.name.split("_")[1])
    assert 1 <= step < 100_000
    assert read_metrics(out / "metrics.jsonl")[-1]["step"] == step


def _bad_input_cases(tmp: Path, corpus: Path) -> dict:
    """name -> (arguments after `blt train`, a fragment the one-line error must contain)."""
    good = write_config(tmp / "good.yaml", tiny_tree(corpus, steps=1))
    typo_tree = tiny_tree(corpus)
    typo_tree["trian"] = typo_tree.pop("train")
    typo = write_config(tmp / "typo.yaml", typo_tree)
    empty = tmp / "empty.txt"
    empty.write_bytes(b"")
    hollow = tmp / "hollow"
    (hollow / "sub").mkdir(parents=True)
    used = tmp / "used"
    (used / "checkpoints").mkdir(parents=True)
    (used / "checkpoints" / "LATEST").write_text("step_0000001")
    return {
        "missing config": ([tmp / "nope.yaml"], "nope.yaml"),
        "unknown key override": ([good, "model.dimm=64"], "'model.dimm'"),
        "wrong type override": ([good, "--steps", "3", "optim.lr=fast"], "'optim.lr'"),
        "steps zero": ([good, "--steps", "0"], "--steps"),
        "missing data": ([good, "--data", tmp / "absent.txt"], "absent.txt"),
        "empty data file": ([good, "--data", empty], "empty"),
        "directory without files": ([good, "--data", hollow], "no files"),
        # checked in-process only (the subprocess cases above already show the CLI path)
        "unknown key in file": ([typo], "'trian'"),
        "checkpoint without resume": ([good, "--out", used], "--resume"),
        "resume without run": ([good, "--out", tmp / "fresh", "--resume"], "nothing to resume"),
    }


SUBPROCESS_CASES = [
    "missing config", "unknown key override", "wrong type override", "steps zero", "missing data",
    "empty data file", "directory without files",
]


def test_bad_input_gives_one_line_and_status_2(text_file, tmp_path):
    cases = _bad_input_cases(tmp_path, text_file)
    out = tmp_path / "should_not_exist"
    # launched together: each case is one interpreter start-up, the slow part
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "blt.cli", "train", *map(str, cases[name][0]), "--out", str(out)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in SUBPROCESS_CASES
    }
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 2, (name, stderr)
        assert "Traceback" not in stderr, (name, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blt train: error:"), (name, stderr)
        assert cases[name][1] in lines[0], (name, lines[0])
    assert not out.exists()  # bad input leaves no half-made run directory behind


@pytest.mark.parametrize("name", ["unknown key in file", "checkpoint without resume", "resume without run"])
def test_bad_input_in_process(name, text_file, tmp_path, capsys):
    from blt.cli import main

    args, expected = _bad_input_cases(tmp_path, text_file)[name]
    assert main(["train", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_late_overrides_and_flags_reach_the_config(text_file, tmp_path):
    from blt.cli import build_parser
    from blt.commands.train import resolve_config

    config = write_config(tmp_path / "c.yaml", tiny_tree(text_file))
    args = build_parser().parse_args(
        ["train", str(config), "optim.lr=5e-4", "--steps", "7", "--data", "stdlib", "model.dim=64"]
    )
    cfg, out = resolve_config(args)
    assert (cfg.optim.lr, cfg.train.steps, cfg.data.corpus, cfg.model.dim) == (5e-4, 7, "stdlib", 64)
    assert out == Path("runs") / "c"


def test_relative_corpus_paths_fall_back_to_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_text("x")
    assert resolve_corpus("here.txt") == "here.txt"  # the working directory comes first
    assert Path(resolve_corpus("configs/tiny.yaml")) == REPO_ROOT / "configs" / "tiny.yaml"
    assert resolve_corpus("nowhere/at_all.txt") == "nowhere/at_all.txt"  # left for load_corpus to report
    assert resolve_corpus("stdlib") == "stdlib"
