"""The study's config and the run config of each of its jobs (see blt.experiments.study).

A JOB is one training run of the grid: a cell at a budget, for the byte and BPE baselines one
shape of the size ladder, and a seed (0 = train.seed; the largest budget is also trained with
seeds 1 .. seeds-1). Every job is an ordinary run directory, <out>/cells/<budget>/<job name>.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from blt.config import from_dict, to_dict
from blt.errors import UserError
from blt.evaluation.noise import NOISE_KINDS, check_noise
from blt.models.byte_lm import ByteLMConfig
from blt.models.memory import MemoryConfig
from blt.runs.config import DataConfig, OptimConfig, RunConfig

BASELINES = ("byte", "bpe")
# cell -> the BLT's patcher, and what else sets it apart
BLT_CELLS = {
    "static": "static",
    "space": "space",
    "entropy": "entropy",
    "relative": "relative",
    "equal_info": "equal_info",
    "per_layer_cross": "entropy",  # the decoder cross-attends before every layer (the paper's form)
    "memory": "entropy",  # Memory+ feed-forwards in the latent (study.memory)
}
CELLS = BASELINES + tuple(BLT_CELLS)
ENTROPY_PATCHERS = ("entropy", "relative", "equal_info")
RESULT_FILE = "result.json"  # in a job's run directory once it is trained and scored
LOG_FILE = "study.log"  # what a job's setup, training and evaluation print
SESSIONS_FILE = "sessions.json"  # the study's runs of the command: what ran, how long


def uses_entropy_model(cell: str) -> bool:
    return BLT_CELLS.get(cell) in ENTROPY_PATCHERS


@dataclass
class ModelSpec:
    """The shared transformer: the BLT's latent, and the baselines' shape when there is no ladder."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context: int = 512  # bytes per training window, every cell


@dataclass
class Shape:
    """One rung of the baselines' size ladder."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4

    @property
    def name(self) -> str:
        return f"d{self.dim}x{self.n_layers}"


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
    max_pairs: int = 200  # pairs cut from the scored (test) bytes
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
    ckpt_every: int = 200  # what an interrupted job resumes from
    warmup_fraction: float = 0.1  # warm-up steps = this share of each job's steps


@dataclass
class StudyConfig:
    budgets: list[float] = field(default_factory=lambda: [1e13])  # training FLOPs per job
    cells: list[str] = field(default_factory=lambda: list(CELLS))
    seeds: int = 1  # seeds the largest budget is trained with (the spread is reported)
    patch_size: float = 4.5  # entropy patchers' calibration target; static patches of round(patch_size)
    model: ModelSpec = field(default_factory=ModelSpec)
    # the byte and BPE baselines: every shape is trained at every budget and the one with the
    # lowest bpb on the selection bytes (val split) is the cell's; empty = model's shape only
    ladder: list[Shape] = field(default_factory=list)
    local: LocalSpec = field(default_factory=LocalSpec)
    memory: MemoryConfig = field(default_factory=MemoryConfig)  # the memory cell's latent Memory+
    entropy: EntropySpec = field(default_factory=EntropySpec)
    bpe: BPESpec = field(default_factory=BPESpec)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: StudyTrain = field(default_factory=StudyTrain)
    eval_bytes: int | None = 100_000  # test bytes every job is scored on; null = the whole test split
    selection_bytes: int | None = 50_000  # val bytes the ladder's shapes are compared on
    eval_batch_size: int = 16
    measure_batches: int = 16  # training batches a job's cost per step is measured on before training

    def validate(self):
        if not self.budgets or min(self.budgets) <= 0:
            raise UserError(f"budgets must be a non-empty list of positive FLOP counts, got {self.budgets}")
        unknown = [c for c in self.cells if c not in CELLS]
        if unknown or not self.cells:
            raise UserError(f"cells must be some of {', '.join(CELLS)}, got {self.cells}")
        if self.seeds < 1:
            raise UserError(f"seeds must be at least 1, got {self.seeds}")
        if self.patch_size < 1:
            raise UserError(f"patch_size must be at least 1, got {self.patch_size}")
        for name in ("eval_bytes", "selection_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name} must be positive or null, got {getattr(self, name)}")
        if self.measure_batches < 1:
            raise UserError(f"measure_batches must be at least 1, got {self.measure_batches}")
        if len({s.name for s in self.ladder}) != len(self.ladder):
            raise UserError("ladder: two shapes with the same width and depth")
        if self.data.splits not in ("auto", "90/5/5") and self.data.splits.count("/") != 2:
            raise UserError(f"data.splits must have three parts (train/val/test: calibration and selection on val, "
                            f"scores on test), got {self.data.splits}")
        for job in jobs(self, budgets=[min(self.budgets)]):  # every run config checks its values now
            job_run_config(self, job, 1, Path("entropy"))

    @property
    def shapes(self) -> list[Shape]:
        m = self.model
        return self.ladder or [Shape(m.dim, m.n_layers, m.n_heads)]


def budget_label(budget: float) -> str:
    """1e12 -> '1e12', 2.5e12 -> '2.5e12': a directory name that sorts within an exponent."""
    return f"{budget:.3g}".replace("e+", "e")


@dataclass(frozen=True)
class Job:
    budget: float
    cell: str
    shape: str | None = None  # a ladder shape's name (baselines only)
    seed: int = 0  # added to train.seed

    @property
    def name(self) -> str:
        return self.cell + (f"-{self.shape}" if self.shape else "") + (f"-seed{self.seed}" if self.seed else "")

    def run_dir(self, out_dir: Path) -> Path:
        return Path(out_dir) / "cells" / budget_label(self.budget) / self.name


def jobs(study: StudyConfig, budgets=None, seed: int = 0, shapes: dict | None = None) -> list[Job]:
    """The jobs of the given budgets (default all) at one seed, in grid order. shapes: cell ->
    the one ladder shape to train (default every shape)."""
    out = []
    for budget in sorted(budgets or study.budgets):
        for cell in CELLS:
            if cell not in study.cells:
                continue
            if cell in BASELINES:
                names = [shapes[cell]] if shapes else [s.name for s in study.shapes]
                out += [Job(budget, cell, name, seed) for name in names]
            else:
                out.append(Job(budget, cell, None, seed))
    return out


def selected_shapes(results: list[dict], budget: float) -> dict[str, str]:
    """Baseline cell -> the ladder shape with the lowest selection bpb at this budget (seed 0)."""
    chosen = {}
    for cell in BASELINES:
        rungs = [r for r in results if r["cell"] == cell and r["budget"] == budget and r["seed"] == 0]
        if rungs:
            chosen[cell] = min(rungs, key=lambda r: r["selection_bpb"])["shape"]
    return chosen


# ---- run configs --------------------------------------------------------------------------------


def _common(study: StudyConfig, steps: int, batch_size: int | None = None, lr: float | None = None,
            seed: int = 0) -> dict:
    t = study.train
    return {
        "data": {**to_dict(study.data), **({"batch_size": batch_size} if batch_size else {})},
        "optim": {**to_dict(study.optim), "warmup_steps": max(1, round(t.warmup_fraction * steps)),
                  **({"lr": lr} if lr is not None else {})},
        "train": {
            "steps": steps, "grad_accum": t.grad_accum, "seed": t.seed + seed, "bf16": t.bf16, "device": t.device,
            "log_every": t.log_every, "ckpt_every": t.ckpt_every, "eval_every": 0,
            "eval_bytes": 4096,  # the loop's own final evaluation, kept cheap: the study scores jobs itself
            "progress": False,
        },
    }


def entropy_run_config(study: StudyConfig) -> RunConfig:
    """The shared entropy model's run; its own final evaluation is on selection bytes (val)."""
    e = study.entropy
    tree = {"model_kind": "byte", "model": to_dict(e.model), **_common(study, e.steps, e.batch_size, e.lr)}
    tree["train"]["eval_bytes"] = study.selection_bytes
    return from_dict(RunConfig, tree)


def shape_of(study: StudyConfig, job: Job) -> Shape:
    for shape in study.shapes:
        if shape.name == job.shape:
            return shape
    raise UserError(f"job {job.name}: no ladder shape named {job.shape}")


def job_run_config(study: StudyConfig, job: Job, steps: int, entropy_dir: Path | None = None) -> RunConfig:
    """The RunConfig of one job, trained for `steps` (see blt.experiments.study)."""
    m, loc = study.model, study.local
    tree = _common(study, steps, seed=job.seed)
    if job.cell == "byte":
        s = shape_of(study, job)
        tree.update(model_kind="byte", model={"dim": s.dim, "n_layers": s.n_layers, "n_heads": s.n_heads,
                                              "context": m.context})
    elif job.cell == "bpe":
        tree.update(bpe_tree(study, shape_of(study, job)))
    elif job.cell in BLT_CELLS:
        local = {"dim": loc.dim, "n_heads": loc.n_heads, "window": loc.window}
        latent = {"dim": m.dim, "n_layers": m.n_layers, "n_heads": m.n_heads}
        if job.cell == "memory":
            latent["memory"] = to_dict(study.memory)
        tree.update(model_kind="blt", blt={
            "context": m.context,
            "encoder": {**local, "n_layers": loc.encoder_layers},
            "latent": latent,
            "decoder": {**local, "n_layers": loc.decoder_layers},
            "k": loc.k,
            "hash_buckets": loc.hash_buckets,
            **({"decoder_cross": "every_layer"} if job.cell == "per_layer_cross" else {}),
        })
        kind = BLT_CELLS[job.cell]
        patching = {"kind": kind, "target_patch_size": study.patch_size}
        if kind == "static":
            patching["patch_size"] = max(1, round(study.patch_size))
        if kind in ENTROPY_PATCHERS:
            patching["entropy_run"] = str(Path(entropy_dir).resolve())
        tree["patching"] = patching
    else:
        raise UserError(f"unknown study cell '{job.cell}'")
    return from_dict(RunConfig, tree)


def bpe_tree(study: StudyConfig, shape: Shape, context_tokens: int | None = None) -> dict:
    """The BPE cell's part of a RunConfig tree: a token transformer whose window holds about
    model.context bytes (context_tokens, known once the tokenizer is)."""
    return {"model_kind": "bpe", "bpe": {
        "dim": shape.dim, "n_layers": shape.n_layers, "n_heads": shape.n_heads,
        "context": context_tokens or study.model.context,
        "vocab_size": study.bpe.vocab_size, "sample_bytes": study.bpe.sample_bytes,
    }}
