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


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to path whole or not at all; the temporary file never outlives a failure."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_input(path: Path, empty_ok: bool = False) -> bytes:
    """The bytes of an input file, non-empty unless empty_ok (UserError naming the path otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; the input is one file")
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    data = path.read_bytes()
    if not data and not empty_ok:
        raise UserError(f"{path} is empty: there are no bytes to score")
    return data


def check_output(out: Path, source: Path | None = None) -> None:
    """UserError unless `out` can be created as a file (its directory exists, it is no directory)
    without replacing the file `source` it is made from."""
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"output directory not found: {out.parent}")
    if out.is_dir():
        raise UserError(f"{out} is a directory; the output is a file name")
    if source is not None and out.exists() and os.path.samefile(out, source):
        raise UserError(f"{out} is the input file: the output must go elsewhere")
