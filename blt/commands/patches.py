"""`blt patches RUN --input FILE`: show where a patcher cuts a file into patches.

RUN is an entropy model (a byte-level run) or a BLT run (its own patcher and threshold). The file is one document
(BOS, its first --max-bytes bytes, EOS). Each patch is shown in alternating colours when
stdout is a terminal (--color), otherwise with a '|' before every patch; the last line gives
the mean patch size (real bytes per patch). With an entropy model and no --theta (--theta-r,
--budget), the threshold is calibrated on the file itself for --target-patch-size, and the
line says so. A BPE patcher without --bpe-vocab learns its vocabulary from the file itself.
--png OUT.png draws the BLT paper's figure (entropy per byte, the threshold, a mark at every
patch start) and --html OUT.html writes a self-contained page (bytes coloured by entropy,
patch boundaries, values on hover): blt.patching.pictures.

`patcher_for_run` is the hook that turns a run into its patching: an entropy model comes
with no patcher (the command line gives one); a BLT run brings its stored patcher.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from blt.commands.common import add_device_arg
from blt.errors import UserError
from blt.evaluation.scorer import document_signals
from blt.files import check_output, read_input
from blt.patching.bpe import load_bpe_vocab, train_bpe
from blt.patching.calibration import calibrate_config
from blt.patching.entropy import SIGNALS
from blt.patching.patchers import CALIBRATED, KINDS, PatcherConfig, build_patcher, mean_patch_size
from blt.patching.pictures import PatchView, draw_png, write_html
from blt.runs import layout
from blt.runs.loading import open_run
from blt.vocab import BOS_ID, EOS_ID

COLOURS = ("\x1b[30;46m", "\x1b[30;43m")  # black on cyan, black on yellow
RESET = "\x1b[0m"


@dataclass
class RunPatching:
    config: PatcherConfig | None  # the run's own patcher; None for an entropy model
    entropy_model: object | None  # a ByteLM computing entropies, when the patching needs one
    bpe_vocab: list[bytes] | None = None


def patcher_for_run(run_dir: str, device: str = "auto", dtype: str | None = None) -> RunPatching:
    """How a run patches. Byte-level runs are entropy models and bring no patcher."""
    opened = open_run(run_dir, device, dtype)
    model, cfg = opened.model, opened.cfg
    if cfg.model_kind == "byte":
        return RunPatching(config=None, entropy_model=model)
    if cfg.model_kind != "blt":
        raise UserError(f"{run_dir} is a '{cfg.model_kind}' run: give an entropy model (byte) run or a BLT run")
    vocab = load_bpe_vocab(Path(run_dir) / layout.BPE_VOCAB) if cfg.patching.kind == "bpe" else None
    return RunPatching(config=cfg.patching, entropy_model=model.entropy_model, bpe_vocab=vocab)


def configure(p):
    p.add_argument("run", help="entropy model run (byte-level) or BLT run")
    p.add_argument("--input", required=True, type=Path, help="file to patch (any bytes)")
    p.add_argument("--kind", choices=KINDS, help="patcher (default: the run's, or entropy)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--theta", type=float, help="global entropy threshold in nats")
    g.add_argument("--target-patch-size", type=float, help="calibrate the threshold for this mean (default 4.5)")
    p.add_argument("--theta-r", type=float, help="relative threshold (relative, entropy_relative)")
    p.add_argument("--budget", type=float, help="surprisal budget in nats (equal_info)")
    p.add_argument("--patch-size", type=int, help="static patch size k")
    p.add_argument("--max-patch-length", type=int, help="split patches longer than this")
    p.add_argument("--bpe-vocab", help="BPE vocabulary (bpe_vocab.json or a run directory) for --kind bpe")
    p.add_argument(
        "--bpe-vocab-size", type=int, default=1024, help="tokens learned from the file itself without --bpe-vocab"
    )
    p.add_argument("--max-bytes", type=int, default=20_000, help="patch only the first N bytes (default 20000)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto", help="colour the patches")
    p.add_argument("--png", type=Path, help="also draw the entropy figure into this PNG file")
    p.add_argument("--html", type=Path, help="also write a self-contained HTML page of the patches")
    add_device_arg(p)
    p.set_defaults(func=run)


def _patcher_config(args, stored: PatcherConfig | None) -> PatcherConfig:
    """The run's patcher (or the default) with the command line's settings on top."""
    cfg = stored or PatcherConfig(kind="entropy")
    changes = {"kind": args.kind, "theta": args.theta, "theta_r": args.theta_r, "budget": args.budget}
    changes.update(patch_size=args.patch_size, max_patch_length=args.max_patch_length,
                   target_patch_size=args.target_patch_size)
    cfg = replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    if args.target_patch_size is not None and cfg.kind in CALIBRATED:  # a size asked for: calibrate
        cfg = replace(cfg, **{CALIBRATED[cfg.kind]: None})
    cfg.validate()
    return cfg


def render(data: bytes, starts: np.ndarray, colour: bool) -> bytes:
    """data with a '|' (or a colour change) before each patch; starts[i] is for data[i]."""
    if not colour:  # one array operation: no Python object per patch, whatever the input's size
        return np.insert(np.frombuffer(data, dtype=np.uint8), np.flatnonzero(starts), ord("|")).tobytes()
    cuts = np.flatnonzero(starts).tolist() + [len(data)]
    out = []
    for n, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        out.append(COLOURS[n % 2].encode() + data[a:b])
    out.append(RESET.encode())
    return b"".join(out)


def run(args) -> int:
    if args.max_bytes < 1:
        raise UserError(f"--max-bytes must be at least 1, got {args.max_bytes}")
    data = read_input(args.input, args.max_bytes)
    for out in (args.png, args.html):
        if out is not None:
            check_output(out, source=args.input)
    doc = np.frombuffer(data, dtype=np.uint8)
    patching = patcher_for_run(args.run, args.device, args.dtype)
    cfg = _patcher_config(args, patching.config)
    vocab = patching.bpe_vocab
    if cfg.kind == "bpe" and (args.bpe_vocab or vocab is None):
        if args.bpe_vocab:
            path = Path(args.bpe_vocab)
            vocab = load_bpe_vocab(path / layout.BPE_VOCAB if path.is_dir() else path)
        else:
            msg = f"blt patches: learning a {args.bpe_vocab_size}-token BPE vocabulary from the file"
            print(msg, file=sys.stderr)
            vocab = train_bpe(data, args.bpe_vocab_size)
    if cfg.needs_entropy and patching.entropy_model is None:
        raise UserError(f"patcher '{cfg.kind}' needs an entropy model, and {args.run} has none")
    # the signals at every position after BOS, (n + 1,) each, the last at EOS
    wanted = {cfg.signal} if cfg.needs_entropy else set()
    if (args.png or args.html) and patching.entropy_model is not None:
        wanted = set(SIGNALS)
    values = {name: document_signals(patching.entropy_model, [doc], name)[0] for name in sorted(wanted)}
    signal = values[cfg.signal] if cfg.needs_entropy else np.zeros(len(data) + 1, dtype=np.float32)
    note = ""
    if cfg.needs_calibration:
        cfg, _ = calibrate_config(cfg, [doc], [signal])
        note = (f", threshold {getattr(cfg, CALIBRATED[cfg.kind]):.4f} calibrated on this file for a target of "
                f"{cfg.target_patch_size}")
    ids = torch.from_numpy(np.concatenate([[BOS_ID], doc, [EOS_ID]]).astype(np.int64))[None]  # (1, n + 2)
    patcher = build_patcher(cfg, vocab)
    starts = patcher.starts(ids, torch.from_numpy(np.concatenate([[0.0], signal])).float()[None])
    mean = mean_patch_size(starts, ids < 256)
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    sys.stdout.flush()
    sys.stdout.buffer.write(render(data, starts[0, 1:-1].numpy(), colour) + b"\n")
    sys.stdout.buffer.flush()
    n_patches = round(len(data) / mean)
    print(f"mean patch size {mean:.3f} bytes ({len(data)} bytes in {n_patches} patches; {patcher!r}{note})")
    if args.png or args.html:
        drawn = {"entropy": cfg.theta, "entropy_relative": cfg.theta, "equal_info": cfg.budget}  # a line to draw
        view = PatchView(
            data, starts[0, 1:-1].numpy(), values["entropy"][:-1] if values else None,
            values["surprisal"][1:] if values else None, cfg.kind, repr(patcher), drawn.get(cfg.kind),
            f"{args.input.name}: {len(data)} bytes, mean patch size {mean:.2f} ({cfg.kind})")
        sys.stdout.flush()
        for out, write in ((args.png, draw_png), (args.html, write_html)):
            if out is not None:
                write(view, out)
                print(f"blt patches: wrote {out}", file=sys.stderr)
    return 0
