"""What several command adapters share: --device/--dtype and late key=value overrides."""
from __future__ import annotations


def add_device_arg(p) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (default: the checkpoint's; n-gram hash tables keep theirs)")


def accept_late_overrides(parser) -> None:
    """argparse fills positionals from one run of arguments only, so in
    `blt train c.yaml --steps 5 optim.lr=1e-3` the override would be 'unrecognized'; after
    this, such leftover key=value words are filed under `overrides` instead."""

    class LateOverrides(type(parser)):
        def parse_known_args(self, args=None, namespace=None):
            ns, extra = super().parse_known_args(args, namespace)
            late = [a for a in extra if "=" in a and not a.startswith("-")]
            ns.overrides = list(getattr(ns, "overrides", None) or []) + late
            return ns, [a for a in extra if a not in late]

    parser.__class__ = LateOverrides
