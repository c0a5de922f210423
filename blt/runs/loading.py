"""Open a trained run: its model on a device, its config and its kind, ready to use.

    run = open_run("runs/blt_tiny")                     # newest checkpoint, eval mode
    nats = run.scores([np.frombuffer(b"some bytes", np.uint8)])[0]
    (text,) = run.generate([b"ROMEO:"], GenerationArgs(max_new_bytes=100, temperature=0.8))
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from blt.errors import UserError
from blt.inference.args import GenerationArgs
from blt.inference.rows import OnBytes
from blt.runs.checkpoint import latest_checkpoint, load_weights
from blt.runs.config import RunConfig, load_run_config
from blt.runs.kinds import ModelKind, build_model, kind_of
from blt.runs.layout import checkpoint_step


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is present, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{requested}' was asked for but no CUDA device is available")
        if requested == "cuda":
            requested = f"cuda:{local_rank}"
    try:
        return torch.device(requested)
    except RuntimeError:
        raise UserError(f"device '{requested}' is not a device torch knows (try auto, cpu, cuda)") from None


def load_model(run_dir: str | Path, device="cpu"):
    """Rebuild a run's model from its config and newest checkpoint, in eval mode: (model, cfg)."""
    cfg = load_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir)
    model = build_model(cfg, run_dir)
    model.to(device)
    model.init_weights()  # non-persistent buffers (RoPE tables); weights are overwritten below
    load_weights(model, ckpt)
    model.eval()
    return model, cfg


@dataclass
class OpenRun:
    """A run's newest checkpoint, loaded: model (eval mode), config, kind, checkpoint step."""

    path: Path
    model: torch.nn.Module
    cfg: RunConfig
    kind: ModelKind
    step: int

    def scores(self, docs: list, batch_size: int = 16) -> list:
        """Nats per byte of each document (uint8 arrays), given BOS and earlier bytes."""
        return self.kind.scores(self.model, docs, batch_size)

    def generate(self, prompts: list[bytes], args: GenerationArgs = GenerationArgs(),
                 on_bytes: OnBytes | None = None) -> list[bytes]:
        return self.kind.generate(self.model, prompts, args, on_bytes)


def open_run(run_dir: str | Path, device: str = "auto") -> OpenRun:
    model, cfg = load_model(run_dir, pick_device(device))
    return OpenRun(Path(run_dir), model, cfg, kind_of(cfg), checkpoint_step(latest_checkpoint(run_dir)))
