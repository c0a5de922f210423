"""The run directory: every file name in one place.

    runs/NAME/
      config.yaml            the resolved RunConfig (every default written out)
      run.json               corpus fingerprint, versions, device, resumes
      metrics.jsonl          one JSON object per logged step
      checkpoints/
        LATEST               name of the newest complete checkpoint
        step_NNNNNNN/        model.safetensors, model.json, train_state.pt
BLT runs also hold what their patcher needs: entropies/ (the corpus's entropy file, used for
training batches), patching.json (the calibrated threshold) and bpe_vocab.json (causal BPE
patching). BPE-token runs hold tokenizer.json and tokens/ (the training split as tokens).
"""
from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"
TRAIN_STATE = "train_state.pt"
ENTROPY_DIR = "entropies"
PATCHING = "patching.json"
BPE_VOCAB = "bpe_vocab.json"
TOKENIZER = "tokenizer.json"
TOKENS_PREFIX = "tokens/train"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoint_step(path: Path) -> int:
    """step_0000300 -> 300"""
    return int(Path(path).name.split("_")[-1])
