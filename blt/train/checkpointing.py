"""Checkpoints of a training run, whole (DDP and single process) or sharded (FSDP2).

- WholeCheckpoints (`train.parallel: ddp`): rank 0 writes model.safetensors, model.json and
  train_state.pt, the optimizer state inside (blt.runs.checkpoint); every rank restores the same.
- ShardedCheckpoints (`train.parallel: fsdp`): every rank writes its shards of the model and the
  optimizer state with torch.distributed.checkpoint (DCP) into dcp/; rank 0 adds the full weights,
  gathered (model.safetensors: what inference, `blt eval` and export read, as for any run),
  model.json and train_state.pt (step, scheduler, RNG, counters; the optimizer state lives in
  dcp/). Everything goes into one temporary directory that rank 0 renames into place once every
  rank is done: a run killed at any moment leaves a complete checkpoint, the previous one, and
  LATEST names it. DCP reshards when it reads, so a checkpoint written by N ranks resumes on M.
A checkpoint of one kind does not resume in the other (one line says which to use).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict,
)

from blt.errors import UserError
from blt.files import make_directory, write_errors
from blt.runs import layout
from blt.runs.checkpoint import checkpoint_files, load_train_state, load_weights, publish, save_checkpoint
from blt.train import distributed as D
from blt.train.optim import load_scheduler_state

SHARDS = "dcp"  # the sharded state inside a checkpoint directory


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _restore_rest(ckpt: Path, state: dict, scheduler, device: torch.device) -> None:
    try:
        load_scheduler_state(scheduler, state["scheduler"])
        _set_rng_state(state["rng"], device)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"checkpoint {ckpt}: {layout.TRAIN_STATE} does not fit this run "
                        f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


class WholeCheckpoints:
    """Rank 0 writes the whole state; every rank reads it."""

    def save(self, run_dir: Path, step: int, model, optimizer, cfg, counters: dict, env) -> Path:
        path = None
        if env.rank == 0:  # DDP's optimizer state is whole on every rank: only the writer needs it
            state = {"step": step, "optimizer": optimizer.state_dict(), "rng": _rng_state(env.device), **counters}
            path = save_checkpoint(run_dir, step, model, cfg, state, cfg.train.keep_checkpoints)
        D.barrier()
        return path or run_dir / layout.CHECKPOINTS / layout.checkpoint_name(step)

    def restore(self, ckpt: Path, model, optimizer, scheduler, device: torch.device) -> dict:
        if (ckpt / SHARDS).is_dir():
            raise UserError(f"checkpoint {ckpt} is sharded (written with train.parallel=fsdp): "
                            f"resume it with train.parallel=fsdp")
        load_weights(model, ckpt)
        state = load_train_state(ckpt)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise UserError(f"checkpoint {ckpt}: its optimizer state does not fit this run "
                            f"({e.__class__.__name__})") from None
        _restore_rest(ckpt, state, scheduler, device)
        return state


class ShardedCheckpoints:
    """Every rank writes and reads its own shards (DCP); rank 0 publishes."""

    def save(self, run_dir: Path, step: int, model, optimizer, cfg, counters: dict, env) -> Path:
        root = make_directory(Path(run_dir) / layout.CHECKPOINTS)
        name = layout.checkpoint_name(step)
        tmp = root / f".{name}.tmp"  # one name every rank agrees on
        if env.rank == 0 and tmp.exists():
            shutil.rmtree(tmp)
        D.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        with write_errors(tmp):
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDS))
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if env.rank == 0:
            state = {"step": step, "optimizer": SHARDS, "rng": _rng_state(env.device), **counters}
            full = {k: v.detach().contiguous() for k, v in full.items()}
            try:
                with write_errors(tmp):
                    for file, data in checkpoint_files(full, step, cfg, state).items():
                        (tmp / file).write_bytes(data)
                    final = root / name
                    if final.exists():
                        shutil.rmtree(final)
                    tmp.rename(final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            publish(root, name, cfg.train.keep_checkpoints)
        D.barrier()
        return root / name

    def restore(self, ckpt: Path, model, optimizer, scheduler, device: torch.device) -> dict:
        if not (ckpt / SHARDS).is_dir():
            raise UserError(f"checkpoint {ckpt} is whole (written with train.parallel=ddp): "
                            f"resume it with train.parallel=ddp")
        state = load_train_state(ckpt)
        model_state, optim_state = get_state_dict(model, optimizer)
        try:
            dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(ckpt / SHARDS))
        except Exception as e:  # DCP reports a damaged or foreign directory in many ways
            raise UserError(f"checkpoint {ckpt}: its shards ({SHARDS}/) cannot be read into this model "
                            f"({e.__class__.__name__})") from None
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
        _restore_rest(ckpt, state, scheduler, device)
        return state


def for_parallel(parallel: str):
    return ShardedCheckpoints() if parallel == "fsdp" else WholeCheckpoints()
