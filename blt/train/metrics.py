"""Training metrics: the metrics.jsonl file, interval accounting, and the progress display.

metrics.jsonl holds one JSON object per logged step, appended and flushed line by line:
    step, loss (mean nats per scored target over the interval), bpb (the nats of every scored
    target, EOS included, per real byte of text the targets cover, / ln 2: one definition for
    bytes, BPE tokens and patches, as the model kinds' stats {'targets', 'bytes'} give it), lr,
    grad_norm (before clipping, last step of the interval), bytes_per_s (input positions per
    second of training compute, all ranks), elapsed (seconds since the run first started,
    resumes included), tokens (input positions seen so far, all ranks), the model's stats
    summed over the interval (e.g. targets, patches) and their rates (`<stat>_per_s`),
    peak_mem_mb (the largest over ranks of the process's peak resident memory on the CPU, or of
    the peak memory allocated by tensors on a GPU, since the process started), and val_bpb /
    val_bytes on evaluation steps.
A resumed run first drops the rows after its checkpoint's step (they describe work that is
being redone), then appends to the same file.

Only rank 0 writes or prints; the caller passes `enabled=False` elsewhere.
"""
from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path

import torch

from tqdm import tqdm

from blt.errors import UserError
from blt.files import atomic_write_text, print_line, read_text, write_errors


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path} line {n} is damaged (not JSON); remove that line to go on") from None
    return rows


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def reset(self) -> None:
        """A fresh run starts an empty file."""
        if self.enabled and self.path.exists():
            with write_errors(self.path):
                self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """Drop rows with step > `step`, rewriting the file atomically."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with write_errors(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class Interval:
    """Sums of what happened since the last logged step (this rank only until reduced)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.nats = 0.0  # loss x scored targets, summed over micro-steps
        self.positions = 0  # input positions processed
        self.seconds = 0.0  # time inside training steps (evaluation excluded)
        self.stats: dict[str, float] = {}

    def add(self, stats: dict) -> None:
        for k, v in stats.items():
            self.stats[k] = self.stats.get(k, 0.0) + float(v)


def summarize(nats: float, positions: float, seconds: float, stats: dict[str, float]) -> dict:
    """Interval sums (over all ranks) -> the numbers of one metrics row."""
    targets = max(stats.get("targets", 0.0), 1.0)
    loss = nats / targets
    row = {"loss": loss, "bpb": loss / math.log(2), "bytes_per_s": positions / max(seconds, 1e-9)}
    if stats.get("bytes"):  # every kind: the nats of all its targets (EOS too) per byte of text
        row["bpb"] = nats / (math.log(2) * stats["bytes"])
    for k, v in stats.items():
        row[k] = int(v) if float(v).is_integer() else v
        row[f"{k}_per_s"] = v / max(seconds, 1e-9)
    if stats.get("patches"):  # patching models: mean bytes per patch over the interval
        row["bytes_per_patch"] = stats["bytes"] / stats["patches"]
    return row


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far: tensors allocated on a GPU, else resident memory
    (ru_maxrss, in KiB on Linux: the runtime and libraries included, not only tensors)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def format_rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


class Progress:
    """A tqdm bar on a terminal; plain lines on stdout otherwise (logs, pipes); or silence.
    Lines to a pipe whose reader has gone (`blt train | head`) are dropped; training goes on."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)
        self.total = total
        self.val_bpb: float | None = None

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, step: int, row: dict) -> None:
        if not self.enabled:
            return
        if "val_bpb" in row:
            self.val_bpb = row["val_bpb"]
        parts = {"loss": f"{row['loss']:.3f}", "bpb": f"{row['bpb']:.3f}", "B/s": format_rate(row["bytes_per_s"])}
        if self.val_bpb is not None:
            parts["val"] = f"{self.val_bpb:.3f}"
        if self.bar is not None:
            self.bar.set_postfix(parts, refresh=True)
        else:
            text = " ".join(f"{k} {v}" for k, v in parts.items())
            print_line(f"step {step}/{self.total} {text} lr {row['lr']:.2e}")

    def note(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print_line(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
