"""The `blt` command: a thin dispatcher over `blt.commands.<name>` modules.

Each command module defines `configure(parser)`, which registers its arguments and sets `func`.
Only the chosen command's module is imported (`blt --help` imports none, so it answers at
once). Bad input surfaces as UserError: one line on stderr and exit status 2, no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from blt.errors import UserError

COMMANDS = {
    "train": "train a model from a YAML config",
    "eval": "bits per byte of a trained run on a data split",
    "score": "nats per byte of a file under a trained run",
    "generate": "continue a prompt with a trained run",
    "quickstart": "train, evaluate and sample a small model in a few minutes (offline)",
    "entropies": "precompute an entropy model's per-byte entropies for a corpus",
    "patches": "show the patches a patcher cuts a file into",
    "study": "train and compare models at equal training-FLOP budgets",
    "compress": "compress a file losslessly with a trained byte-level model or BLT",
    "decompress": "restore a file made by `blt compress` (with the same run)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse's own convention for usage errors)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; `command`'s own arguments registered (or all)."""
    parser = _Parser(prog="blt", description="Byte Latent Transformer toolkit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if command in (None, name):
            importlib.import_module(f"blt.commands.{name}").configure(p)
    return parser


def _chosen(argv: list[str]) -> str:
    """The command word of argv (the first word naming a command), or '' for none."""
    return next((a for a in argv if a in COMMANDS), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_chosen(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"blt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `blt generate ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
