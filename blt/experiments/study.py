"""The paper's comparison at our scale: a grid of models trained at equal training-FLOP budgets.

    blt study configs/study_cpu.yaml --out runs/study_cpu

CELLS. For every budget (training FLOPs, blt.evaluation.flops' 3 x forward convention) the study trains
    byte      a byte-level transformer
    bpe       a transformer over BPE tokens
    static    BLT with static patches of round(patch_size) bytes (MegaByte-like)
    space     BLT with space patches (SpaceByte)
    entropy   BLT with global-threshold entropy patches, calibrated to patch_size
    relative  BLT with relative-threshold entropy patches, calibrated to patch_size
    equal_info BLT with equal-information patches (a patch closes once its bytes' surprisal
              reaches a budget), the budget calibrated to patch_size
from ONE config: the byte and BPE transformers and the BLT's latent share the `model` width,
depth and heads; every cell sees windows of `model.context` bytes (the BPE model its token
equivalent), the same corpus, batch size, optimizer and seed; nothing is tuned per cell.
The entropy and equal_info patchers share one entropy model (<out>/entropy), trained once; its training
cost is reported on its own, its inference cost in the cells' FLOPs per byte with entropy.

STEPS. A cell's steps = round(budget / training FLOPs per step), the per-step cost computed
with the kind's `train_flops_per_position` (blt.runs.kinds), the same function the training
loop charges, times the positions of a step. A BLT's cost depends on its patch count, measured
before training on the cell's own first training batches (the patches its latent computes,
padding included, as the loop charges them). The FLOPs actually spent come from the run's metrics.jsonl (`train_flops`).

EVALUATION. Every cell is scored on the same held-out bytes: the first `eval_bytes` of the
val split (bpb, blt.runs.evaluate.evaluate_run, which also gives inference FLOPs per byte
and the patch size on those bytes), and on robustness pairs cut from them (blt.evaluation.noise).

RESUMING. <out>/cells/<budget>/<cell>/ is an ordinary run directory. A cell is done when its
result.json exists; a cell with a checkpoint short of its steps resumes from it; a cell
whose training finished is only evaluated. Rerunning the command therefore redoes only
what is missing, and the report (blt.experiments.study_report) is rewritten from all results.
A signal stops the study once the run it reached has saved its checkpoint. What a cell's
setup, training and evaluation print goes to its study.log; the terminal shows one progress
bar over the grid.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial

from tqdm import tqdm

from blt.config import from_dict, read_yaml, save_yaml, to_dict
from blt.data.corpus import open_corpus
from blt.data.tokens import load_tokenizer
from blt.errors import UserError
from blt.evaluation.bpb import split_documents
from blt.evaluation.flops import byte_lm_flops
from blt.evaluation.noise import NOISE_KINDS, check_noise, robustness, scoring_pairs
from blt.data.stream import ShardPlan
from blt.experiments.study_report import write_report
from blt.files import atomic_write_text, make_directory, read_json, read_text
from blt.models.blt import patch_stats
from blt.models.byte_lm import ByteLMConfig
from blt.runs import layout
from blt.runs.config import DataConfig, OptimConfig, RunConfig, load_run_config
from blt.runs.evaluate import evaluate_run
from blt.runs.kind_blt import write_run_entropies
from blt.runs.kinds import KINDS, kind_of
from blt.runs.loading import open_run, pick_device
from blt.runs.lock import RunLock
from blt.train import loop
from blt.train.metrics import read_metrics

CELLS = ("byte", "bpe", "static", "space", "entropy", "relative", "equal_info")
BLT_CELLS = ("static", "space", "entropy", "relative", "equal_info")
ENTROPY_CELLS = ("entropy", "relative", "equal_info")  # the cells that read the shared entropy model
RESULT_FILE = "result.json"
LOG_FILE = "study.log"  # what a cell's setup, training and evaluation print
LOOP_EVAL_BYTES = 4096  # the training loop's own final evaluation, kept cheap: the study scores cells itself


@dataclass
class ModelSpec:
    """The shared transformer: the byte and BPE models, and the BLT's latent."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context: int = 512  # bytes per training window, every cell


@dataclass
class LocalSpec:
    """The BLT's local encoder and decoder (byte-level, sliding window)."""

    dim: int = 64
    encoder_layers: int = 1
    decoder_layers: int = 1
    n_heads: int = 4
    window: int = 64
    k: int = 2
    hash_buckets: int = 4096


@dataclass
class EntropySpec:
    """The entropy model shared by the entropy-patching cells."""

    model: ByteLMConfig = field(
        default_factory=lambda: ByteLMConfig(dim=64, n_layers=2, n_heads=4, context=256, window=64)
    )
    steps: int = 300
    batch_size: int = 16
    lr: float | None = None  # None = optim.lr


@dataclass
class BPESpec:
    """The BPE-token cell's tokenizer."""

    vocab_size: int = 4096
    sample_bytes: int = 10_000_000  # training bytes it is learned from (at most)


@dataclass
class NoiseSpec:
    kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS))
    p: float | None = None  # one probability for every kind; None = each kind's default
    prefix: int = 192
    continuation: int = 64
    max_pairs: int = 200  # pairs cut from the evaluation bytes
    seed: int = 0

    def validate(self):
        for kind in self.kinds:
            check_noise(kind, self.p)


@dataclass
class StudyTrain:
    seed: int = 0
    grad_accum: int = 1
    bf16: bool = False
    device: str = "auto"
    log_every: int = 10
    ckpt_every: int = 200  # what an interrupted cell resumes from
    warmup_fraction: float = 0.1  # warm-up steps = this share of each cell's steps


@dataclass
class StudyConfig:
    budgets: list[float] = field(default_factory=lambda: [1e13])  # training FLOPs per cell
    cells: list[str] = field(default_factory=lambda: list(CELLS))
    patch_size: float = 4.5  # entropy patchers' calibration target; static patches of round(patch_size)
    model: ModelSpec = field(default_factory=ModelSpec)
    local: LocalSpec = field(default_factory=LocalSpec)
    entropy: EntropySpec = field(default_factory=EntropySpec)
    bpe: BPESpec = field(default_factory=BPESpec)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: StudyTrain = field(default_factory=StudyTrain)
    eval_bytes: int | None = 100_000  # held-out bytes every cell is scored on; null = the whole val split
    eval_batch_size: int = 16
    measure_batches: int = 16  # training batches a BLT's patch size is measured on before training

    def validate(self):
        if not self.budgets or min(self.budgets) <= 0:
            raise UserError(f"budgets must be a non-empty list of positive FLOP counts, got {self.budgets}")
        unknown = [c for c in self.cells if c not in CELLS]
        if unknown or not self.cells:
            raise UserError(f"cells must be some of {', '.join(CELLS)}, got {self.cells}")
        if self.patch_size < 1:
            raise UserError(f"patch_size must be at least 1, got {self.patch_size}")
        if self.eval_bytes is not None and self.eval_bytes < 1:
            raise UserError(f"eval_bytes must be positive or null, got {self.eval_bytes}")
        if self.measure_batches < 1:
            raise UserError(f"measure_batches must be at least 1, got {self.measure_batches}")
        for cell in self.cells:  # every cell's run config checks its values now, not after hours of training
            cell_run_config(self, cell, 1, Path("entropy"))


def budget_label(budget: float) -> str:
    """1e12 -> '1e12', 2.5e12 -> '2.5e12': a directory name that sorts within an exponent."""
    return f"{budget:.3g}".replace("e+", "e")


# ---- run configs of the cells -------------------------------------------------------------------


def _common(study: StudyConfig, steps: int, batch_size: int | None = None, lr: float | None = None) -> dict:
    t = study.train
    return {
        "data": {**to_dict(study.data), **({"batch_size": batch_size} if batch_size else {})},
        "optim": {**to_dict(study.optim), "warmup_steps": max(1, round(t.warmup_fraction * steps)),
                  **({"lr": lr} if lr is not None else {})},
        "train": {
            "steps": steps, "grad_accum": t.grad_accum, "seed": t.seed, "bf16": t.bf16, "device": t.device,
            "log_every": t.log_every, "ckpt_every": t.ckpt_every, "eval_every": 0,
            "eval_bytes": LOOP_EVAL_BYTES, "progress": False,
        },
    }


def entropy_run_config(study: StudyConfig) -> RunConfig:
    """The shared entropy model's run; its own final evaluation is on the study's eval bytes."""
    e = study.entropy
    tree = {"model_kind": "byte", "model": to_dict(e.model), **_common(study, e.steps, e.batch_size, e.lr)}
    tree["train"]["eval_bytes"] = study.eval_bytes
    return from_dict(RunConfig, tree)


def cell_run_config(study: StudyConfig, cell: str, steps: int, entropy_dir: Path | None = None) -> RunConfig:
    """The RunConfig of one cell, trained for `steps` (see the module docstring)."""
    m, loc = study.model, study.local
    tree = _common(study, steps)
    if cell == "byte":
        tree.update(model_kind="byte", model={"dim": m.dim, "n_layers": m.n_layers, "n_heads": m.n_heads,
                                              "context": m.context})
    elif cell == "bpe":
        tree.update(bpe_tree(study))
    elif cell in BLT_CELLS:
        local = {"dim": loc.dim, "n_heads": loc.n_heads, "window": loc.window}
        tree.update(model_kind="blt", blt={
            "context": m.context,
            "encoder": {**local, "n_layers": loc.encoder_layers},
            "latent": {"dim": m.dim, "n_layers": m.n_layers, "n_heads": m.n_heads},
            "decoder": {**local, "n_layers": loc.decoder_layers},
            "k": loc.k,
            "hash_buckets": loc.hash_buckets,
        })
        patching = {"kind": cell, "target_patch_size": study.patch_size}
        if cell == "static":
            patching["patch_size"] = max(1, round(study.patch_size))
        if cell in ENTROPY_CELLS:
            patching["entropy_run"] = str(Path(entropy_dir).resolve())
        tree["patching"] = patching
    else:
        raise UserError(f"unknown study cell '{cell}'")
    return from_dict(RunConfig, tree)


def bpe_tree(study: StudyConfig, context_tokens: int | None = None) -> dict:
    """The BPE cell's part of a RunConfig tree: a token transformer of the shared shape whose
    window holds about model.context bytes (context_tokens, known once the tokenizer is)."""
    m = study.model
    return {"model_kind": "bpe", "bpe": {
        "dim": m.dim, "n_layers": m.n_layers, "n_heads": m.n_heads, "context": context_tokens or m.context,
        "vocab_size": study.bpe.vocab_size, "sample_bytes": study.bpe.sample_bytes,
    }}


# ---- running ------------------------------------------------------------------------------------


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def checkpoint_step(run_dir: Path) -> int | None:
    marker = run_dir / layout.CHECKPOINTS / layout.LATEST
    return layout.checkpoint_step(read_text(marker).strip()) if marker.is_file() else None


class Stopped(Exception):
    """A signal stopped one of the study's runs (its checkpoint is saved): the study ends there."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def train_to_end(cfg: RunConfig, run_dir: Path) -> None:
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


def plan_cell(study: StudyConfig, cell: str, budget: float, run_dir: Path, corpus, entropy_dir: Path | None):
    """(RunConfig with its steps, plan dict) of a fresh cell; BLT patching prepared in run_dir."""
    cfg = cell_run_config(study, cell, 1, entropy_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = {"cell": cell, "budget": budget}
    stats: dict = {}
    if cfg.model_kind == "blt":
        link = run_dir / layout.ENTROPY_DIR
        if cell in ENTROPY_CELLS and not link.exists():  # every entropy cell reads the one shared file
            os.symlink(os.path.relpath(entropy_dir / layout.ENTROPY_DIR, run_dir), link)
        cfg = kind_of(cfg).prepare(cfg, corpus, run_dir, LocalEnv())
        stats = measure_patches(cfg, corpus, run_dir, study.measure_batches)
        plan["train_bytes_per_patch"] = stats["targets"] / max(stats["patches"], 1)
    if cfg.model_kind == "bpe":  # same bytes per window as the other cells: the context in tokens follows
        kind_of(cfg).prepare(cfg, corpus, run_dir, LocalEnv())
        bytes_per_token = measure_bytes_per_token(cfg, corpus, run_dir, study.measure_batches)
        tree = to_dict(cfg)
        tree.update(bpe_tree(study, max(2, round(study.model.context / bytes_per_token))))
        cfg = from_dict(RunConfig, tree)
        plan["train_bytes_per_patch"] = bytes_per_token
    per_position = kind_of(cfg).train_flops_per_position(cfg, stats)
    per_step = per_position * cfg.data.batch_size * cfg.context * cfg.train.grad_accum
    steps = max(1, round(budget / per_step))
    plan.update(train_flops_per_step=per_step, steps=steps, planned_flops=steps * per_step)
    tree = to_dict(cfg)
    tree["train"]["steps"] = steps
    tree["optim"]["warmup_steps"] = max(1, round(study.train.warmup_fraction * steps))
    return from_dict(RunConfig, tree), plan


def final_metrics(run_dir: Path) -> dict:
    rows = read_metrics(run_dir / layout.METRICS)
    if not rows:
        raise UserError(f"{run_dir} has no {layout.METRICS} rows")
    return rows[-1]


def evaluate_cell(study: StudyConfig, run_dir: Path, pairs) -> dict:
    """bpb, inference FLOPs, patch size and noise robustness of a trained cell."""
    run = open_run(run_dir, study.train.device)
    t0 = time.perf_counter()
    ev = evaluate_run(run, None, "val", study.eval_bytes, study.eval_batch_size)
    kinds = {kind: study.noise.p for kind in study.noise.kinds}
    scores = partial(run.scores, batch_size=study.eval_batch_size)
    rob = robustness(scores, pairs, kinds, study.noise.seed) if kinds else None
    out = {
        "bpb": ev["bpb"], "eval_bytes": ev["bytes"], "params": ev["params"],
        "flops_per_byte": ev["flops_per_byte"], "flops_per_byte_with_entropy": ev["flops_per_byte_with_entropy"],
        "bytes_per_patch": ev.get("mean_patch_size", ev.get("bytes_per_token", 1.0)),
    }
    for key in ("patcher", "theta", "theta_r"):
        if ev.get(key) is not None:
            out[key] = ev[key]
    if ev.get("budget") is not None:  # "budget" is the cell's FLOP budget here
        out["surprisal_budget"] = ev["budget"]
    if rob is not None:
        out.update(clean_pair_bpb=rob["clean_bpb"], noise_pairs=rob["pairs"], noise_bytes=rob["bytes"],
                   noise={k: v["increase"] for k, v in rob["kinds"].items()},
                   noise_p={k: v["p"] for k, v in rob["kinds"].items()})
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def run_cell(study: StudyConfig, cell: str, budget: float, run_dir: Path, corpus, entropy_dir, pairs) -> dict:
    """Train (or resume) and evaluate one cell; its result (Stopped if a signal stopped it)."""
    result_path = run_dir / RESULT_FILE
    if result_path.is_file():
        return read_json(result_path)
    make_directory(run_dir)
    with open(run_dir / LOG_FILE, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return _run_cell(study, cell, budget, run_dir, corpus, entropy_dir, pairs)


def _run_cell(study, cell, budget, run_dir, corpus, entropy_dir, pairs):
    result_path = run_dir / RESULT_FILE
    plan_path = run_dir / "plan.json"
    if checkpoint_step(run_dir) is None:
        cfg, plan = plan_cell(study, cell, budget, run_dir, corpus, entropy_dir)
        _write_json(plan_path, plan)
    else:
        cfg, plan = None, read_json(plan_path)  # train_to_end takes the saved config
    train_to_end(cfg, run_dir)
    last = final_metrics(run_dir)
    result = {
        **plan, "cell": cell, "budget": budget, "steps": last["step"], "train_flops": last.get("train_flops"),
        "train_seconds": last["elapsed"], "train_bpb": last["bpb"], **evaluate_cell(study, run_dir, pairs),
    }
    _write_json(result_path, result)
    return result


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
        "mean_entropy": ent["mean_entropy"],
    }
    _write_json(info_path, info)
    return info


def _check_same_study(study: StudyConfig, out_dir: Path) -> None:
    """An output directory holds one study: what every cell shares must not change between runs
    (budgets and cells may be added)."""
    path = out_dir / "study.yaml"
    new = json.loads(json.dumps(to_dict(study)))  # plain lists and dicts, as YAML reads them back
    if path.is_file():
        old = read_yaml(path)
        changed = sorted(k for k in new if k not in ("budgets", "cells") and old.get(k) != new[k])
        if changed:
            raise UserError(
                f"{out_dir} holds a study with another config (differs in: {', '.join(changed)}); "
                "use another --out"
            )


def run_study(study: StudyConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run (or finish) the whole grid and write the report; returns {'cells', 'entropy_model',
    'complete', 'signal'} ('signal': the name of the one that stopped it, when one did). The
    study holds its directory's lock (blt.runs.lock) throughout."""
    out_dir = Path(out_dir)
    with RunLock(out_dir):
        return _run_study(study, out_dir, progress)


def _run_study(study: StudyConfig, out_dir: Path, progress: bool) -> dict:
    _check_same_study(study, out_dir)
    corpus = open_corpus(study.data)
    val_docs = split_documents(corpus.split("val"), study.eval_bytes)
    pairs = scoring_pairs(val_docs, study.noise.prefix, study.noise.continuation, study.noise.max_pairs)
    if study.noise.kinds and not pairs:
        raise UserError("the evaluation bytes are too short for one noise scoring pair (prefix + continuation)")
    save_yaml(study, out_dir / "study.yaml")
    grid = [(b, c) for b in sorted(study.budgets) for c in CELLS if c in study.cells]
    needs_entropy = any(c in ENTROPY_CELLS for c in study.cells)
    bar = tqdm(total=len(grid) + int(needs_entropy), unit="cell", disable=not progress, dynamic_ncols=True)
    results, entropy_info, stopped_by = [], None, None
    try:
        if needs_entropy:
            bar.set_description("entropy model")
            entropy_info = prepare_entropy_model(study, out_dir, corpus)
            bar.update(1)
        for budget, cell in grid:
            bar.set_description(f"{cell} @ {budget_label(budget)}")
            run_dir = out_dir / "cells" / budget_label(budget) / cell
            results.append(run_cell(study, cell, budget, run_dir, corpus, out_dir / "entropy", pairs))
            bar.update(1)
    except Stopped as e:
        stopped_by = e.signal_name
    finally:
        bar.close()
    write_report(out_dir, study, results, entropy_info)
    return {"cells": results, "entropy_model": entropy_info, "complete": stopped_by is None, "signal": stopped_by}
