"""Files the toolkit writes and reads: atomic replacement, inputs checked once.

Every file a command or a run writes appears whole or not at all: it is written under a
temporary name beside its destination (a leading dot, the pid) and renamed into place.
"""
from __future__ import annotations

import os
from pathlib import Path

from blt.errors import UserError


def temporary_name(path: Path) -> Path:
    """The name a file is written under before it is renamed to `path`."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_text(path, text: str) -> Path:
    path = Path(path)
    tmp = temporary_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def read_input(path: Path) -> bytes:
    """The bytes of a non-empty input file (UserError naming the path otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; --input takes one file")
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path} is empty: there are no bytes to score")
    return data


def check_output(out: Path) -> None:
    """UserError unless `out` can be created as a file (its directory exists, it is no directory)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"output directory not found: {out.parent}")
    if out.is_dir():
        raise UserError(f"{out} is a directory; --out takes a file name")
