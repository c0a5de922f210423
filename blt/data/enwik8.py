"""enwik8: find a local copy, or download it once, and verify its published checksum.

Lookup order: `data_dir` (the `data.data_dir` setting), then $BLT_DATA_DIR, then the cache
(`$BLT_CACHE_DIR/enwik8`, default ~/.cache/blt). In each place either `enwik8` or `enwik8.zip`
is accepted. If none is there, the zip is downloaded from its standard address; offline, one
error says where to put a copy.
"""
from __future__ import annotations

import io
import os
import urllib.request
import zipfile
from pathlib import Path

from blt.data.cache import cache_dir
from blt.errors import UserError
from blt.files import make_directory, read_errors, sha256_file, write_bytes

URL = "http://mattmahoney.net/dc/enwik8.zip"
SIZE = 100_000_000
SHA256 = "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"


def _verify(path: Path, expected_sha: str = SHA256, expected_size: int = SIZE) -> None:
    if path.stat().st_size != expected_size:
        raise UserError(f"{path} has {path.stat().st_size} bytes; enwik8 has {expected_size}")
    if sha256_file(path) != expected_sha:
        raise UserError(f"{path} does not match enwik8's published sha256 {expected_sha}")


def _unzip(zip_bytes: bytes, dest: Path) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
            payload = z.read("enwik8")
    except (zipfile.BadZipFile, KeyError):
        raise UserError("the enwik8 zip is damaged or holds no 'enwik8' member") from None
    write_bytes(dest, payload)


def enwik8_path(data_dir: str | None = None, url: str = URL, sha256: str = SHA256, size: int = SIZE) -> Path:
    """Return the path of a verified enwik8 file, downloading it if it is nowhere local."""
    places = [Path(p) for p in (data_dir, os.environ.get("BLT_DATA_DIR")) if p]
    cache = cache_dir() / "enwik8"
    places.append(cache)
    for place in places:
        if (place / "enwik8").is_file():
            _verify(place / "enwik8", sha256, size)
            return place / "enwik8"
        if (place / "enwik8.zip").is_file():
            make_directory(cache, "$BLT_CACHE_DIR")
            with read_errors(place / "enwik8.zip"):
                zip_bytes = (place / "enwik8.zip").read_bytes()
            _unzip(zip_bytes, cache / "enwik8")
            _verify(cache / "enwik8", sha256, size)
            return cache / "enwik8"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            zip_bytes = r.read()
    except OSError as e:
        raise UserError(
            f"enwik8 is not available locally and could not be downloaded ({e.__class__.__name__}); "
            f"put enwik8 or enwik8.zip in a directory and pass data.data_dir=DIR or set BLT_DATA_DIR"
        ) from None
    make_directory(cache, "$BLT_CACHE_DIR")
    _unzip(zip_bytes, cache / "enwik8")
    _verify(cache / "enwik8", sha256, size)
    return cache / "enwik8"
