"""The training loop: one function, `train(cfg, out_dir, resume)`, for every model kind.

Contract with models and data, through the run's kind (blt.runs.kinds):
- `kind.prepare` resolves what the run needs before its first step; `kind.sampler(cfg, corpus,
  run_dir, plan)` returns an object whose `.batch(step, micro)` gives a dict of tensors, a pure
  function of (seed, step, micro) and the ShardPlan (rank, world, grad_accum, data.shards:
  which shard of the data each micro-batch comes from, blt.data.stream); the loop calls
  `loss, stats = model.loss(**batch)`.
  `loss` is the mean over `stats['targets']` scored targets; any other numeric stat (BLT's
  'patches') is summed over micro-steps and ranks and logged with its rate.
- Training FLOPs (blt.evaluation.flops, 3 x forward): each micro-step is charged its input
  positions times `kind.train_flops_per_position(cfg, stats)`, a BLT what that very batch
  executes (its patch slots and latent patches, padding included). Rows log the interval's
  `flops`, `flops_per_s` and the running total `train_flops`, which checkpoints carry so a
  resumed run continues it; every checkpoint step also logs a row, so the total saved is
  complete.
- The model is built, placed on its device, then `init_weights()`-ed (see distributed.py).
- data.batch_size windows per micro-step and rank; an optimizer step takes grad_accum
  micro-steps on every rank, each micro-step's mean loss weighted by its share of the global
  batch's scored targets, so the step's loss is the mean over every target of the global batch
  however it is split into ranks and micro-steps (train.parallel: ddp or fsdp, see parallel.py).

Guarantees:
- Resume is exact: batches depend only on the step, and a checkpoint holds the weights, the
  optimizer and scheduler states and the RNG state, so a run stopped at step k and resumed
  ends with the very same parameters (bit for bit on the CPU) as an uninterrupted run.
- SIGINT or SIGTERM finishes the current step, saves a checkpoint and returns normally
  (`interrupted` and `signal` in the result); a second SIGINT stops at once (KeyboardInterrupt,
  the last complete checkpoint stays). Checkpoints are atomic.
- A non-finite loss or gradient norm stops training with a UserError naming the step, before
  the optimizer applies it: no checkpoint of non-finite weights is ever written.
- Only rank 0 writes (config.yaml, run.json, metrics.jsonl, checkpoints) or prints, and it
  holds the run directory's lock (blt.runs.lock) from the first check to the end.
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from torch import nn

from blt import __version__
from blt.config import save_yaml
from blt.data.corpus import Corpus, open_corpus
from blt.data.stream import ShardPlan
from blt.errors import UserError
from blt.evaluation.bpb import evaluate_split
from blt.files import atomic_write_text, make_directory, print_line, read_json
from blt.runs import layout
from blt.runs.checkpoint import latest_checkpoint
from blt.runs.config import RunConfig
from blt.runs.kinds import build_model, kind_of
from blt.runs.lock import RunLock
from blt.train import distributed as D
from blt.train import parallel
from blt.train.checkpointing import for_parallel
from blt.train.metrics import Interval, MetricsLog, Progress, peak_memory_mb, summarize
from blt.train.optim import build_optimizer, build_scheduler


def _distribute(model: nn.Module, t, env: D.DistEnv) -> nn.Module:
    """The module training calls, `forward(**batch) -> model.loss(**batch)`, over DDP or FSDP2,
    with activation checkpointing and compilation as asked (blt.train.parallel)."""
    if t.activation_checkpointing:
        parallel.set_activation_checkpointing(model)
    if t.compile:
        parallel.compile_blocks(model)
    if t.parallel == "fsdp":
        parallel.shard(model, env.device, t.bf16)
        return LossForward(model)
    return D.wrap_ddp(LossForward(model), env)


def _gradient_sync(forward, model, t, env: D.DistEnv, last: bool):
    """Gradients reduced over ranks once per optimizer step, not once per micro-step."""
    if env.world == 1 or last:
        if t.parallel == "fsdp" and env.world > 1:
            model.set_requires_gradient_sync(True)
        return nullcontext()
    if t.parallel == "fsdp":
        model.set_requires_gradient_sync(False)
        return nullcontext()
    return forward.no_sync()


def _total(norm) -> float:
    """A gradient norm as a float (FSDP2 returns it as a DTensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


class LossForward(nn.Module):
    """Routes `forward(**batch)` to `model.loss`, so DDP sees the call it must hook."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        return self.model.loss(**batch)


def setup_model(cfg: RunConfig, device: torch.device, run_dir: Path | None = None) -> nn.Module:
    """Build on the meta device (no memory touched, FSDP2 could shard here), allocate on
    `device`, then initialise from the run's seed."""
    with torch.device("meta"):
        model = build_model(cfg, run_dir)
    model.to_empty(device=device)
    torch.manual_seed(cfg.train.seed)
    model.init_weights()
    return model


class StopRequest:
    """First SIGINT/SIGTERM sets `signum`; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def _write_run_files(cfg: RunConfig, out_dir: Path, corpus: Corpus, env: D.DistEnv, start: int) -> None:
    """config.yaml (always the resolved, current config) and run.json (provenance)."""
    make_directory(out_dir)
    save_yaml(cfg, out_dir / layout.CONFIG)
    info_path = out_dir / layout.RUN_INFO
    info = {
        "corpus": corpus.fingerprint,
        "torch": torch.__version__,
        "blt": __version__,
        "world_size": env.world,
        "device": env.device.type,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if start > 0 and info_path.is_file():
        old = read_json(info_path)
        if old.get("corpus") != corpus.fingerprint:
            print_line(f"blt train: warning: the corpus differs from the one this run started with "
                       f"({old.get('corpus')})", sys.stderr)
        old.setdefault("resumes", []).append({"step": start, "world_size": env.world, "at": info["started"]})
        info = old
    atomic_write_text(info_path, json.dumps(info, indent=1) + "\n")


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Half-written checkpoints of a killed run (their names start with a dot)."""
    for tmp in (out_dir / layout.CHECKPOINTS).glob(".step_*.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def train(cfg: RunConfig, out_dir: Path, resume: bool = False) -> dict:
    """Train `cfg` into `out_dir`; returns the final metrics (see the module docstring)."""
    out_dir = Path(out_dir)
    corpus = open_corpus(cfg.data)  # bad data is refused before the run directory is touched
    with RunLock(out_dir, enabled=D.env_rank() == 0):
        has_ckpt = (out_dir / layout.CHECKPOINTS / layout.LATEST).is_file()
        if has_ckpt and not resume:
            raise UserError(f"{out_dir} already holds a checkpoint; pass --resume to continue it "
                            f"or choose another --out")
        if resume and not has_ckpt:
            raise UserError(f"nothing to resume: {out_dir} holds no checkpoint")
        env = D.init_distributed(cfg.train.device, always=cfg.train.parallel == "fsdp")
        try:
            return _train(cfg, out_dir, resume, corpus, env)
        finally:
            D.shutdown(env)


def _check_finite(step: int, loss: float, grad_norm: float, ckpt: Path | None, env: D.DistEnv) -> None:
    """UserError naming the step when its loss or gradient norm is not finite (on any rank)."""
    bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if env.world > 1:
        bad = D.any_rank(bad, env.device)
    if bad:
        kept = f"the last checkpoint is {ckpt}" if ckpt is not None else "no checkpoint was written"
        raise UserError(f"training stopped at step {step}: the loss is {loss:.4g} and the gradient norm "
                        f"{grad_norm:.4g}, not finite ({kept}); lower optim.lr or check the data")


def _train(cfg: RunConfig, out_dir: Path, resume: bool, corpus: Corpus, env: D.DistEnv) -> dict:
    main = env.rank == 0
    t, total = cfg.train, cfg.train.steps
    kind = kind_of(cfg)
    cfg = kind.prepare(cfg, corpus, out_dir, env)
    plan = ShardPlan(env.rank, env.world, t.grad_accum, cfg.data.shards)
    sampler = kind.sampler(cfg, corpus, out_dir, plan)  # this rank's shards of the data
    val_split = corpus.split("val")

    model = setup_model(cfg, env.device, out_dir)
    if not resume:
        kind.after_init(model, cfg)
    forward = _distribute(model, t, env)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total)
    store = for_parallel(t.parallel)
    start, elapsed0, tokens = 0, 0.0, 0
    train_flops = 0.0  # cumulative over all ranks, resumes included
    ckpt_path = None
    if resume:
        ckpt_path = latest_checkpoint(out_dir)
        state = store.restore(ckpt_path, model, optimizer, scheduler, env.device)
        start, elapsed0, tokens = state["step"], state["elapsed"], state["tokens"]
        train_flops = float(state.get("train_flops", 0.0))  # absent in checkpoints older than the count
        if start >= total:
            raise UserError(
                f"the run in {out_dir} already reached step {start}; pass --steps larger than {start} to go on"
            )

    log = MetricsLog(out_dir / layout.METRICS, enabled=main)
    if main:
        _write_run_files(cfg, out_dir, corpus, env, start)
        if resume:
            _remove_stale_temporaries(out_dir)
            log.truncate_after(start)
        else:
            log.reset()
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=t.bf16)
    max_norm = cfg.optim.clip if cfg.optim.clip > 0 else math.inf

    progress = Progress(total, start, enabled=main and t.progress)
    n_params = sum(p.numel() for p in params)
    progress.note(
        f"{'resuming' if resume else 'training'} {cfg.model_kind} model ({n_params / 1e6:.2f}M params) on "
        f"{corpus.name} ({len(corpus.data):,} bytes), steps {start}->{total}, "
        f"world {env.world}, {env.device.type} -> {out_dir}"
    )
    interval = Interval()
    last_row: dict = {}
    val: dict = {}
    session_start = time.perf_counter()
    done = start
    model.train()
    with StopRequest() as stop:
        for step in range(start, total):
            tic = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            step_nats = 0.0
            batches = [sampler.batch(step, micro) for micro in range(t.grad_accum)]
            # each micro-step's mean loss weighted by its share of the step's scored targets over
            # all ranks (x world: DDP and FSDP average over ranks), so the gradient is the mean over
            # every target of the global batch, however it is split into micro-steps and ranks
            counts = [float(model.count_targets(b["targets"])) for b in batches]
            n_global = max(D.all_reduce_sum([sum(counts)], env.device)[0], 1.0)
            for micro, batch in enumerate(batches):
                batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
                with _gradient_sync(forward, model, t, env, last=micro == t.grad_accum - 1):
                    with autocast:
                        loss, stats = forward(**batch)
                    (loss * (counts[micro] * env.world / n_global)).backward()
                nats = loss.item() * float(stats["targets"])
                interval.nats += nats
                step_nats += nats  # the step's own, for the finiteness check
                interval.positions += batch["targets"].numel()
                tokens += batch["targets"].numel() * env.world  # same batch shape on every rank
                interval.add(stats)
                interval.add({"flops": kind.train_flops_per_position(cfg, stats) * batch["targets"].numel()})
            grad_norm = _total(torch.nn.utils.clip_grad_norm_(params, max_norm))
            _check_finite(step + 1, step_nats / max(sum(counts), 1.0), grad_norm, ckpt_path, env)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            interval.seconds += time.perf_counter() - tic
            done = step + 1
            progress.step()

            # every decision below must agree across ranks: they enclose collectives
            stopping = stop.signum is not None
            if env.world > 1:
                stopping = D.any_rank(stopping, env.device)
            at_end = done == total
            evaluate_now = at_end or (t.eval_every > 0 and done % t.eval_every == 0)
            checkpoint_now = at_end or stopping or (t.ckpt_every > 0 and done % t.ckpt_every == 0)
            # an FSDP model's forward is a collective: every rank evaluates (the same bytes)
            if evaluate_now and (main or t.parallel == "fsdp"):
                val = {**evaluate_split(partial(kind.scores, model), val_split, t.eval_bytes), "step": done}
            if evaluate_now or checkpoint_now or done == 1 or done % t.log_every == 0:
                sums = D.all_reduce_sum(
                    [interval.nats, interval.positions, interval.seconds, *interval.stats.values()], env.device
                )
                stat_sums = dict(zip(interval.stats, sums[3:]))
                row = {"step": done, **summarize(sums[0], sums[1], sums[2] / env.world, stat_sums)}
                row.update(lr=lr, grad_norm=grad_norm, tokens=tokens,
                           peak_mem_mb=round(D.all_reduce_max(peak_memory_mb(env.device), env.device), 1))
                if "flops" in stat_sums:
                    train_flops += stat_sums["flops"]
                    row["train_flops"] = train_flops
                row["elapsed"] = elapsed0 + time.perf_counter() - session_start
                if evaluate_now and main:
                    row.update(val_bpb=val["bpb"], val_bytes=val["bytes"])
                log.write(row)
                progress.show(done, row)
                last_row = row
                interval.reset()
            if checkpoint_now:
                counters = {
                    "scheduler": scheduler.state_dict(),
                    "elapsed": elapsed0 + time.perf_counter() - session_start,
                    "tokens": tokens,
                    "train_flops": train_flops,
                    "world_size": env.world,
                }
                ckpt_path = store.save(out_dir, done, model, optimizer, cfg, counters, env)
            if stopping:
                break
    progress.close()
    keys = ("loss", "bpb", "bytes_per_s", "tokens", "elapsed", "train_flops")
    result = {k: last_row[k] for k in keys if k in last_row}
    result.update(step=done, steps=total, rank=env.rank, run_dir=str(out_dir))
    result["interrupted"] = stop.signum is not None and done < total
    if stop.signum is not None:
        result["signal"] = signal.Signals(stop.signum).name
    if ckpt_path is not None:
        result["checkpoint"] = str(ckpt_path)
    if val:
        result.update(val_bpb=val["bpb"], val_bytes=val["bytes"], val_step=val["step"])
    return result
