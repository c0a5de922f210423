"""The equal-FLOP study (blt.experiments.study): the micro config end to end, its report, the
ladder, the seeds, the scored split, skipping, resuming and running jobs in processes."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blt.cli import main
from blt.config import load_config
from blt.evaluation.flops import byte_lm_flops
from blt.experiments.study import run_study
from blt.experiments.study_config import BASELINES, BLT_CELLS, Job, StudyConfig, jobs, uses_entropy_model
from blt.runs.config import load_run_config
from blt.runs.evaluate import evaluate_run
from blt.runs.loading import open_run
from blt.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "study_micro.yaml"


def _overrides(tmp: Path) -> list[str]:
    """Run the micro config as it is, with the shared corpus found from a worktree too."""
    from conftest import SHARED_DATA

    return [f"data.corpus={SHARED_DATA / 'tinyshakespeare.txt'}"]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """(study directory, its StudyConfig, results by (job name, budget)) of one micro study run."""
    tmp = tmp_path_factory.mktemp("study")
    overrides = _overrides(tmp)
    out = tmp / "micro"
    assert main(["study", str(CONFIG), "--out", str(out), *overrides]) == 0
    study = load_config(StudyConfig, CONFIG, overrides)
    with open(out / "results.csv") as f:
        rows = {(r["job"], float(r["budget"])): r for r in csv.DictReader(f)}
    return out, study, rows


def test_every_job_is_in_the_csv_and_every_cell_in_the_markdown(micro):
    out, study, rows = micro
    assert len(study.budgets) >= 2 and len(study.ladder) >= 2 and study.seeds >= 2
    assert set(study.cells) == set(BASELINES) | set(BLT_CELLS)  # the micro config covers every cell kind
    first = jobs(study)
    assert len(first) == len(study.budgets) * (len(BLT_CELLS) + len(BASELINES) * len(study.ladder))
    seeded = [(name, b) for name, b in rows if name.endswith("-seed1")]
    assert set(rows) == {(j.name, j.budget) for j in first} | set(seeded)
    assert len(seeded) == len(study.cells) and {b for _, b in seeded} == {max(study.budgets)}
    md = (out / "results.md").read_text()
    for cell in study.cells:  # one row per budget table, one per seed table
        n = sum(line.startswith(f"| {cell} |") for line in md.splitlines())
        ladder = len(study.ladder) * len(study.budgets) if cell in BASELINES else 0
        assert n == len(study.budgets) + 1 + ladder, cell
    for r in rows.values():
        assert 0 < float(r["bpb"]) < 9 and int(r["params"]) > 0
        for kind in study.noise.kinds:
            assert r[f"noise_{kind}"] != "", kind  # every job has its robustness figures
    entropy = json.loads((out / "entropy" / "result.json").read_text())
    assert entropy["train_flops"] > 0 and entropy["entropy_file_flops"] > 0 and "entropy model" in md


def test_plots_are_valid_pngs(micro):
    import matplotlib.image

    out, _, _ = micro
    for name in ("bpb_vs_train_flops.png", "bpb_vs_inference_flops.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_equal_budgets_spend_about_equal_flops(micro):
    out, study, rows = micro
    for (name, budget), r in rows.items():
        spent = float(r["train_flops"])
        assert spent / budget == pytest.approx(1.0, abs=0.12), (name, budget, spent)
        run_dir = Job(budget, r["cell"], r["shape"] or None, int(r["seed"])).run_dir(out)
        assert read_metrics(run_dir / "metrics.jsonl")[-1]["train_flops"] == spent
    budget = study.budgets[0]
    assert len({rows[(j.name, budget)]["steps"] for j in jobs(study, [budget])}) > 1  # different step counts
    # the byte job's count is exactly the formula's: steps x positions per step x training FLOPs per byte
    job = Job(budget, "byte", study.ladder[0].name)
    cfg = load_run_config(job.run_dir(out))
    expected = cfg.train.steps * cfg.data.batch_size * cfg.model.context * byte_lm_flops(cfg.model).train_per_byte
    assert float(rows[(job.name, budget)]["train_flops"]) == pytest.approx(expected, rel=1e-9)
    # a BLT with static patches of k bytes measures about k bytes per patch before training, and
    # is charged for the padded latent patches it executes (at least the real ones)
    k = max(1, round(study.patch_size))
    assert float(rows[("static", budget)]["train_bytes_per_patch"]) == pytest.approx(k, rel=0.1)
    for cell in BLT_CELLS:
        assert float(rows[(cell, budget)]["padding_charged"]) >= 1.0


def test_the_entropy_model_is_charged_beside_the_budget(micro):
    out, _, rows = micro
    e = json.loads((out / "entropy" / "result.json").read_text())
    cost = e["train_flops"] + e["entropy_file_flops"]
    for (name, budget), r in rows.items():
        want = budget + cost if uses_entropy_model(r["cell"]) else budget
        assert float(r["budget_with_entropy_model"]) == pytest.approx(want), name


def test_the_ladder_selects_on_val_and_the_seeds_train_the_selected_shape(micro):
    out, study, rows = micro
    for budget in study.budgets:
        for cell in BASELINES:
            rungs = [r for (name, b), r in rows.items() if b == budget and r["cell"] == cell and r["seed"] == "0"]
            assert len(rungs) == len(study.ladder)
            best = min(rungs, key=lambda r: float(r["selection_bpb"]))
            assert [r["shape"] for r in rungs if r["selected"] == "True"] == [best["shape"]]
            if budget == max(study.budgets):
                assert (f"{cell}-{best['shape']}-seed1", budget) in rows
    assert "## The baselines' size ladder" in (out / "results.md").read_text()


def test_jobs_are_scored_on_test_bytes_and_calibrated_on_val(micro):
    out, study, rows = micro
    budget = study.budgets[-1]
    run = open_run(Job(budget, "entropy").run_dir(out), "cpu")
    on_test = evaluate_run(run, None, "test", study.eval_bytes, study.eval_batch_size)["bpb"]
    on_val = evaluate_run(run, None, "val", study.eval_bytes, study.eval_batch_size)["bpb"]
    assert float(rows[("entropy", budget)]["bpb"]) == pytest.approx(on_test, rel=1e-6)
    assert on_val != pytest.approx(on_test, rel=1e-3)
    patching = json.loads((Job(budget, "entropy").run_dir(out) / "patching.json").read_text())
    assert patching["calibration_split"] == "val"


def test_the_per_layer_cross_and_memory_cells_are_other_models(micro):
    out, study, rows = micro
    budget = study.budgets[-1]
    cross = load_run_config(Job(budget, "per_layer_cross").run_dir(out))
    assert cross.blt.decoder_cross == "every_layer" and cross.blt.decoder.n_layers > 1
    assert rows[("per_layer_cross", budget)]["bpb"] != rows[("entropy", budget)]["bpb"]
    memory = load_run_config(Job(budget, "memory").run_dir(out))
    assert memory.blt.latent.memory is not None and memory.blt.latent.memory.keys == study.memory.keys
    assert int(rows[("memory", budget)]["params"]) > int(rows[("entropy", budget)]["params"])


def _no_training(monkeypatch):
    import blt.train.loop

    def refuse(*args, **kwargs):
        raise AssertionError("a finished job was trained again")

    monkeypatch.setattr(blt.train.loop, "train", refuse)


def test_rerun_skips_finished_jobs(micro, monkeypatch):
    import blt.experiments.study

    out, study, rows = micro
    _no_training(monkeypatch)
    monkeypatch.setattr(blt.experiments.study, "evaluate_job", lambda *a, **k: pytest.fail("a finished job was re-evaluated"))
    summary = run_study(study, out, progress=False)
    assert summary["complete"]
    assert {(r["job"], r["budget"]) for r in summary["cells"]} == set(rows)


def test_a_trained_job_without_result_is_only_evaluated(micro, tmp_path, monkeypatch):
    out, study, rows = micro
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)
    budget = study.budgets[-1]
    (Job(budget, "entropy").run_dir(copy) / "result.json").unlink()
    _no_training(monkeypatch)
    summary = run_study(study, copy, progress=False)
    again = [r for r in summary["cells"] if r["job"] == "entropy" and r["budget"] == budget][0]
    assert again["bpb"] == pytest.approx(float(rows[("entropy", budget)]["bpb"]), rel=1e-6)


def _small(tmp_path, study) -> list[str]:
    ladder = study.ladder[0]
    return _overrides(tmp_path) + [f"budgets=[{study.budgets[0]}]", "cells=[byte,space]", "seeds=1",
                                   f"ladder=[{{dim: {ladder.dim}, n_layers: {ladder.n_layers}, "
                                   f"n_heads: {ladder.n_heads}}}]", "train.ckpt_every=4"]


def test_interrupted_job_resumes_from_its_checkpoint(micro, tmp_path, monkeypatch):
    """A SIGTERM in the middle of a job stops the study; rerunning continues that job to the
    same model and the same FLOP count as the uninterrupted study."""
    import dataclasses

    from blt.runs.kinds import KINDS

    _, study, rows = micro
    budget = study.budgets[0]
    small = load_config(StudyConfig, CONFIG, _small(tmp_path, study) + ["cells=[byte]"])
    real = KINDS["byte"].sampler

    class Interrupting:
        def __init__(self, inner):
            self.inner = inner

        def batch(self, step, micro=0):
            if step == 6 and micro == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.inner.batch(step, micro)

    with monkeypatch.context() as m:
        m.setitem(KINDS, "byte", dataclasses.replace(KINDS["byte"], sampler=lambda *a: Interrupting(real(*a))))
        first = run_study(small, tmp_path / "s", progress=False)
    job = Job(budget, "byte", study.ladder[0].name)
    run_dir = job.run_dir(tmp_path / "s")
    assert not first["complete"] and not (run_dir / "result.json").exists()
    assert (run_dir / "checkpoints" / "step_0000007").is_dir()

    second = run_study(small, tmp_path / "s", progress=False)
    assert second["complete"]
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in metrics] == sorted({r["step"] for r in metrics})  # no repeats after the resume
    result = second["cells"][0]
    assert result["train_flops"] == float(rows[(job.name, budget)]["train_flops"])
    assert result["bpb"] == pytest.approx(float(rows[(job.name, budget)]["bpb"]), rel=1e-6)


def test_jobs_in_two_processes_give_the_same_results_and_stop_on_a_signal(micro, tmp_path):
    """`--workers 2`: each job in its own process; the same results as in one process. A SIGTERM
    to the study reaches the running jobs, which save a checkpoint; the rerun finishes them."""
    _, study, rows = micro
    out = tmp_path / "w"
    args = [sys.executable, "-m", "blt.cli", "study", str(CONFIG), "--out", str(out), "--workers", "2",
            *_small(tmp_path, study)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = Job(study.budgets[0], "space")
    metrics = job.run_dir(out) / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in stdout
    assert (job.run_dir(out) / "checkpoints" / "LATEST").is_file()
    assert not (job.run_dir(out) / "result.json").exists()
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    with open(out / "results.csv") as f:
        parallel = {(r["job"], float(r["budget"])): r for r in csv.DictReader(f)}
    assert len(parallel) == 2
    for key, r in parallel.items():
        if key[0] == "space":  # resumed: the same model as uninterrupted
            assert float(r["bpb"]) == pytest.approx(float(rows[key]["bpb"]), rel=1e-6)
        else:
            assert r["bpb"] == rows[key]["bpb"] and r["train_flops"] == rows[key]["train_flops"]


def test_bad_or_changed_configs_are_user_errors(micro, tmp_path):
    out, _, _ = micro
    overrides = _overrides(tmp_path)
    assert main(["study", str(CONFIG), "--out", str(out), *overrides, "model.dim=64"]) == 2  # another study
    assert main(["study", str(CONFIG), "--out", str(tmp_path / "x"), "cells=[byte,megabyte]"]) == 2
    assert main(["study", str(CONFIG), "--out", str(tmp_path / "y"), *overrides, "data.splits=90/10"]) == 2  # no test
    assert main(["study", str(CONFIG), "--out", str(tmp_path / "z"), *overrides, "--workers", "0"]) == 2
    assert main(["study", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.parametrize("name", ["study_micro", "study_cpu", "study_gpu"])
def test_shipped_configs_build_every_job(name, tmp_path):
    from blt.experiments.study_config import entropy_run_config, job_run_config

    study = load_config(StudyConfig, REPO / "configs" / f"{name}.yaml")
    assert len(study.budgets) >= 2 and sorted(study.budgets) == study.budgets
    for job in jobs(study):
        cfg = job_run_config(study, job, 10, tmp_path)  # every RunConfig validates
        if cfg.model_kind == "blt":  # the latent is the shared shape
            assert (cfg.blt.latent.dim, cfg.blt.latent.n_layers) == (study.model.dim, study.model.n_layers)
            assert cfg.blt.context == study.model.context
    assert entropy_run_config(study).model == study.entropy.model
