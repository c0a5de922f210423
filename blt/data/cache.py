"""Where derived data is kept between runs: $BLT_CACHE_DIR, default ~/.cache/blt."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("BLT_CACHE_DIR", Path.home() / ".cache" / "blt"))
