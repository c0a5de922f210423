"""Files the toolkit writes and reads: atomic replacement, special files, one-line errors.

Writing. A regular file (or a new name) is written under a temporary name beside its
destination (a leading dot, the pid) and renamed into place once it is complete, so it appears
whole or not at all (`open_output`, `write_bytes`, `atomic_write_text`; a directory such as a
checkpoint: `replacing_directory`). On any error, Ctrl-C included, the temporary is removed
and the destination is left as it was. Special files are written directly, since renaming over
them would replace a device node or a pipe with a regular file: `-` (stdout), devices such as
/dev/null, FIFOs and sockets.

Errors. Every OSError of writing or reading (a full disk, a file size limit, a read-only or
unwritable place, an unreadable file) becomes a UserError of one line naming the path and the
reason, e.g. "cannot write runs/x/config.yaml: No space left on device". A broken pipe stays
a BrokenPipeError: the reader left, which the CLI ends quietly.

Streams. `print_line` prints to stdout or stderr and, when the reader has gone (`blt train |
head`), drops that line and every later one instead of failing: the work goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from contextlib import contextmanager
from pathlib import Path

from blt.errors import UserError

STDOUT = "-"


def temporary_name(path: Path) -> Path:
    """The name a file is written under before it is renamed to `path`."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def is_special(path) -> bool:
    """True for `-` (stdout) and an existing file that is neither regular nor a directory."""
    if str(path) == STDOUT:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextmanager
def os_errors(path, doing: str):
    """OSError inside the block -> UserError 'cannot DOING PATH: REASON'."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise UserError(f"cannot {doing} {path}: {e.strerror or e}") from None


def write_errors(path):
    return os_errors(path, "write")


def read_errors(path):
    return os_errors(path, "read")


def remove_quietly(path: Path) -> None:
    """Remove a file or directory tree if it is there (cleanup after an error: never raises)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def open_output(path):
    """A binary file to write `path` through: stdout's buffer for `-`, the special file itself,
    or a temporary renamed into place when the block ends (see the module docstring)."""
    if str(path) == STDOUT:
        with write_errors("stdout"):
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        return
    path = Path(path)
    if is_special(path):
        with write_errors(path), open(path, "wb") as f:
            yield f
        return
    tmp = temporary_name(path)
    try:
        with write_errors(path):
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    with open_output(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


@contextmanager
def replacing_directory(path):
    """Yields a fresh temporary directory beside `path`; when the block ends it replaces `path`
    (an older directory of that name is removed first), and if it raises it is removed."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with write_errors(path):
            remove_quietly(tmp)
            tmp.mkdir()
            yield tmp
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def make_directory(path, option: str = "--out") -> Path:
    """Create directory `path` (and its parents) if needed: UserError if it is something else
    or cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory; {option} takes a directory")
    with write_errors(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def check_output(out, source=None) -> None:
    """UserError unless `out` can be written as a file: `-`, a special file, or a name in an
    existing directory that is no directory itself and not the file `source` it is made from.
    Checked before long work, not after it."""
    if is_special(out):
        return
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"output directory not found: {out.parent}")
    if out.is_dir():
        raise UserError(f"{out} is a directory; --out takes a file name")
    if source is not None and out.exists() and os.path.samefile(out, source):
        raise UserError(f"{out} is the input file: the output must go elsewhere")


def read_input(path, limit: int | None = None, empty_ok: bool = False) -> bytes:
    """The bytes (the first `limit` of them) of an input file, non-empty unless empty_ok
    (UserError naming the path otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; --input takes one file")
    if not path.exists():
        raise UserError(f"input file not found: {path}")
    with read_errors(path), open(path, "rb") as f:
        data = f.read(-1 if limit is None else limit)
    if not data and not empty_ok:
        raise UserError(f"{path} is empty: there are no bytes to score")
    return data


def read_text(path) -> str:
    """A UTF-8 text file's content (UserError if it cannot be read or is not UTF-8 text)."""
    path = Path(path)
    with read_errors(path):
        data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None


def read_json(path):
    """A JSON file written by blt; UserError naming it when it is damaged."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is damaged (not valid JSON: {e})") from None


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with read_errors(path), open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _discard(stream) -> None:
    """Point a stream's file descriptor at /dev/null: its later writes (and the flush at exit)
    go nowhere instead of failing."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's capture): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def print_line(text: str, stream=None) -> None:
    """print(text) to stdout (or `stream`), flushed; a reader that left drops it (see above)."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        _discard(stream)
