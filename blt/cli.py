"""The `blt` command: a thin dispatcher over `blt.commands.<name>` modules.

Each command module defines `add_parser(subparsers)`, which registers its arguments and sets
`func`. Bad input surfaces as UserError: one line on stderr and exit status 2, no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from blt.errors import UserError

COMMANDS = ["train", "eval", "score", "generate", "quickstart", "entropies", "patches", "study"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse's own convention for usage errors)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blt", description="Byte Latent Transformer toolkit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"blt.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
