"""model_kind 'byte': the byte-level transformer (the baseline, and BLT's entropy model).

Nothing to prepare before training; batches are random windows of the training split
(`blt.data.stream.WindowSampler`); one input position is one byte.
"""
from __future__ import annotations

from pathlib import Path

import torch

from blt.data.corpus import Corpus
from blt.data.stream import ShardPlan, WindowSampler
from blt.errors import UserError
from blt.evaluation.flops import FlopReport, byte_lm_flops
from blt.inference.byte_lm import generate_bytes
from blt.models.byte_lm import ByteLM
from blt.runs.checkpoint import latest_checkpoint, load_weights
from blt.runs.config import RunConfig, load_run_config


def build(cfg: RunConfig, run_dir: Path | None = None) -> ByteLM:
    return ByteLM(cfg.model)


def prepare(cfg: RunConfig, corpus: Corpus, run_dir: Path, env) -> RunConfig:
    return cfg


class ByteWindows:
    """Batches for byte-level models: {'ids': (B, T), 'targets': (B, T)}."""

    def __init__(self, sampler: WindowSampler):
        self.sampler = sampler

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        x, y = self.sampler.batch(step, micro)
        return {"ids": x, "targets": y}


def sampler(cfg: RunConfig, corpus: Corpus, run_dir: Path, plan: ShardPlan) -> ByteWindows:
    return ByteWindows(WindowSampler(corpus.split("train"), cfg.model.context, cfg.data.batch_size,
                                     cfg.train.seed, plan))


def train_flops_per_position(cfg: RunConfig, stats: dict) -> float:
    return byte_lm_flops(cfg.model).train_per_byte


def describe(model, cfg: RunConfig, docs: list) -> tuple[dict, FlopReport]:
    return {}, byte_lm_flops(cfg.model)


def load_byte_run(run_dir, device="cpu") -> tuple[ByteLM, RunConfig]:
    """A byte-level run's model (eval mode) and config; UserError for any other kind."""
    cfg = load_run_config(run_dir)
    if cfg.model_kind != "byte":
        raise UserError(f"{run_dir} is a '{cfg.model_kind}' run; an entropy model is a byte-level run")
    model = build(cfg).to(device)
    model.init_weights()  # non-persistent buffers (RoPE tables); the weights are overwritten
    load_weights(model, latest_checkpoint(run_dir))
    return model.eval(), cfg


generate = generate_bytes
