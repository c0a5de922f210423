"""The `blt` command: a thin dispatcher over `blt.commands.<name>` modules.

Each command module defines `configure(parser)`, which registers its arguments and sets `func`.
Only the chosen command's module is imported (`blt --help` imports none, so it answers at
once). Exit statuses: 0 done; 2 bad input (a UserError: one line on stderr, no traceback);
128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM: one line on stderr; SIGTERM is raised
as Ctrl-C is, so the same cleanups run; training saves a checkpoint first, see
blt.train.loop); 1 a bug of ours (a traceback).
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from blt.errors import Terminated, UserError, signal_exit_status

COMMANDS = {
    "train": "train a model from a YAML config",
    "eval": "bits per byte of a trained run on a data split",
    "eval-tasks": "the local task suite (character tasks, noised cloze) through lm-evaluation-harness",
    "score": "nats per byte of a file under a trained run",
    "generate": "continue a prompt with a trained run",
    "quickstart": "train, evaluate and sample a small model in a few minutes (offline)",
    "entropies": "precompute an entropy model's per-byte entropies for a corpus",
    "patches": "show the patches a patcher cuts a file into",
    "study": "train and compare models at equal training-FLOP budgets",
    "export-hf": "write a BLT run as a Hugging Face checkpoint (transformers' BltForCausalLM)",
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
            _command_module(parser, name).configure(p)
    return parser


def _command_module(parser, name: str):
    """blt.commands.<name> (dashes as underscores); a missing optional dependency (lm-eval for
    eval-tasks) is one line and status 2, like any other usage error."""
    try:
        return importlib.import_module(f"blt.commands.{name.replace('-', '_')}")
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "blt":
            raise
        parser.exit(2, f"blt {name}: error: needs the package '{e.name}', which is not installed "
                       f"(pip install 'blt-lm[eval]' for lm-eval)\n")


def _chosen(argv: list[str]) -> str:
    """The command word of argv (the first word naming a command), or '' for none."""
    return next((a for a in argv if a in COMMANDS), "")


def _terminate(signum, frame):
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_chosen(argv)).parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"blt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `blt generate ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        print(f"blt {args.command}: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return signal_exit_status(signum)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
