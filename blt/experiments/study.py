"""The paper's comparison at our scale: a grid of models trained at equal training-FLOP budgets.

    blt study configs/study_cpu.yaml --out runs/study_cpu --workers 2

CELLS. For every budget (training FLOPs, blt.evaluation.flops' 3 x forward convention) the study trains
    byte            a byte-level transformer       } each shape of the size ladder; the one with
    bpe             a transformer over BPE tokens  } the lowest bpb on the selection bytes is the cell's
    static          BLT with static patches of round(patch_size) bytes (MegaByte-like)
    space           BLT with space patches (SpaceByte)
    entropy         BLT with global-threshold entropy patches, calibrated to patch_size
    relative        BLT with relative-threshold entropy patches, calibrated to patch_size
    equal_info      BLT with equal-information patches (a patch closes once its bytes' surprisal
                    reaches a budget), the budget calibrated to patch_size
    per_layer_cross the entropy BLT whose decoder cross-attends before every layer (the paper's form)
    memory          the entropy BLT with Memory+ feed-forwards in its latent (study.memory)
from ONE config: every BLT's latent has the `model` shape; every job sees windows of
`model.context` bytes (the BPE model its token equivalent), the same corpus, batch size,
optimizer and seed; nothing is tuned per cell but the baselines' size, chosen from the ladder
per budget (so each baseline is the best of its shapes for that budget; the BLTs get no such
choice, which favours the baselines). The entropy patchers share one entropy model
(<out>/entropy), trained once; its training FLOPs and the FLOPs of its entropy file are
reported beside every budget (the paper leaves them out of the budgets too).

SPLITS (train/val/test, e.g. 90/5/5). Training reads train; patch thresholds are calibrated on
val and the ladder's shapes compared on the first `selection_bytes` of val; every job is scored
on the first `eval_bytes` of TEST, which nothing was tuned on (noise pairs are cut from them too).

STEPS. A job's steps = round(budget / training FLOPs per step), the per-step cost computed
with the kind's `train_flops_per_position` (blt.runs.kinds), the same function the training
loop charges, times the positions of a step. A BLT's cost depends on its patches, measured
before training on its own first training batches as the loop charges them: the patch slots
and latent patches it EXECUTES, padding included. The FLOPs actually spent come from the
run's metrics.jsonl (`train_flops`).

SEEDS. The largest budget is trained again with seeds 1 .. seeds-1 (train.seed + k: another
initialisation and other batches) for every BLT cell and each baseline's selected shape; the
report gives the spread. The entropy model and the calibration are the same for every seed.

RUNNING. Jobs run `--workers` at a time, each in its own process on one thread. Every job is an
ordinary run directory (blt.experiments.study_config.Job.run_dir); it is done when its
result.json exists, a job with a checkpoint short of its steps resumes from it, and a trained
job without a result is only evaluated: rerunning the command redoes only what is missing, and
the report (blt.experiments.study_report) is rewritten from all results. A signal stops the
study once the jobs under way have saved their checkpoints. What a job's setup, training and
evaluation print goes to its study.log; the terminal shows one progress bar over the grid.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from functools import partial
from pathlib import Path

from tqdm import tqdm

from blt.config import from_dict, read_yaml, save_yaml, to_dict
from blt.data.corpus import open_corpus
from blt.data.stream import ShardPlan
from blt.data.tokens import load_tokenizer, train_tokenizer
from blt.errors import UserError
from blt.evaluation.bpb import split_documents
from blt.evaluation.flops import byte_lm_flops
from blt.evaluation.noise import robustness, scoring_pairs
from blt.experiments.study_config import (
    BASELINES, LOG_FILE, RESULT_FILE, SESSIONS_FILE, Job, StudyConfig, bpe_tree, entropy_run_config, job_run_config, jobs,
    selected_shapes, shape_of, uses_entropy_model,
)
from blt.experiments.study_pool import Stopped, run_jobs
from blt.experiments.study_report import write_report
from blt.files import atomic_write_text, make_directory, read_json, read_text
from blt.models.blt import patch_stats
from blt.runs import layout
from blt.runs.config import RunConfig, load_run_config
from blt.runs.evaluate import evaluate_run
from blt.runs.kind_blt import write_run_entropies
from blt.runs.kinds import KINDS, kind_of
from blt.runs.loading import open_run, pick_device
from blt.runs.lock import RunLock
from blt.train import loop
from blt.train.metrics import read_metrics


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def checkpoint_step(run_dir: Path) -> int | None:
    marker = run_dir / layout.CHECKPOINTS / layout.LATEST
    return layout.checkpoint_step(read_text(marker).strip()) if marker.is_file() else None


def train_to_end(cfg: RunConfig | None, run_dir: Path) -> None:
    """Train a run to its last step, resuming its checkpoint if it has one (then its own saved
    config rules). Stopped if a signal stopped it."""
    step = checkpoint_step(run_dir)
    if step is None:
        result = loop.train(cfg, run_dir)
    else:
        saved = load_run_config(run_dir)
        if step >= saved.train.steps:
            return
        result = loop.train(saved, run_dir, resume=True)
    if result["interrupted"]:
        raise Stopped(result["signal"])


# ---- planning a job -----------------------------------------------------------------------------


def measure_patches(cfg: RunConfig, corpus, run_dir: Path, n_batches: int) -> dict:
    """A prepared BLT run's first training batches as ByteLatentTransformer.loss counts each
    (`patch_stats`), averaged over the batches: the stats of a mean batch."""
    sampler = KINDS["blt"].sampler(cfg, corpus, run_dir, ShardPlan())
    total: dict = {}
    for step in range(n_batches):
        batch = sampler.batch(step)
        for name, value in patch_stats(batch["ids"], batch["targets"], batch["starts"]).items():
            total[name] = total.get(name, 0) + value / n_batches
    return total


def measure_bytes_per_token(cfg: RunConfig, corpus, run_dir: Path, n_batches: int) -> float:
    """Mean bytes per token of a prepared BPE run's first training batches (targets that are
    BOS, EOS or PAD stand for no bytes and are not counted)."""
    lengths = load_tokenizer(run_dir / layout.TOKENIZER).token_lengths()
    sampler = KINDS["bpe"].sampler(cfg, corpus, run_dir, ShardPlan())
    n_bytes = n_tokens = 0
    for step in range(n_batches):
        per_token = lengths[sampler.batch(step)["targets"].numpy()]
        n_bytes += int(per_token.sum())
        n_tokens += int((per_token > 0).sum())
    return n_bytes / max(n_tokens, 1)


class LocalEnv:
    """One process: what a kind's `prepare` needs of a distributed environment."""

    rank, device = 0, "cpu"

    def barrier(self) -> None:
        pass


def plan_job(study: StudyConfig, job: Job, run_dir: Path, corpus, out_dir: Path):
    """(RunConfig with its steps, plan dict) of a fresh job; its patching or tokens prepared in run_dir."""
    cfg = job_run_config(study, job, 1, out_dir / "entropy")
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = {"cell": job.cell, "budget": job.budget, "shape": job.shape, "seed": job.seed, "job": job.name}
    stats: dict = {}
    if cfg.model_kind == "blt":
        link = run_dir / layout.ENTROPY_DIR
        if uses_entropy_model(job.cell) and not link.exists():  # every entropy job reads the one shared file
            os.symlink(os.path.relpath(out_dir / "entropy" / layout.ENTROPY_DIR, run_dir), link)
        cfg = kind_of(cfg).prepare(cfg, corpus, run_dir, LocalEnv())
        stats = measure_patches(cfg, corpus, run_dir, study.measure_batches)
        plan["train_bytes_per_patch"] = stats["bytes"] / max(stats["patches"], 1)
        plan["padding_charged"] = stats["latent_patches"] / max(stats["patches"], 1)
    if cfg.model_kind == "bpe":  # same bytes per window as the other cells: the context in tokens follows
        shutil.copyfile(out_dir / "bpe" / layout.TOKENIZER, run_dir / layout.TOKENIZER)  # learnt once
        kind_of(cfg).prepare(cfg, corpus, run_dir, LocalEnv())
        bytes_per_token = measure_bytes_per_token(cfg, corpus, run_dir, study.measure_batches)
        tree = to_dict(cfg)
        tree.update(bpe_tree(study, shape_of(study, job), max(2, round(study.model.context / bytes_per_token))))
        cfg = from_dict(RunConfig, tree)
        plan["train_bytes_per_patch"] = bytes_per_token
    per_position = kind_of(cfg).train_flops_per_position(cfg, stats)
    per_step = per_position * cfg.data.batch_size * cfg.context * cfg.train.grad_accum
    steps = max(1, round(job.budget / per_step))
    plan.update(train_flops_per_step=per_step, steps=steps, planned_flops=steps * per_step)
    tree = to_dict(cfg)
    tree["train"]["steps"] = steps
    tree["optim"]["warmup_steps"] = max(1, round(study.train.warmup_fraction * steps))
    return from_dict(RunConfig, tree), plan


# ---- training and scoring a job -----------------------------------------------------------------


def final_metrics(run_dir: Path) -> dict:
    rows = read_metrics(run_dir / layout.METRICS)
    if not rows:
        raise UserError(f"{run_dir} has no {layout.METRICS} rows")
    return rows[-1]


def evaluate_job(study: StudyConfig, job: Job, run_dir: Path, pairs) -> dict:
    """Test bpb, inference FLOPs, patch size and noise robustness of a trained job (and, for a
    ladder shape, its bpb on the selection bytes)."""
    run = open_run(run_dir, study.train.device)
    t0 = time.perf_counter()
    ev = evaluate_run(run, None, "test", study.eval_bytes, study.eval_batch_size)
    out = {
        "bpb": ev["bpb"], "eval_bytes": ev["bytes"], "params": ev["params"],
        "flops_per_byte": ev["flops_per_byte"], "flops_per_byte_with_entropy": ev["flops_per_byte_with_entropy"],
        "bytes_per_patch": ev.get("mean_patch_size", ev.get("bytes_per_token", 1.0)),
    }
    if job.cell in BASELINES:
        out["selection_bpb"] = evaluate_run(run, None, "val", study.selection_bytes, study.eval_batch_size)["bpb"]
    for key in ("patcher", "theta", "theta_r"):
        if ev.get(key) is not None:
            out[key] = ev[key]
    if ev.get("budget") is not None:  # "budget" is the job's FLOP budget here
        out["surprisal_budget"] = ev["budget"]
    kinds = {kind: study.noise.p for kind in study.noise.kinds}
    if kinds:
        rob = robustness(partial(run.scores, batch_size=study.eval_batch_size), pairs, kinds, study.noise.seed)
        out.update(clean_pair_bpb=rob["clean_bpb"], noise_pairs=rob["pairs"], noise_bytes=rob["bytes"],
                   noise={k: v["increase"] for k, v in rob["kinds"].items()},
                   noise_p={k: v["p"] for k, v in rob["kinds"].items()})
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def run_job(study: StudyConfig, job: Job, out_dir: Path, corpus, pairs) -> dict:
    """Train (or resume) and evaluate one job; its result (Stopped if a signal stopped it)."""
    run_dir = job.run_dir(out_dir)
    result_path = run_dir / RESULT_FILE
    if result_path.is_file():
        return read_json(result_path)
    make_directory(run_dir)
    with open(run_dir / LOG_FILE, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        plan_path = run_dir / "plan.json"
        if checkpoint_step(run_dir) is None:
            cfg, plan = plan_job(study, job, run_dir, corpus, out_dir)
            _write_json(plan_path, plan)
        else:
            cfg, plan = None, read_json(plan_path)  # train_to_end takes the saved config
        train_to_end(cfg, run_dir)
        last = final_metrics(run_dir)
        result = {
            **plan, "steps": last["step"], "train_flops": last.get("train_flops"), "train_seconds": last["elapsed"],
            "train_bpb": last["bpb"], **evaluate_job(study, job, run_dir, pairs),
        }
    _write_json(result_path, result)
    return result


def run_job_alone(study: StudyConfig, job: Job, out_dir: Path) -> None:
    """run_job in a process of its own (blt.experiments.study_pool), which opens the corpus itself."""
    corpus, pairs = scoring_setup(study)
    run_job(study, job, out_dir, corpus, pairs)


def scoring_setup(study: StudyConfig):
    """(corpus, noise pairs cut from the scored test bytes)."""
    corpus = open_corpus(study.data)
    if "test" not in corpus.split_names:
        raise UserError(f"the study needs train/val/test splits (calibration and selection on val, scores on "
                        f"test); {corpus.name} is split {'/'.join(corpus.split_names)}: set data.splits=90/5/5")
    test_docs = split_documents(corpus.split("test"), study.eval_bytes)
    pairs = scoring_pairs(test_docs, study.noise.prefix, study.noise.continuation, study.noise.max_pairs)
    if study.noise.kinds and not pairs:
        raise UserError("the scored bytes are too short for one noise scoring pair (prefix + continuation)")
    return corpus, pairs


# ---- what every job shares ----------------------------------------------------------------------


def prepare_entropy_model(study: StudyConfig, out_dir: Path, corpus) -> dict:
    """Train the shared entropy model and write the corpus's entropy file (each once)."""
    run_dir = out_dir / "entropy"
    info_path = run_dir / RESULT_FILE
    if info_path.is_file():
        return read_json(info_path)
    train_to_end(entropy_run_config(study), run_dir)
    last = final_metrics(run_dir)
    device = pick_device(study.train.device)
    ent = write_run_entropies(run_dir, corpus, run_dir / layout.ENTROPY_DIR, device=device, progress=False)
    flops = byte_lm_flops(study.entropy.model)
    info = {
        "steps": last["step"], "train_flops": last.get("train_flops"), "train_seconds": last["elapsed"],
        "val_bpb": last.get("val_bpb"), "val_bytes": last.get("val_bytes"), "params": flops.params,
        "flops_per_byte": flops.forward_per_byte, "entropy_file_seconds": ent["seconds"],
        # the entropy file: one forward per byte of every split (training reads the train part,
        # calibration the val part)
        "entropy_file_bytes": len(corpus.data), "entropy_file_flops": flops.forward_per_byte * len(corpus.data),
        "mean_entropy": ent["mean_entropy"],
    }
    _write_json(info_path, info)
    return info


def prepare_tokenizer(study: StudyConfig, out_dir: Path, corpus) -> None:
    """The BPE tokenizer, learnt once from the training split; every BPE job copies it."""
    path = out_dir / "bpe" / layout.TOKENIZER
    if not path.is_file():
        make_directory(path.parent)
        train_tokenizer(corpus.split("train").data, study.bpe.vocab_size, study.bpe.sample_bytes).save(path)


def _check_same_study(study: StudyConfig, out_dir: Path) -> None:
    """An output directory holds one study: what every job shares must not change between runs
    (budgets, cells and seeds may be added)."""
    path = out_dir / "study.yaml"
    new = json.loads(json.dumps(to_dict(study)))  # plain lists and dicts, as YAML reads them back
    if path.is_file():
        old = read_yaml(path)
        changed = sorted(k for k in new if k not in ("budgets", "cells", "seeds") and old.get(k) != new[k])
        if changed:
            raise UserError(
                f"{out_dir} holds a study with another config (differs in: {', '.join(changed)}); "
                "use another --out"
            )


def run_study(study: StudyConfig, out_dir: str | Path, progress: bool = True, workers: int = 1,
              command: str | None = None) -> dict:
    """Run (or finish) the whole grid and write the report; returns {'cells': every job's result,
    'entropy_model', 'complete', 'signal'} ('signal': the name of the one that stopped it, when
    one did). The study holds its directory's lock (blt.runs.lock) throughout. Each call is a
    session, recorded in <out>/sessions.json (command, workers, wall time) for the report."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    with RunLock(out_dir):
        return _run_study(study, out_dir, progress, workers, command)


def _record_session(out_dir: Path, session: dict) -> list[dict]:
    path = out_dir / SESSIONS_FILE
    sessions = read_json(path) if path.is_file() else []
    sessions.append(session)
    _write_json(path, sessions)
    return sessions


def _run_study(study: StudyConfig, out_dir: Path, progress: bool, workers: int, command: str | None) -> dict:
    t0 = time.time()
    _check_same_study(study, out_dir)
    corpus, pairs = scoring_setup(study)
    save_yaml(study, out_dir / "study.yaml")
    first = jobs(study)
    largest = max(study.budgets)
    n_extra = (study.seeds - 1) * len(study.cells)
    needs_entropy = any(uses_entropy_model(c) for c in study.cells)
    bar = tqdm(total=len(first) + n_extra + int(needs_entropy), unit="job", disable=not progress,
               dynamic_ncols=True)
    results, entropy_info, stopped_by = [], None, None
    try:
        if needs_entropy:
            bar.set_description("entropy model")
            entropy_info = prepare_entropy_model(study, out_dir, corpus)
            bar.update(1)
        if "bpe" in study.cells:
            prepare_tokenizer(study, out_dir, corpus)
        work = partial(run_job, study, out_dir=out_dir, corpus=corpus, pairs=pairs)
        run = partial(run_jobs, work=work, child_work=run_job_alone, study=study, out_dir=out_dir,
                      workers=workers, bar=bar)
        results += run(first)
        shapes = selected_shapes(results, largest)
        for seed in range(1, study.seeds):
            results += run(jobs(study, [largest], seed, shapes))
    except Stopped as e:
        results, stopped_by = results + e.results, e.signal_name
    finally:
        bar.close()
    sessions = _record_session(out_dir, {
        "command": command, "workers": workers, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0)),
        "seconds": round(time.time() - t0, 1), "complete": stopped_by is None,
    })
    write_report(out_dir, study, results, entropy_info, sessions)
    return {"cells": results, "entropy_model": entropy_info, "complete": stopped_by is None, "signal": stopped_by}
