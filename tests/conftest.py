"""Fixtures shared by the test files: small corpora on disk, an isolated cache, a blocked network, run directories.

Tests use one CPU thread (subprocesses too, through OMP_NUM_THREADS): their models are tiny,
and on a shared machine several multi-threaded torch processes spin against each other
(measured: a 10x slowdown with two threads each on two busy cores).
"""
from __future__ import annotations

import os
import socket
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads at import)

torch.set_num_threads(1)

from blt.config import save_yaml  # noqa: E402
from blt.models.byte_lm import ByteLM, ByteLMConfig  # noqa: E402
from blt.runs.checkpoint import save_checkpoint  # noqa: E402
from blt.runs.kinds import build_model  # noqa: E402
from blt.runs.config import RunConfig  # noqa: E402


def _shared_data() -> Path:
    """The shared corpora: ../shared/data beside the repository, else $BLT_DATA_DIR, else
    /work/shared/data (a git worktree elsewhere has no shared/ beside it)."""
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "data", os.environ.get("BLT_DATA_DIR"),
                      "/work/shared/data"):
        if candidate and (Path(candidate) / "tinyshakespeare.txt").is_file():
            return Path(candidate)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED_DATA = _shared_data()


def _stdlib_text(n_bytes: int) -> bytes:
    """Real text every machine has: the first n_bytes of a few standard-library modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = b""
    for name in ("argparse.py", "json/decoder.py", "textwrap.py", "string.py", "shlex.py", "csv.py"):
        out += (root / name).read_bytes()
        if len(out) >= n_bytes:
            break
    return out[:n_bytes]


@pytest.fixture
def text_file(tmp_path) -> Path:
    """A ~64 KB text file (one document)."""
    path = tmp_path / "corpus.txt"
    path.write_bytes(_stdlib_text(64_000))
    return path


@pytest.fixture
def text_dir(tmp_path) -> Path:
    """A directory of 8 text files of ~8 KB each (eight documents)."""
    d = tmp_path / "docs"
    d.mkdir()
    text = _stdlib_text(64_000)
    for i in range(8):
        (d / f"doc{i}.txt").write_bytes(text[i * 8000 : (i + 1) * 8000])
    return d


@pytest.fixture(scope="session")
def make_run(tmp_path_factory):
    """make_run(cfg, seed=0) -> a run directory holding cfg and a freshly initialised checkpoint."""

    def make(cfg, seed: int = 0) -> Path:
        run_dir = tmp_path_factory.mktemp("run")
        save_yaml(cfg, run_dir / "config.yaml")
        torch.manual_seed(seed)
        model = build_model(cfg, run_dir)
        model.init_weights()
        save_checkpoint(run_dir, 1, model, cfg, {})
        return run_dir

    return make


@pytest.fixture
def blt_cache(tmp_path, monkeypatch) -> Path:
    """Point $BLT_CACHE_DIR at a fresh directory for the test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("BLT_CACHE_DIR", str(d))
    return d


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every attempt to resolve a host name or to connect an internet socket fails, and is recorded."""
    attempts = []
    connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family == socket.AF_UNIX:
            return connect(sock, address)
        attempts.append(address)
        raise OSError("network disabled by the test")

    def guarded_getaddrinfo(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


def make_entropy_run(parent: Path) -> tuple[Path, ByteLM]:
    """A byte-level run directory (1 layer, width 32, window 16) holding its initial weights:
    (run directory, the model in eval mode)."""
    cfg = RunConfig()
    cfg.model = ByteLMConfig(dim=32, n_layers=1, n_heads=2, context=32, window=16)
    run = parent / "ent_run"
    run.mkdir()
    save_yaml(cfg, run / "config.yaml")
    torch.manual_seed(0)
    model = ByteLM(cfg.model)
    model.init_weights()
    save_checkpoint(run, 1, model, cfg, {})
    return run, model.eval()


@pytest.fixture
def entropy_run(tmp_path):
    return make_entropy_run(tmp_path)
