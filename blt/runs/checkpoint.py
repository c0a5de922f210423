"""Checkpoints that are atomic, resumable and safe to load.

A checkpoint is a directory: model.safetensors (weights), model.json (the run config, so the
weights can be rebuilt alone) and train_state.pt (optimizer, scheduler, step, RNG, data
position). It is written under a temporary name and renamed into place, then LATEST is
replaced atomically, so a run killed at any moment leaves the previous checkpoint intact.
Nothing here unpickles arbitrary objects: weights are safetensors, and the training state is
read with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from blt.config import to_dict
from blt.errors import UserError
from blt.files import atomic_write_text
from blt.runs import layout
from blt.runs.layout import LATEST


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, step: int, model, cfg, train_state: dict, keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / layout.CHECKPOINTS
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = layout.checkpoint_name(step)
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(model_state(model), str(tmp / layout.WEIGHTS))
    (tmp / layout.MODEL_INFO).write_text(json.dumps({"step": step, "config": to_dict(cfg)}, indent=1))
    torch.save(train_state, tmp / layout.TRAIN_STATE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_root / LATEST, name)
    if keep > 0:
        for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path:
    ckpt_root = Path(run_dir) / layout.CHECKPOINTS
    marker = ckpt_root / LATEST
    if not marker.is_file():
        raise UserError(f"{run_dir} holds no checkpoint (no {marker.relative_to(run_dir)})")
    path = ckpt_root / marker.read_text().strip()
    if not (path / layout.WEIGHTS).is_file():
        raise UserError(f"checkpoint {path} is missing its {layout.WEIGHTS}")
    return path


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    try:
        state = load_file(str(ckpt / layout.WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt} is corrupted: {str(e).splitlines()[0]}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise UserError(f"checkpoint {ckpt} does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_train_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / layout.TRAIN_STATE, weights_only=True, map_location="cpu")
    except Exception as e:  # any unreadable file is the user's corrupted checkpoint
        raise UserError(f"checkpoint {ckpt} has an unreadable train_state.pt ({e.__class__.__name__})") from None
