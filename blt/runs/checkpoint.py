"""Checkpoints that are atomic, checked and safe to load.

A checkpoint is a directory: model.safetensors (weights), model.json (the step, the run config
so the weights can be rebuilt alone, and the sha256 of the other two files) and train_state.pt
(optimizer, scheduler, step, RNG, data position). Both files are serialised in memory, then
written into a temporary directory that is renamed into place (blt.files.replacing_directory),
then LATEST is replaced atomically: a run killed at any moment leaves the previous checkpoint
intact, and a full disk or a file size limit gives one line and leaves no temporary behind.

Loading checks, each failure one line (UserError):
- the sha256 recorded in model.json (checkpoints written before the sums were recorded have
  none, and load unchecked), so one flipped bit is refused;
- that every tensor fits the model the config builds (a changed config.yaml);
- that every weight is finite (a checkpoint of NaN or inf weights is refused), but for tensors
  too large to read at load (a released model's hash tables: FINITE_CHECK_BYTES);
- for --resume, that train_state.pt holds what training restores.
Nothing here unpickles arbitrary objects: weights are safetensors (memory-mapped), and the
training state is read with `torch.load(..., weights_only=True)`. No checkpoint of non-finite
weights is written.
"""
from __future__ import annotations

import ctypes
import hashlib
import io
import json
import mmap
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from blt.config import to_dict
from blt.errors import UserError
from blt.files import (
    atomic_write_text, make_directory, read_errors, read_json, read_text, replacing_directory, sha256_file,
)
from blt.runs import layout
from blt.runs.layout import LATEST

TRAIN_STATE_KEYS = ("step", "optimizer", "scheduler", "rng", "elapsed", "tokens")
MADV_RANDOM = 1  # <sys/mman.h>, Linux
FINITE_CHECK_BYTES = 256 << 20  # weights checked for NaN/inf on load: tensors up to this size


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or an infinity, or None."""
    return next((k for k, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())), None)


def checkpoint_files(state: dict[str, torch.Tensor], step: int, cfg, train_state: dict) -> dict[str, bytes]:
    """The files of a checkpoint, serialised: weights, training state, and model.json (step,
    config, and the sha256 of the other two). Refuses non-finite weights."""
    bad = first_non_finite(state)
    if bad is not None:
        raise UserError(f"the weights at step {step} are not finite ({bad}); no checkpoint was written")
    buffer = io.BytesIO()
    torch.save(train_state, buffer)
    files = {layout.WEIGHTS: save(state), layout.TRAIN_STATE: buffer.getvalue()}
    info = {"step": step, "config": to_dict(cfg),
            "sha256": {file: hashlib.sha256(data).hexdigest() for file, data in files.items()}}
    files[layout.MODEL_INFO] = json.dumps(info, indent=1).encode()
    return files


def publish(ckpt_root: Path, name: str, keep: int) -> Path:
    """Make the complete checkpoint `name` the newest (LATEST) and drop all but the `keep` newest."""
    atomic_write_text(ckpt_root / LATEST, name)
    if keep > 0:
        for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt_root / name


def save_checkpoint(run_dir: Path, step: int, model, cfg, train_state: dict, keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / layout.CHECKPOINTS
    name = layout.checkpoint_name(step)
    files = checkpoint_files(model_state(model), step, cfg, train_state)
    make_directory(ckpt_root)
    with replacing_directory(ckpt_root / name) as tmp:
        for file, data in files.items():
            (tmp / file).write_bytes(data)
    return publish(ckpt_root, name, keep)


def latest_checkpoint(run_dir: str | Path) -> Path:
    ckpt_root = Path(run_dir) / layout.CHECKPOINTS
    marker = ckpt_root / LATEST
    if not marker.is_file():
        raise UserError(f"{run_dir} holds no checkpoint (no {marker.relative_to(run_dir)})")
    path = ckpt_root / read_text(marker).strip()
    if not (path / layout.WEIGHTS).is_file():
        raise UserError(f"checkpoint {path} is missing its {layout.WEIGHTS}")
    return path


def verify_checksum(ckpt: Path, file: str) -> None:
    """UserError unless `file` matches the sha256 model.json records for it (none recorded: an
    older checkpoint, loaded unchecked)."""
    info_path = ckpt / layout.MODEL_INFO
    if not info_path.is_file():
        return
    info = read_json(info_path)
    expected = info.get("sha256", {}).get(file) if isinstance(info, dict) else None
    if expected is not None and sha256_file(ckpt / file) != expected:
        raise UserError(f"checkpoint {ckpt} is corrupted: {file} does not match the sha256 recorded in "
                        f"{layout.MODEL_INFO}; use an earlier checkpoint or train again")


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights, checked against their recorded sha256 and memory-mapped (read from
    disk only when used)."""
    path = ckpt / layout.WEIGHTS
    verify_checksum(ckpt, layout.WEIGHTS)
    with read_errors(path):
        open(path, "rb").close()  # the reason it cannot be read, in our words (safetensors would say 'not found')
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt} is corrupted: {str(e).splitlines()[0]}") from None


def advise_row_reads(t: torch.Tensor) -> bool:
    """Tell the kernel that a memory-mapped CPU tensor is read a few rows at a time (no
    read-ahead). Without it each page fault on a hash-table row also reads read_ahead_kb around it
    (8 MB on some disks) into memory the process then maps, for the few bytes of the row a byte
    uses. Advice only: False where it cannot be given (not Linux, not CPU)."""
    if not sys.platform.startswith("linux") or t.device.type != "cpu" or t.numel() == 0:
        return False
    start = t.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
    end = t.data_ptr() + t.numel() * t.element_size()
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise(start, end - start, MADV_RANDOM) == 0


def put_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Load a state dict into `model`, checked: every tensor fits, every weight is finite (but
    tensors over FINITE_CHECK_BYTES: reading all of a released model's hash tables would bring
    them into memory). assign=True makes the given tensors the parameters (no copy: memory-mapped
    weights stay mapped)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, t in state.items():
        if t.shape != own[k].shape:
            raise UserError(f"{source} does not fit the model: {k} is {tuple(t.shape)} in the checkpoint "
                            f"but {tuple(own[k].shape)} in the config (was config.yaml changed?)")
    bad = first_non_finite({k: t for k, t in state.items() if t.numel() * t.element_size() <= FINITE_CHECK_BYTES})
    if bad is not None:
        raise UserError(f"{source} holds weights that are not finite ({bad}): it cannot be used")
    model.load_state_dict(state, strict=True, assign=assign)


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Copy a checkpoint's weights into the model's parameters (training: its optimizer holds them)."""
    put_weights(model, read_weights(ckpt), f"checkpoint {ckpt}")


def load_train_state(ckpt: Path) -> dict:
    path = ckpt / layout.TRAIN_STATE
    verify_checksum(ckpt, layout.TRAIN_STATE)
    try:
        with read_errors(path):
            state = torch.load(path, weights_only=True, map_location="cpu")
    except UserError:
        raise
    except Exception as e:  # any unreadable file is the user's corrupted checkpoint
        raise UserError(f"checkpoint {ckpt} has an unreadable {layout.TRAIN_STATE} ({e.__class__.__name__})") from None
    missing = [k for k in TRAIN_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"checkpoint {ckpt}: {layout.TRAIN_STATE} lacks {', '.join(missing)}; "
                        f"it was not written by blt train")
    return state
