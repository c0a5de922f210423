"""The registry of model kinds: what `model_kind` in a run's config means, in one table.

Each ModelKind says how a run of that kind builds its network (constructed, not initialised:
call init_weights() after placing it), prepares its run directory before the first step,
draws training batches, charges training FLOPs, scores bytes, describes itself in `blt eval`,
generates, and steps through bytes for lossless compression. Training, evaluation and the
commands look a kind up here instead of branching on its name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from blt.errors import UserError
from blt.evaluation.scorer import blt_scores, byte_lm_scores, token_lm_scores
from blt.inference.compress import blt_feeds, byte_lm_feeds
from blt.runs import kind_blt, kind_bpe, kind_byte
from blt.runs.config import RunConfig


@dataclass(frozen=True)
class ModelKind:
    name: str
    build: Callable  # (cfg, run_dir | None) -> nn.Module
    prepare: Callable  # (cfg, corpus, run_dir, env with rank/device/barrier()) -> cfg, resolved
    sampler: Callable  # (cfg, corpus, run_dir, ShardPlan) -> object with .batch(step, micro) -> dict
    train_flops_per_position: Callable  # (cfg, batch stats from model.loss) -> training FLOPs
    scores: Callable  # (model, docs, batch_size, what='nats') -> per-byte values of each document (scorer.py)
    describe: Callable  # (model, cfg, scored docs) -> (extra eval figures, FlopReport)
    generate: Callable  # (model, prompts, GenerationArgs, on_bytes) -> new bytes per prompt
    feeds: Callable  # model -> blt.inference.compress.Feeds: one byte position per call, for compression
    after_init: Callable = lambda model, cfg: None  # a fresh run's model after init_weights()
    generates: bool = True  # False: `generate` only raises a UserError saying so


KINDS = {
    "byte": ModelKind("byte", kind_byte.build, kind_byte.prepare, kind_byte.sampler,
                      kind_byte.train_flops_per_position, byte_lm_scores, kind_byte.describe, kind_byte.generate,
                      byte_lm_feeds),
    "bpe": ModelKind("bpe", kind_bpe.build, kind_bpe.prepare, kind_bpe.sampler,
                     kind_bpe.train_flops_per_position, token_lm_scores, kind_bpe.describe, kind_bpe.generate,
                     kind_bpe.feeds, generates=False),
    "blt": ModelKind("blt", kind_blt.build, kind_blt.prepare, kind_blt.sampler,
                     kind_blt.train_flops_per_position, blt_scores, kind_blt.describe, kind_blt.generate,
                     blt_feeds, kind_blt.after_init),
}


def kind_of(cfg: RunConfig) -> ModelKind:
    try:
        return KINDS[cfg.model_kind]
    except KeyError:
        raise UserError(f"unknown model_kind '{cfg.model_kind}' (known: {', '.join(KINDS)})") from None


def build_model(cfg: RunConfig, run_dir: str | Path | None = None):
    """Construct (not initialise) the model a config describes; call init_weights() after."""
    return kind_of(cfg).build(cfg, None if run_dir is None else Path(run_dir))
