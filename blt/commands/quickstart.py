"""`blt quickstart [--out DIR] [key=value ...]`: the whole pipeline, small, on any machine.

Offline and on a laptop CPU in a few minutes, on the first 2 MB of the `stdlib` corpus (the
.py files of the running Python's standard library, so every machine has it):
  1. train a small byte-level entropy model (sliding-window attention) -> OUT/entropy;
  2. train a BLT with entropy patching -> OUT/blt: its corpus entropies are computed with
     the entropy model, the threshold is calibrated on held-out bytes to 4.5 bytes per patch,
     then the local encoder, latent transformer and local decoder train end to end;
  3. evaluate the BLT's bits per byte, mean patch size and theta on (the first --eval-bytes
     of) the val split, reloading it from its run directory as `blt eval` does;
  4. sample a continuation of a prompt with incremental BLT generation.
Each step is a function of the shared `Quickstart` state, listed in STEPS. `key=value`
overrides change the BLT's config (e.g. `train.steps=100`; its data.* settings also feed the
entropy model) and `entropy.key=value` the entropy model's (e.g. `entropy.train.steps=50`);
results go to OUT/quickstart.json and a summary to stdout (dropped if stdout is closed: the work
goes on).
Ctrl-C or SIGTERM stops it (exit status 130 or 143) once the run under way has saved a
checkpoint; rerunning the same command then continues where it stopped: a finished run is kept,
an interrupted one resumes (with the settings it started with). A directory holding a finished
quickstart is refused. The quickstart holds OUT's lock (blt.runs.lock) while it runs.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from blt.config import from_dict, merge, parse_overrides
from blt.errors import UserError, signal_exit_status
from blt.experiments.study import Stopped, final_metrics, train_to_end
from blt.files import atomic_write_text, print_line
from blt.inference.args import GenerationArgs
from blt.runs.config import RunConfig
from blt.runs.evaluate import evaluate_run
from blt.runs.loading import open_run
from blt.runs.lock import RunLock

DATA = {"corpus": "stdlib", "max_bytes": 2_000_000, "batch_size": 16}
ENTROPY_CONFIG = {
    "model_kind": "byte",
    "model": {"dim": 64, "n_layers": 2, "n_heads": 4, "context": 128, "window": 64},
    "data": {**DATA, "batch_size": 32},
    "optim": {"lr": 3e-3, "warmup_steps": 30, "min_lr_ratio": 0.1},
    "train": {"steps": 300, "log_every": 50, "eval_every": 0, "eval_bytes": 20_000, "ckpt_every": 0},
}
BLT_CONFIG = {
    "model_kind": "blt",
    "blt": {
        "context": 512,
        "encoder": {"dim": 96, "n_layers": 1, "n_heads": 4, "window": 64},
        "latent": {"dim": 192, "n_layers": 2, "n_heads": 4},
        "decoder": {"dim": 96, "n_layers": 1, "n_heads": 4, "window": 64},
        "k": 2,
        "hash_buckets": 8192,
    },
    "patching": {"kind": "entropy", "target_patch_size": 4.5},
    "data": DATA,
    "optim": {"lr": 3e-3, "warmup_steps": 50, "min_lr_ratio": 0.1},
    "train": {"steps": 400, "log_every": 50, "eval_every": 0, "eval_bytes": 20_000, "ckpt_every": 0},
}
EVAL_BYTES = 50_000  # of the val split's 100,000; `blt eval OUT/blt` scores all of it
PROMPT = b"def "
RESULTS = "quickstart.json"


@dataclass
class Quickstart:
    out: Path
    entropy_cfg: object  # RunConfig of the entropy model
    cfg: object  # RunConfig of the BLT
    eval_bytes: int | None
    sample_bytes: int
    results: dict = field(default_factory=dict)
    run: object = None  # the trained BLT (an OpenRun), reloaded from its run directory by step_evaluate
    stopped: str | None = None  # the name of the signal that ended the pipeline early


def _train(qs: Quickstart, name: str, cfg, out: Path) -> None:
    """Train a run to its end: fresh, resumed after an interruption, or already done."""
    try:
        train_to_end(cfg, out)
    except Stopped as e:
        qs.stopped = e.signal_name
        return
    last = final_metrics(out)
    qs.results[name] = {k: last[k] for k in ("step", "bpb", "val_bpb", "elapsed", "bytes_per_s") if k in last}


def step_train_entropy(qs: Quickstart) -> None:
    _train(qs, "entropy_model", qs.entropy_cfg, qs.out / "entropy")


def step_train_blt(qs: Quickstart) -> None:
    _train(qs, "blt", qs.cfg, qs.out / "blt")


def step_evaluate(qs: Quickstart) -> None:
    qs.run = open_run(qs.out / "blt", "auto")
    result = evaluate_run(qs.run, max_bytes=qs.eval_bytes)
    qs.results["eval"] = {**result, "step": qs.run.step}
    print_line(
        f"BLT val bpb {result['bpb']:.4f} over {result['bytes']:,} bytes of {result['corpus']} [val]; "
        f"mean patch size {result['mean_patch_size']:.2f} bytes (theta {result['theta']:.3f} nats, "
        f"target {result['target_patch_size']})"
    )


def step_sample(qs: Quickstart) -> None:
    (text,) = qs.run.generate([PROMPT], GenerationArgs(max_new_bytes=qs.sample_bytes, temperature=0.8, top_k=50))
    sample = (PROMPT + text).decode("utf-8", errors="replace")
    qs.results["sample"] = sample
    print_line(f"sample (temperature 0.8, top-k 50, seed 0):\n{sample}")


STEPS = [
    ("train the entropy model (a small byte-level LM)", step_train_entropy),
    ("compute entropies, calibrate the threshold, train the BLT", step_train_blt),
    ("evaluate bits per byte and patch size on the val split", step_evaluate),
    ("sample a continuation", step_sample),
]


def configure(p):
    p.add_argument("--out", default="runs/quickstart", help="directory for both runs (default runs/quickstart)")
    p.add_argument("--eval-bytes", type=int, default=EVAL_BYTES, help="evaluate on the first N val bytes (0 = all)")
    p.add_argument("--sample-bytes", type=int, default=300, help="length of the sample")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="BLT config overrides (train.steps=100)")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    if args.eval_bytes < 0:
        raise UserError(f"--eval-bytes must be >= 0 (0 = all of val), got {args.eval_bytes}")
    if args.sample_bytes < 0:
        raise UserError(f"--sample-bytes must be >= 0, got {args.sample_bytes}")
    overrides = parse_overrides(args.overrides)
    entropy_overrides = overrides.pop("entropy", {})
    blt_cfg = merge(BLT_CONFIG, {"patching": {"entropy_run": str(out / "entropy")}})
    cfg = from_dict(RunConfig, merge(blt_cfg, overrides))
    same_data = {"data": {k: getattr(cfg.data, k) for k in ("corpus", "splits", "data_dir", "max_bytes")}}
    entropy_cfg = from_dict(RunConfig, merge(merge(ENTROPY_CONFIG, same_data), entropy_overrides))
    qs = Quickstart(out, entropy_cfg, cfg, args.eval_bytes or None, args.sample_bytes)
    with RunLock(out):
        if (out / RESULTS).is_file():
            raise UserError(f"{out} already holds a run (a finished quickstart); pass --out with a new directory "
                            f"(or remove it)")
        return _run_steps(qs)


def _run_steps(qs: Quickstart) -> int:
    out = qs.out
    t0 = time.time()
    for i, (title, fn) in enumerate(STEPS, 1):
        print_line(f"[{i}/{len(STEPS)}] {title}")
        fn(qs)
        if qs.stopped:
            print(f"blt quickstart: stopped by {qs.stopped}; the checkpoint is in {out}: rerun the same "
                  f"command to continue", file=sys.stderr)
            return signal_exit_status(signal.Signals[qs.stopped])
    qs.results["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(out / RESULTS, json.dumps(qs.results, indent=1) + "\n")
    print_line(
        f"done in {qs.results['seconds']:.0f}s; runs in {out}/entropy and {out}/blt. Next:\n"
        f"  blt generate {out}/blt --prompt 'import ' --temperature 0.8\n  blt eval {out}/blt --split test\n"
        f"  blt patches {out}/blt --input some_file.py"
    )
    return 0
