"""User-facing errors and stops: the CLI turns these into one line on stderr and an exit status.

UserError: bad input (exit status 2). A stop by a signal exits with the shell's convention,
128 + the signal's number (130 for SIGINT / Ctrl-C, 143 for SIGTERM).
"""
from __future__ import annotations

import signal


class UserError(Exception):
    """Bad input from the user (path, config, checkpoint, argument). Never a bug of ours."""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training step, raised as Ctrl-C's KeyboardInterrupt is, so that every
    cleanup that Ctrl-C runs (temporary files, half-made run directories) runs for it too."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


def signal_exit_status(signum: int) -> int:
    """The exit status of a command stopped by signal `signum` (SIGINT -> 130)."""
    return 128 + int(signum)
