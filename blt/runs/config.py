"""What a run is made of: the nested config tree written to its config.yaml.

    cfg = load_config(RunConfig, "configs/tiny.yaml", ["optim.lr=3e-4"])

`model_kind` picks the network and which section describes it (MODEL_SECTION: the byte
transformer in `model`, the BPE-token transformer in `bpe`, the BLT in `blt`); the other
sections are shared by every kind. The kinds themselves (how each builds, trains, scores and
generates) are registered in blt.runs.kinds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from blt.config import from_dict, read_yaml
from blt.errors import UserError
from blt.models.blt import BLTConfig
from blt.models.byte_lm import ByteLMConfig
from blt.models.token_lm import TokenLMConfig
from blt.patching.patchers import PatcherConfig
from blt.runs import layout

MODEL_SECTION = {"byte": "model", "bpe": "bpe", "blt": "blt"}  # the section describing each kind's network


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
        if self.train.steps < 1:
            raise UserError(f"train.steps must be at least 1, got {self.train.steps}")
        if self.train.grad_accum < 1 or self.data.batch_size < 1:
            raise UserError("train.grad_accum and data.batch_size must be at least 1")
        if self.train.log_every < 1:
            raise UserError(f"train.log_every must be at least 1, got {self.train.log_every}")

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
