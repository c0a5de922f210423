"""The equal-FLOP study (blt.experiments.study): the micro config end to end, its report, skipping and resuming."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import sysconfig
from pathlib import Path

import pytest

from blt.evaluation.flops import byte_lm_flops
from blt.runs.config import load_run_config

from blt.cli import main
from blt.config import load_config
from blt.experiments.study import StudyConfig, budget_label, run_study
from blt.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "study_micro.yaml"
HAS_BPE = importlib.util.find_spec("blt.models.token_lm") is not None


def _overrides(tmp: Path) -> list[str]:
    """Run the micro config as it is, but for what this checkout lacks."""
    out = []
    if not HAS_BPE:
        out.append("cells=[byte,static,space,entropy,relative,equal_info]")
    if not (REPO / load_config(StudyConfig, CONFIG).data.corpus).is_file():
        text = b"".join((Path(sysconfig.get_paths()["stdlib"]) / n).read_bytes() for n in ("argparse.py", "csv.py"))
        (tmp / "corpus.txt").write_bytes(text[:60_000])
        out.append(f"data.corpus={tmp / 'corpus.txt'}")
    return out


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """(study directory, its StudyConfig, results by (cell, budget)) of one micro study run."""
    tmp = tmp_path_factory.mktemp("study")
    overrides = _overrides(tmp)
    out = tmp / "micro"
    assert main(["study", str(CONFIG), "--out", str(out), *overrides]) == 0
    study = load_config(StudyConfig, CONFIG, overrides)
    with open(out / "results.csv") as f:
        rows = {(r["cell"], float(r["budget"])): r for r in csv.DictReader(f)}
    return out, study, rows


def test_every_cell_is_in_the_csv_and_the_markdown(micro):
    out, study, rows = micro
    assert len(study.budgets) >= 2 and ("bpe" in study.cells) == HAS_BPE
    assert set(rows) == {(c, b) for c in study.cells for b in study.budgets}
    md = (out / "results.md").read_text()
    for cell in study.cells:
        assert sum(line.startswith(f"| {cell} |") for line in md.splitlines()) == len(study.budgets), cell
    for r in rows.values():
        assert 0 < float(r["bpb"]) < 9 and int(r["params"]) > 0
        for kind in study.noise.kinds:
            assert r[f"noise_{kind}"] != "", kind  # every cell has its robustness figures
    entropy = json.loads((out / "entropy" / "result.json").read_text())
    assert entropy["train_flops"] > 0 and "entropy model" in md


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
    for budget in study.budgets:
        spent = {c: float(rows[(c, budget)]["train_flops"]) for c in study.cells}
        for cell, flops in spent.items():
            assert flops / budget == pytest.approx(1.0, abs=0.12), (cell, budget, flops)
            run_dir = out / "cells" / budget_label(budget) / cell
            assert read_metrics(run_dir / "metrics.jsonl")[-1]["train_flops"] == flops
        # cells got different step counts to get there
        assert len({rows[(c, budget)]["steps"] for c in study.cells}) > 1
    # the byte cell's count is exactly the formula's: steps x positions per step x training FLOPs per byte
    budget = study.budgets[0]
    cfg = load_run_config(out / "cells" / budget_label(budget) / "byte")
    expected = cfg.train.steps * cfg.data.batch_size * cfg.model.context * byte_lm_flops(cfg.model).train_per_byte
    assert float(rows[("byte", budget)]["train_flops"]) == pytest.approx(expected, rel=1e-9)
    # a BLT with static patches of k bytes measures about k bytes per patch before training
    k = max(1, round(study.patch_size))
    assert float(rows[("static", budget)]["train_bytes_per_patch"]) == pytest.approx(k, rel=0.1)


def _no_training(monkeypatch):
    import blt.train.loop

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(blt.train.loop, "train", refuse)


def test_rerun_skips_finished_cells(micro, monkeypatch):
    import blt.experiments.study

    out, study, rows = micro
    _no_training(monkeypatch)
    monkeypatch.setattr(blt.experiments.study, "evaluate_cell", lambda *a, **k: pytest.fail("a finished cell was re-evaluated"))
    summary = run_study(study, out, progress=False)
    assert summary["complete"]
    assert {(r["cell"], r["budget"]) for r in summary["cells"]} == set(rows)


def test_a_trained_cell_without_result_is_only_evaluated(micro, tmp_path, monkeypatch):
    out, study, rows = micro
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)
    budget = study.budgets[-1]
    (copy / "cells" / budget_label(budget) / "entropy" / "result.json").unlink()
    _no_training(monkeypatch)
    summary = run_study(study, copy, progress=False)
    again = [r for r in summary["cells"] if r["cell"] == "entropy" and r["budget"] == budget][0]
    assert again["bpb"] == pytest.approx(float(rows[("entropy", budget)]["bpb"]), rel=1e-6)


def test_interrupted_cell_resumes_from_its_checkpoint(micro, tmp_path, monkeypatch):
    """A SIGTERM in the middle of a cell stops the study; rerunning continues that cell to the
    same model and the same FLOP count as the uninterrupted study."""
    import dataclasses

    from blt.runs.kinds import KINDS

    _, study, rows = micro
    budget = study.budgets[0]
    overrides = _overrides(tmp_path) + [f"budgets=[{budget}]", "cells=[byte]", "train.ckpt_every=4"]
    small = load_config(StudyConfig, CONFIG, overrides)
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
    run_dir = tmp_path / "s" / "cells" / budget_label(budget) / "byte"
    assert not first["complete"] and not (run_dir / "result.json").exists()
    assert (run_dir / "checkpoints" / "step_0000007").is_dir()

    second = run_study(small, tmp_path / "s", progress=False)
    assert second["complete"]
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in metrics] == sorted({r["step"] for r in metrics})  # no repeats after the resume
    result = second["cells"][0]
    assert result["train_flops"] == float(rows[("byte", budget)]["train_flops"])
    assert result["bpb"] == pytest.approx(float(rows[("byte", budget)]["bpb"]), rel=1e-6)


def test_bad_or_changed_configs_are_user_errors(micro, tmp_path):
    out, _, _ = micro
    overrides = _overrides(tmp_path)
    assert main(["study", str(CONFIG), "--out", str(out), *overrides, "model.dim=64"]) == 2  # another study
    assert main(["study", str(CONFIG), "--out", str(tmp_path / "x"), "cells=[byte,megabyte]"]) == 2
    assert main(["study", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.parametrize("name", ["study_micro", "study_cpu", "study_gpu"])
def test_shipped_configs_build_every_cell(name, tmp_path):
    from blt.experiments.study import cell_run_config, entropy_run_config

    study = load_config(StudyConfig, REPO / "configs" / f"{name}.yaml")
    assert len(study.budgets) >= 2 and sorted(study.budgets) == study.budgets
    cells = [c for c in study.cells if HAS_BPE or c != "bpe"]
    for cell in cells:
        cfg = cell_run_config(study, cell, 10, tmp_path)  # every RunConfig validates
        if cfg.model_kind == "blt":  # the latent is the byte transformer's shape
            assert (cfg.blt.latent.dim, cfg.blt.latent.n_layers) == (study.model.dim, study.model.n_layers)
            assert cfg.blt.context == study.model.context
    assert entropy_run_config(study).model == study.entropy.model
