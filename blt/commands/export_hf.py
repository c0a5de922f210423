"""`blt export-hf RUN --out DIR`: a run's BLT as a Hugging Face checkpoint directory.

DIR gets config.json and model.safetensors, which `transformers.BltForCausalLM.from_pretrained`
loads and runs with the same logits (ids: BOS 1, byte b as b + 4). Only runs whose options the
released architecture expresses can be exported (`blt.arch: released` and an entropy or byte
patcher); for any other, one line names the first option it cannot express.
"""
from __future__ import annotations

from pathlib import Path

from blt.errors import UserError
from blt.runs.hf_format import export
from blt.runs.loading import open_run


def configure(p):
    p.add_argument("run", help="run directory of a BLT")
    p.add_argument("--out", required=True, type=Path, help="new directory for config.json and model.safetensors")
    p.set_defaults(func=run)


def run(args) -> int:
    opened = open_run(args.run, "cpu")
    if opened.cfg.model_kind != "blt":
        raise UserError(f"{args.run} is a '{opened.cfg.model_kind}' run; only BLT runs export to the BLT format")
    print(export(opened.model, opened.cfg, args.out))
    return 0
