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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

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


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights, memory-mapped (read from disk only when used)."""
    try:
        with safe_open(str(ckpt / layout.WEIGHTS), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt} is corrupted: {str(e).splitlines()[0]}") from None


def put_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source, assign: bool = False) -> None:
    """Load a state dict, with one line naming `source` when it does not fit the model. assign=True
    makes the given tensors the parameters (no copy: memory-mapped weights stay mapped)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as e:  # shapes that do not fit: torch lists every one, we name the first
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0])
        raise UserError(f"{source} does not fit the model ({first})") from None
    if missing or unexpected:
        raise UserError(f"{source} does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Copy a checkpoint's weights into the model's parameters (training: its optimizer holds them)."""
    put_weights(model, read_weights(ckpt), f"checkpoint {ckpt}")


def load_train_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / layout.TRAIN_STATE, weights_only=True, map_location="cpu")
    except Exception as e:  # any unreadable file is the user's corrupted checkpoint
        raise UserError(f"checkpoint {ckpt} has an unreadable train_state.pt ({e.__class__.__name__})") from None
