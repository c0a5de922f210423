"""`blt compress RUN INPUT OUTPUT`: any file, coded losslessly under a trained byte-level model.

RUN is a byte-level run or a BLT run; `blt decompress RUN OUTPUT FILE` with the same run gives
the input back, byte for byte. The input is cut into blocks of --block-size bytes, each coded on
its own from BOS, --batch-blocks of them side by side (blt.inference.compress; the container
records both, so decompression groups them the same way). The model runs on --device (default
cpu): decoding must happen on the same kind of device. stdout gets one JSON line: {"input",
"output", "input_bytes", "output_bytes", "seconds", "bpb"} (bpb: output bits per input byte).
"""
from __future__ import annotations

import time

from blt.commands.common import coding_args, coding_report, coding_setup
from blt.inference.compress import DEFAULT_BATCH_BLOCKS, DEFAULT_BLOCK_SIZE, check_layout, compress


def configure(p):
    coding_args(p)
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                   help=f"bytes per independently coded block (default {DEFAULT_BLOCK_SIZE})")
    p.add_argument("--batch-blocks", type=int, default=DEFAULT_BATCH_BLOCKS,
                   help=f"blocks coded side by side (default {DEFAULT_BATCH_BLOCKS})")
    p.set_defaults(func=run)


def run(args) -> int:
    check_layout(args.block_size, args.batch_blocks)
    data, feeds, fingerprint = coding_setup(args)
    t0 = time.perf_counter()
    out = compress(feeds, data, fingerprint, args.block_size, args.batch_blocks, not args.no_progress)
    bpb = 8 * len(out) / len(data) if data else None
    coding_report(args, data, out, time.perf_counter() - t0, bpb=bpb)
    return 0
