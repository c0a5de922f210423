"""Open a trained run: its model on a device, its config and its kind, ready to use.

    run = open_run("runs/blt_tiny")                     # newest checkpoint, eval mode
    nats = run.scores([np.frombuffer(b"some bytes", np.uint8)])[0]
    (text,) = run.generate([b"ROMEO:"], GenerationArgs(max_new_bytes=100, temperature=0.8))

A run is a run directory of this toolkit or a Hugging Face BLT checkpoint directory (Meta's
released models: blt.runs.hf_format), opened the same way. The model is built on the meta device
and its weights become the memory-mapped tensors of the checkpoint: nothing is copied, so the
parts a computation never touches (most of a released model's hash tables) never enter memory.
`dtype` converts every weight but the hash tables (looked up a few rows at a time, they keep
their stored dtype).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from blt.errors import UserError
from blt.inference.args import GenerationArgs
from blt.inference.rows import OnBytes
from blt.runs import hf_format
from blt.runs.checkpoint import advise_row_reads, latest_checkpoint, put_weights, read_weights
from blt.runs.config import RunConfig, load_run_config
from blt.runs.kinds import ModelKind, build_model, kind_of
from blt.runs.layout import checkpoint_step

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is present, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{requested}' was asked for but no CUDA device is available")
        if requested == "cuda":
            requested = f"cuda:{local_rank}"
    try:
        return torch.device(requested)
    except RuntimeError:
        raise UserError(f"device '{requested}' is not a device torch knows (try auto, cpu, cuda)") from None


def run_config(path: str | Path) -> RunConfig:
    """The RunConfig of a run directory or of a Hugging Face BLT directory."""
    path = Path(path)
    if hf_format.is_hf_checkpoint(path):
        return hf_format.run_config(hf_format.read_config(path))
    return load_run_config(path)


def _materialise(model: torch.nn.Module, state: dict, source, dtype: torch.dtype | None, device) -> None:
    """Make `state` the parameters of a model built on the meta device; fill its buffers."""
    put_weights(model, state, source, assign=True)
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_meta:  # non-persistent buffers (RoPE, token lengths)
                module._buffers[name] = torch.empty_like(buf, device="cpu")
        if hasattr(module, "init_buffers"):
            module.init_buffers()
    for name, param in model.named_parameters():
        if ".embed.tables." in name:  # read a few rows per byte: kept mapped, in their own dtype
            advise_row_reads(param.data)
        elif dtype is not None:
            param.data = param.data.to(dtype)
    model.to(device)


def load_model(run_dir: str | Path, device="cpu", dtype: torch.dtype | None = None):
    """A run's model (newest checkpoint, or a Hugging Face BLT's weights) in eval mode: (model, cfg)."""
    path = Path(run_dir)
    cfg = run_config(path)
    if hf_format.is_hf_checkpoint(path):
        state, source = hf_format.to_ours(cfg, hf_format.open_weights(path)), f"the checkpoint in {path}"
    else:
        ckpt = latest_checkpoint(path)
        state, source = read_weights(ckpt), f"checkpoint {ckpt}"
    with torch.device("meta"):
        model = build_model(cfg, path)
    _materialise(model, state, source, dtype, device)
    return model.eval(), cfg


@dataclass
class OpenRun:
    """A run's newest checkpoint, loaded: model (eval mode), config, kind, checkpoint step."""

    path: Path
    model: torch.nn.Module
    cfg: RunConfig
    kind: ModelKind
    step: int | None  # None for a Hugging Face checkpoint

    def scores(self, docs: list, batch_size: int = 16, what: str = "nats") -> list:
        """Nats per byte of each document (uint8 arrays), given BOS and earlier bytes; what=
        'nats_greedy' adds a column, 1.0 where the byte was the model's argmax (scorer.py)."""
        return self.kind.scores(self.model, docs, batch_size, what)

    def generate(self, prompts: list[bytes], args: GenerationArgs = GenerationArgs(),
                 on_bytes: OnBytes | None = None) -> list[bytes]:
        return self.kind.generate(self.model, prompts, args, on_bytes)

    @property
    def is_hf(self) -> bool:
        return self.step is None


def open_run(run_dir: str | Path, device: str = "auto", dtype: str | None = None) -> OpenRun:
    """A run directory or a Hugging Face BLT directory, loaded; dtype: float32, bfloat16, float16."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    path = Path(run_dir)
    model, cfg = load_model(path, pick_device(device), DTYPES.get(dtype))
    step = None if hf_format.is_hf_checkpoint(path) else checkpoint_step(latest_checkpoint(path))
    return OpenRun(path, model, cfg, kind_of(cfg), step)
