"""The fingerprint of a trained model: one sha256 over the files that decide its predictions.

A compressed file stores it (blt.inference.container), so decompressing with any other model,
or with the same run after more training, is refused before a byte is decoded. Hashed, each as
its name, its size and its bytes: config.yaml (the architecture, the patcher and its
threshold), the newest checkpoint's weights (a BLT's carry its entropy model) and, where the
run has them, the BPE vocabulary of causal-BPE patching and a token model's tokenizer.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from blt.runs import layout
from blt.runs.checkpoint import latest_checkpoint

CHUNK = 1 << 20


def run_fingerprint(run_dir: str | Path) -> bytes:
    """32 bytes naming a run's model as its newest checkpoint stands now."""
    run_dir = Path(run_dir)
    files = [run_dir / layout.CONFIG, latest_checkpoint(run_dir) / layout.WEIGHTS]
    files += [run_dir / name for name in (layout.BPE_VOCAB, layout.TOKENIZER) if (run_dir / name).is_file()]
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.digest()
