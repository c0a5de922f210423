"""What to generate: one dataclass carried by every generation path.

    args = GenerationArgs(max_new_bytes=300, temperature=0.8, top_k=50, seed=1, stop=(b"\\n\\n",))

temperature 0 is greedy; top_k / top_p cut the distribution before sampling (see sampling.py);
the same seed gives the same bytes; a row stops at EOS, at the first occurrence of a stop
string (cut before it), or after max_new_bytes bytes. `check()` raises UserError for values no
path can use, so a command can check its arguments before loading a model.
"""
from __future__ import annotations

from dataclasses import dataclass

from blt.errors import UserError
from blt.inference.sampling import check_sampling_args


@dataclass(frozen=True)
class GenerationArgs:
    max_new_bytes: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop: tuple[bytes, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(bytes(s) for s in self.stop))

    def check(self) -> "GenerationArgs":
        if self.max_new_bytes < 0:
            raise UserError(f"max-new-bytes must be >= 0, got {self.max_new_bytes}")
        check_sampling_args(self.temperature, self.top_k, self.top_p)
        if not -(2**63) <= self.seed < 2**64:  # what torch.Generator.manual_seed takes
            raise UserError(f"seed must be in [-2**63, 2**64), got {self.seed}")
        if any(len(s) == 0 for s in self.stop):
            raise UserError("a stop string must not be empty")
        return self
