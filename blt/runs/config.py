"""What a run is made of: the nested config tree written to its config.yaml.

    cfg = load_config(RunConfig, "configs/tiny.yaml", ["optim.lr=3e-4"])

`model_kind` picks the network and which section describes it (MODEL_SECTION: the byte
transformer in `model`, the BPE-token transformer in `bpe`, the BLT in `blt`); the other
sections are shared by every kind. The kinds themselves (how each builds, trains, scores and
generates) are registered in blt.runs.kinds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from blt.config import from_dict, must, read_yaml
from blt.errors import UserError
from blt.models.blt import BLTConfig
from blt.models.byte_lm import ByteLMConfig
from blt.models.token_lm import TokenLMConfig
from blt.patching.patchers import PatcherConfig
from blt.runs import layout

MODEL_SECTION = {"byte": "model", "bpe": "bpe", "blt": "blt"}  # the section describing each kind's network
MASK_BUDGET = 4 << 30  # bytes of attention masks one training step may build (per device)


@dataclass
class DataConfig:
    corpus: str = "stdlib"  # path, directory, glob, 'stdlib' or 'enwik8'
    splits: str = "auto"  # '90/10', '90/5/5', or 'auto' (90/10 for tiny shakespeare, else 90/5/5)
    data_dir: str | None = None  # where pre-downloaded corpora (enwik8) live; also $BLT_DATA_DIR
    batch_size: int = 16  # windows per optimizer step per rank (before grad_accum)
    max_bytes: int | None = None  # use only the corpus's first N bytes (splits cut from those)
    # files: one document per file; jsonl / parquet: one per record, read in place (blt.data.shards);
    # auto: shards when every file of the corpus ends in .jsonl (or every one in .parquet)
    format: Literal["auto", "files", "jsonl", "parquet"] = "auto"
    text_field: str = "text"  # the JSONL field or Parquet column holding a record's text
    # contiguous shards of the training stream (blt.data.stream.ShardPlan); 0: one per rank, so a
    # rank reads only its own. A fixed number makes the global batch the same for every split of
    # world x grad_accum (at most that many shards)
    shards: int = 0

    def validate(self):
        must(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        must(self.max_bytes is None or self.max_bytes >= 1, "max_bytes", "at least 1 or null", self.max_bytes)
        must(self.shards >= 0, "shards", "0 (one per rank) or more", self.shards)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    clip: float = 1.0  # global grad-norm clip; 0 disables

    def validate(self):
        must(0 < self.lr < math.inf, "lr", "a positive finite number", self.lr)
        must(0 <= self.weight_decay < math.inf, "weight_decay", "a finite number >= 0", self.weight_decay)
        for name in ("beta1", "beta2"):
            must(0 <= getattr(self, name) < 1, name, "in [0, 1)", getattr(self, name))
        must(0 < self.eps < math.inf, "eps", "a positive finite number", self.eps)
        must(self.warmup_steps >= 0, "warmup_steps", "at least 0", self.warmup_steps)
        must(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        must(0 <= self.clip < math.inf, "clip", "a finite number >= 0 (0 = no clipping)", self.clip)


@dataclass
class TrainConfig:
    steps: int = 1000
    grad_accum: int = 1
    seed: int = 0
    bf16: bool = False  # autocast matmuls to bfloat16
    log_every: int = 10
    eval_every: int = 250  # 0 = only at the end
    eval_bytes: int | None = 200_000  # periodic validation on the first N val bytes; null = all
    ckpt_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    progress: bool = True
    device: str = "auto"  # auto = CUDA (this rank's GPU) when available, else cpu
    parallel: Literal["ddp", "fsdp"] = "ddp"  # replicate the model on every rank, or shard it (FSDP2)
    activation_checkpointing: bool = False  # recompute every block's activations in the backward pass
    compile: bool = False  # torch.compile every block

    def validate(self):
        for name in ("steps", "grad_accum", "log_every"):
            must(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        for name in ("eval_every", "ckpt_every", "keep_checkpoints"):
            must(getattr(self, name) >= 0, name, "at least 0", getattr(self, name))
        must(self.eval_bytes is None or self.eval_bytes >= 1, "eval_bytes", "at least 1 or null (all)",
             self.eval_bytes)
        must(0 <= self.seed < 2**64, "seed", "in [0, 2**64)", self.seed)


@dataclass
class RunConfig:
    model_kind: Literal["byte", "blt", "bpe"] = "byte"
    model: ByteLMConfig = field(default_factory=ByteLMConfig)  # the byte-level transformer
    blt: BLTConfig = field(default_factory=BLTConfig)  # the BLT network (model_kind: blt)
    bpe: TokenLMConfig = field(default_factory=TokenLMConfig)  # the BPE-token transformer (model_kind: bpe)
    patching: PatcherConfig = field(default_factory=PatcherConfig)  # how a BLT cuts patches
    # the entropy model's architecture, copied from patching.entropy_run when a BLT run starts
    entropy_model: ByteLMConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self):
        """The attention masks of a training step must fit MASK_BUDGET (the sections check
        their own values)."""
        need = self.network.attention_mask_bytes(self.data.batch_size, self.context)
        if need > MASK_BUDGET:
            section = MODEL_SECTION[self.model_kind]
            raise UserError(
                f"{section}.context={self.context} with data.batch_size={self.data.batch_size} needs "
                f"{need / 2**30:.1f} GiB of attention masks per training step, over the {MASK_BUDGET >> 30} GiB "
                f"allowed: shorten the context, lower the batch size or set a sliding window"
            )

    @property
    def network(self):
        """The config section of this kind's network (ByteLMConfig, TokenLMConfig or BLTConfig)."""
        return getattr(self, MODEL_SECTION[self.model_kind])

    @property
    def context(self) -> int:
        """Input positions per training window (tokens for model_kind bpe)."""
        return self.network.context


def load_run_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    path = run_dir / layout.CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    return from_dict(RunConfig, read_yaml(path))
