"""What a run is: its config tree, its directory, and the model it builds.

A run directory holds:
    config.yaml            the resolved RunConfig (every default written out)
    metrics.jsonl          one JSON object per logged step
    checkpoints/step_NNNNNNN/{model.safetensors, model.json, train_state.pt}
    checkpoints/LATEST     name of the newest complete checkpoint
BLT runs also hold what their patcher needs: entropies/ (the corpus's entropy file, used for
training batches) and bpe_vocab.json (causal BPE patching). A BLT checkpoint carries its frozen
entropy model's weights, so a BLT run rebuilds alone. BPE-token runs hold tokenizer.json (their
tokenizer, learned at run start) and tokens/ (the training split as tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from blt.config import read_yaml, from_dict
from blt.data.tokens import load_tokenizer
from blt.errors import UserError
from blt.models.blt import BLTConfig, ByteLatentTransformer
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.models.token_lm import TokenLM, TokenLMConfig
from blt.patching.bpe import load_bpe_vocab
from blt.patching.patchers import PatcherConfig, build_patcher


@dataclass
class DataConfig:
    corpus: str = "stdlib"  # path, directory, glob, 'stdlib' or 'enwik8'
    splits: str = "auto"  # '90/10', '90/5/5', or 'auto' (90/10 for tiny shakespeare, else 90/5/5)
    data_dir: str | None = None  # where pre-downloaded corpora (enwik8) live; also $BLT_DATA_DIR
    batch_size: int = 16  # windows per optimizer step per rank (before grad_accum)
    max_bytes: int | None = None  # use only the corpus's first N bytes (splits cut from those)


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
    def context(self) -> int:
        """Input positions per training window (tokens for model_kind bpe)."""
        if self.model_kind == "blt":
            return self.blt.context
        return self.bpe.context if self.model_kind == "bpe" else self.model.context


def build_model(cfg: RunConfig, run_dir: str | Path | None = None):
    """Construct (not initialise) the model a config describes; call init_weights() after.

    A BLT gets its patcher (thresholds must be resolved: see blt.train.blt_setup) and, for
    entropy patchers, an entropy model of cfg.entropy_model's shape whose weights come from
    the entropy run (fresh training) or the BLT checkpoint (everything else)."""
    if cfg.model_kind == "byte":
        return ByteLM(cfg.model)
    if cfg.model_kind == "blt":
        model = ByteLatentTransformer(cfg.blt)
        vocab = None
        if cfg.patching.kind == "bpe":
            if run_dir is None:
                raise UserError("a BLT with BPE patching needs its run directory (bpe_vocab.json)")
            vocab = load_bpe_vocab(Path(run_dir) / "bpe_vocab.json")
        patcher = build_patcher(cfg.patching, vocab)
        entropy_model = None
        if patcher.needs_entropy:
            if cfg.entropy_model is None:
                raise UserError("this BLT config names no entropy model (set patching.entropy_run)")
            entropy_model = ByteLM(cfg.entropy_model)
        model.set_patching(patcher, entropy_model)
        return model
    if cfg.model_kind == "bpe":
        if run_dir is None:
            raise UserError("a BPE-token model needs its run directory (tokenizer.json)")
        return TokenLM(cfg.bpe, load_tokenizer(run_dir))
    raise UserError(f"unknown model_kind '{cfg.model_kind}'")


def load_run_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    return from_dict(RunConfig, read_yaml(path))
