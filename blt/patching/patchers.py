"""Patchers: where patches begin, decided causally from bytes and the entropy model's signals.

THE CONVENTION (the BLT network, the data loader, generation and these patchers share it):

- A window of ids has T+1 positions: ids (B, T+1); model inputs are ids[:, :-1] and targets
  ids[:, 1:]. Patching covers all T+1 positions, so the patch of the next target is known too.
- `starts` (B, T+1) bool: starts[:, q] is True when position q begins a new patch. It is
  always True at q = 0 and q = 1 (position 0 is BOS or the window start; the first real byte
  starts its own patch), at every q where ids[q] == BOS and where ids[q-1] == BOS (a document
  restarts patching). The patch of position q is cumsum(starts)[q] - 1 (`patch_ids`).
- `entropies` (B, T+1) float: the entropy model's SIGNAL at each position, the one the patcher
  declares (`Patcher.signal`), computed from positions < q only (blt.patching.entropy):
    'entropy'    entropies[:, q] is the entropy (nats) of the distribution that PREDICTS position
                 q (H(softmax(logits[:, q-1]))); an EOS position carries the entropy predicting it;
    'surprisal'  entropies[:, q] is the surprisal (nats, -log p) of the byte at q-1 under the
                 distribution that predicted it; 0 where ids[q-1] is BOS (a document's first
                 byte) and at q <= 1 (nothing before the window is known).
  The value at q = 0 is unused (0), BOS positions carry 0 (a forced start either way).
- Rules for q >= 2, on top of the forced starts:
    entropy           entropies[q] > theta                          (global threshold)
    relative          entropies[q] - entropies[q-1] > theta_r       (approximate monotonic)
    entropy_relative  both of the above
    equal_info        the surprisal of the open patch's bytes, entropies[last+1] + ... +
                      entropies[q] (last: the patch's first position), has reached `budget`:
                      a patch closes once it holds `budget` nats of information (the
                      equal-information windows of Lester et al., 2024). Sums are prefix sums
                      of the row in float64 (start when C[q] >= C[last] + budget); negative
                      values count as 0
    static            every k bytes, counting from the first byte of the document or window
    byte              always (one byte per patch: a plain byte-level model)
    space             ids[q-1] is space-like and ids[q-2] is not (SpaceByte): a byte that is not
                      [0-9A-Za-z] and not a UTF-8 continuation byte (0x80-0xBF) is space-like,
                      BOS/EOS/PAD too; a run of space-like bytes starts only one patch
    bpe               the open patch (the bytes since the last start, all before q) is not a
                      proper prefix of any token of a BPE vocabulary. This is the CAUSAL form of
                      BPE patching: a greedy longest match that never looks at byte q itself.
                      The paper's segmentation by the tokenizer looks ahead (whether a token
                      ends at q depends on bytes >= q) and would leak the future into training.
  max_patch_length L (any patcher): a patch that has reached L positions is closed, i.e. q
  starts a patch when q - (last start before q) >= L; decided from earlier positions only.
- CAUSALITY: every start at q depends only on ids[:q] and entropies[:q+1], and entropies[q]
  itself depends only on ids[:q]. Changing byte j therefore never moves starts[:j+1].

Patchers are stateless and vectorised over the batch; the BPE rule (a trie walk) is a
sequential scan over positions for all rows at once; the equal-information rule follows each
row's chain of patches by pointer doubling (O(T log T) vectorised work, no loop over patches).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from blt.config import must
from blt.errors import UserError
from blt.patching.bpe import BPETrie
from blt.vocab import BOS_ID, VOCAB_SIZE

PatcherKind = Literal["entropy", "relative", "entropy_relative", "equal_info", "static", "byte", "space", "bpe"]
KINDS = ("entropy", "relative", "entropy_relative", "equal_info", "static", "byte", "space", "bpe")
# the entropy model's signal each kind reads (the others read none): blt.patching.entropy
KIND_SIGNAL = {"entropy": "entropy", "relative": "entropy", "entropy_relative": "entropy", "equal_info": "surprisal"}
ENTROPY_KINDS = tuple(KIND_SIGNAL)  # the kinds that need an entropy model
# the threshold calibration searches for a target mean patch size (blt.patching.calibration)
CALIBRATED = {"entropy": "theta", "relative": "theta_r", "entropy_relative": "theta", "equal_info": "budget"}


@dataclass
class PatcherConfig:
    kind: PatcherKind = "entropy"
    theta: float | None = None  # global entropy threshold (nats); None = calibrate to target_patch_size
    theta_r: float | None = None  # relative threshold (nats); None = calibrate ('relative' kind)
    budget: float | None = None  # equal_info: surprisal (nats) that closes a patch; None = calibrate
    patch_size: int = 4  # static k
    max_patch_length: int | None = None  # split longer patches; None = unbounded
    target_patch_size: float = 4.5  # mean bytes per patch that calibration aims at
    bpe_vocab_size: int = 4096  # tokens (256 single bytes included) of the causal-BPE vocabulary
    bpe_sample_bytes: int = 10_000_000  # training bytes the BPE vocabulary is learned from
    entropy_run: str | None = None  # run directory of the entropy model (a byte-level run)

    def validate(self):
        must(self.kind in KINDS, "kind", f"one of {', '.join(KINDS)}", self.kind)
        must(self.patch_size >= 1, "patch_size", "at least 1", self.patch_size)
        must(self.max_patch_length is None or self.max_patch_length >= 1, "max_patch_length", "at least 1 or null",
             self.max_patch_length)
        must(1 <= self.target_patch_size < math.inf, "target_patch_size", "a finite number >= 1",
             self.target_patch_size)
        for name in ("theta", "theta_r"):
            value = getattr(self, name)
            must(value is None or math.isfinite(value), name, "a finite number or null", value)
        must(self.bpe_vocab_size >= 256, "bpe_vocab_size", "at least 256", self.bpe_vocab_size)
        must(self.bpe_sample_bytes >= 1, "bpe_sample_bytes", "at least 1", self.bpe_sample_bytes)

    @property
    def signal(self) -> str | None:
        """The entropy model's signal this kind reads ('entropy', 'surprisal'), or None."""
        return KIND_SIGNAL.get(self.kind)

    @property
    def needs_entropy(self) -> bool:
        """True when the patching needs an entropy model (for whichever signal)."""
        return self.signal is not None

    @property
    def needs_calibration(self) -> bool:
        """True when the threshold calibration searches is not set yet."""
        return self.kind in CALIBRATED and getattr(self, CALIBRATED[self.kind]) is None


def _space_like_table() -> torch.Tensor:
    table = torch.ones(VOCAB_SIZE, dtype=torch.bool)  # specials (BOS/EOS/PAD) are space-like
    for b in range(256):
        alnum = chr(b).isascii() and chr(b).isalnum()
        continuation = 0x80 <= b <= 0xBF
        table[b] = not (alnum or continuation)
    return table


SPACE_LIKE = _space_like_table()  # (V,) bool


def forced_starts(ids: torch.Tensor) -> torch.Tensor:
    """Starts every patcher keeps: q = 0, q = 1, BOS, and the position after a BOS. (B, T+1)"""
    is_bos = ids == BOS_ID
    forced = is_bos.clone()
    forced[:, 1:] |= is_bos[:, :-1]
    forced[:, :2] = True
    return forced


def _last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """For each q, the largest p <= q with mask[p] (mask[:, 0] must be True). (B, T+1)"""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.zeros_like(idx)).cummax(dim=1).values


def split_long_patches(starts: torch.Tensor, max_len: int | None) -> torch.Tensor:
    """Close every patch after max_len positions. Causal: uses earlier starts only.

    Splitting a patch of n positions at every max_len-th position is what the sequential rule
    "start when q - last_start >= max_len" produces, so one cummax does it for all rows.
    """
    if max_len is None:
        return starts
    idx = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    offset = idx - _last_true_index(starts)  # (B, T+1) distance from the patch's first position
    return starts | ((offset > 0) & (offset % max_len == 0))


class Patcher:
    """One interface: starts(ids (B, T+1), entropies (B, T+1) | None) -> (B, T+1) bool.

    `signal` names what the entropies argument holds ('entropy' or 'surprisal', see the module
    docstring); None for patchers that read no entropy model."""

    signal: str | None = None

    def __init__(self, max_patch_length: int | None = None):
        self.max_patch_length = max_patch_length

    @property
    def needs_entropy(self) -> bool:
        """True when the rule reads a signal of the entropy model (which must be attached)."""
        return self.signal is not None

    def rule(self, ids: torch.Tensor, entropies: torch.Tensor | None) -> torch.Tensor:
        """The patcher's own starts (only q >= 2 matter; forced starts are added). (B, T+1)"""
        raise NotImplementedError

    def check_inputs(self, ids: torch.Tensor, entropies: torch.Tensor | None) -> None:
        if ids.dim() != 2:
            raise ValueError(f"ids must be (B, T+1), got shape {tuple(ids.shape)}")
        if self.needs_entropy:
            if entropies is None:
                raise ValueError(f"{type(self).__name__} needs the entropy model's {self.signal} values")
            if entropies.shape != ids.shape:
                raise ValueError(f"entropies {tuple(entropies.shape)} do not match ids {tuple(ids.shape)}")

    def starts(self, ids: torch.Tensor, entropies: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(ids, entropies)
        starts = forced_starts(ids) | self.rule(ids, entropies)
        return split_long_patches(starts, self.max_patch_length)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if isinstance(v, (int, float, type(None))))
        return f"{type(self).__name__}({fields})"


class EntropyPatcher(Patcher):
    """Global threshold: q starts a patch when entropies[q] > theta."""

    signal = "entropy"

    def __init__(self, theta: float, max_patch_length: int | None = None):
        super().__init__(max_patch_length)
        self.theta = float(theta)

    def rule(self, ids, entropies):
        return entropies > self.theta


class RelativeEntropyPatcher(Patcher):
    """Approximate monotonic: q starts a patch when entropies[q] - entropies[q-1] > theta_r."""

    signal = "entropy"

    def __init__(self, theta_r: float, max_patch_length: int | None = None):
        super().__init__(max_patch_length)
        self.theta_r = float(theta_r)

    def rule(self, ids, entropies):
        out = torch.zeros_like(ids, dtype=torch.bool)
        out[:, 1:] = (entropies[:, 1:] - entropies[:, :-1]) > self.theta_r
        return out


class CombinedEntropyPatcher(Patcher):
    """Both rules: entropies[q] > theta and entropies[q] - entropies[q-1] > theta_r."""

    signal = "entropy"

    def __init__(self, theta: float, theta_r: float, max_patch_length: int | None = None):
        super().__init__(max_patch_length)
        self.theta, self.theta_r = float(theta), float(theta_r)

    def rule(self, ids, entropies):
        out = torch.zeros_like(ids, dtype=torch.bool)
        out[:, 1:] = (entropies[:, 1:] - entropies[:, :-1]) > self.theta_r
        return out & (entropies > self.theta)


class EqualInfoPatcher(Patcher):
    """Equal information: a patch closes once the surprisal of its bytes reaches `budget` nats."""

    signal = "surprisal"

    def __init__(self, budget: float, max_patch_length: int | None = None):
        super().__init__(max_patch_length)
        self.budget = float(budget)

    def starts(self, ids, entropies=None):
        # Each start decides the next one, so the rule is a chain: next[a] is where the patch
        # opened at a closes (its budget met, a forced start, or max_patch_length reached).
        # next is non-decreasing in a, and the chain from 0 is found by pointer doubling.
        self.check_inputs(ids, entropies)
        B, T1 = ids.shape
        dev = ids.device
        idx = torch.arange(T1, device=dev).expand(B, T1)
        prefix = entropies.double().clamp(min=0).cumsum(1)  # (B, T+1) C[q]: non-decreasing
        spent = torch.searchsorted(prefix, prefix + self.budget)  # (B, T+1) first q with C[q] >= C[a] + budget
        beyond = torch.full((B, 1), T1, device=dev)  # the end: a patch running to it never closes
        forced_at = torch.where(forced_starts(ids), idx, T1)
        next_forced = torch.cat([forced_at[:, 1:].flip(1).cummin(1).values.flip(1), beyond], 1)  # (B, T+1)
        nxt = torch.minimum(spent, next_forced)
        if self.max_patch_length is not None:
            nxt = torch.minimum(nxt, idx + self.max_patch_length)
        nxt = torch.cat([torch.maximum(nxt, idx + 1), beyond], 1)  # (B, T+2); the end maps to itself
        at = torch.zeros(B, T1, dtype=torch.long, device=dev)  # (B, K) the k-th start of each row, K = T+1
        k = torch.arange(T1, device=dev)
        jump = nxt  # nxt applied 2**j times
        for j in range(max(1, T1.bit_length())):
            at = torch.where(((k >> j) & 1).bool(), jump.gather(1, at), at)
            jump = jump.gather(1, jump)
        out = torch.zeros(B, T1 + 1, dtype=torch.bool, device=dev)
        return out.scatter_(1, at, True)[:, :T1]


class StaticPatcher(Patcher):
    """MegaByte: a patch every k bytes, counting from the first byte of the document/window."""

    def __init__(self, patch_size: int, max_patch_length: int | None = None):
        super().__init__(max_patch_length)
        self.patch_size = int(patch_size)

    def rule(self, ids, entropies):
        first_byte = torch.zeros_like(ids, dtype=torch.bool)  # q == 1 or just after a BOS
        first_byte[:, 1:] = ids[:, :-1] == BOS_ID
        first_byte[:, :2] = True
        idx = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        return (idx - _last_true_index(first_byte)) % self.patch_size == 0


class BytePatcher(Patcher):
    """One byte per patch."""

    def rule(self, ids, entropies):
        return torch.ones_like(ids, dtype=torch.bool)


class SpacePatcher(Patcher):
    """SpaceByte: q starts a patch when ids[q-1] is space-like and ids[q-2] is not."""

    def rule(self, ids, entropies):
        space = SPACE_LIKE.to(ids.device)[ids.clamp(0, VOCAB_SIZE - 1)]  # (B, T+1)
        out = torch.zeros_like(space)
        out[:, 2:] = space[:, 1:-1] & ~space[:, :-2]
        return out


class BPEPatcher(Patcher):
    """Causal BPE: q starts a patch when the open patch is no proper prefix of any token."""

    def __init__(self, tokens: list[bytes], max_patch_length: int | None = None):
        super().__init__(max_patch_length)
        self.trie = BPETrie(tokens)
        self.vocab_size = len(tokens)

    def starts(self, ids, entropies=None):
        # max_patch_length must reset the trie walk, so it lives inside the scan
        ids_np = ids.detach().cpu().numpy()
        B, T1 = ids_np.shape
        forced = forced_starts(ids).cpu().numpy()
        out = np.ones((B, T1), dtype=bool)
        node = np.zeros(B, dtype=np.int64)  # trie node of the open patch (ids[last:q])
        last = np.zeros(B, dtype=np.int64)
        L = self.max_patch_length
        for q in range(1, T1):
            prev = ids_np[:, q - 1]
            alive = (node >= 0) & (prev < 256)
            node = np.where(alive, self.trie.next[np.maximum(node, 0), np.minimum(prev, 255)], -1)
            start = forced[:, q] | (node < 0) | ~self.trie.has_child[np.maximum(node, 0)]
            if L is not None:
                start |= (q - last) >= L
            out[:, q] = start
            node = np.where(start, 0, node)
            last = np.where(start, q, last)
        return torch.from_numpy(out).to(ids.device)


def build_patcher(cfg: PatcherConfig, bpe_vocab: list[bytes] | None = None) -> Patcher:
    """The patcher a config describes. Thresholds must be set (calibrate them first)."""
    L = cfg.max_patch_length
    need_theta = cfg.kind in ("entropy", "entropy_relative") and cfg.theta is None
    need_theta_r = cfg.kind in ("relative", "entropy_relative") and cfg.theta_r is None
    need_budget = cfg.kind == "equal_info" and cfg.budget is None
    if need_theta or need_theta_r or need_budget:
        missing = "theta" if need_theta else "theta_r" if need_theta_r else "budget"
        raise UserError(
            f"patcher '{cfg.kind}' needs {missing}: set it or calibrate it to a target patch size first"
        )
    if cfg.kind == "entropy":
        return EntropyPatcher(cfg.theta, L)
    if cfg.kind == "relative":
        return RelativeEntropyPatcher(cfg.theta_r, L)
    if cfg.kind == "entropy_relative":
        return CombinedEntropyPatcher(cfg.theta, cfg.theta_r, L)
    if cfg.kind == "equal_info":
        return EqualInfoPatcher(cfg.budget, L)
    if cfg.kind == "static":
        return StaticPatcher(cfg.patch_size, L)
    if cfg.kind == "byte":
        return BytePatcher(L)
    if cfg.kind == "space":
        return SpacePatcher(L)
    if cfg.kind == "bpe":
        if bpe_vocab is None:
            raise UserError("patcher 'bpe' needs a BPE vocabulary (train one with blt.patching.bpe)")
        return BPEPatcher(bpe_vocab, L)
    raise UserError(f"unknown patcher kind '{cfg.kind}'")


def patch_ids(starts: torch.Tensor) -> torch.Tensor:
    """Index of the patch holding each position: cumsum(starts) - 1. (B, T+1) long"""
    return starts.long().cumsum(dim=1) - 1


def patch_lengths(starts: torch.Tensor) -> torch.Tensor:
    """Positions per patch, zero-padded to the row with most patches. (B, P); rows sum to T+1"""
    pid = patch_ids(starts)
    P = int(pid[:, -1].max()) + 1
    lengths = torch.zeros(starts.shape[0], P, dtype=torch.long, device=starts.device)
    return lengths.scatter_add_(1, pid, torch.ones_like(pid))


def mean_patch_size(starts: torch.Tensor, mask: torch.Tensor) -> float:
    """Real bytes per patch: (number of masked positions) / (number of patches holding one).

    mask (B, T+1) marks the real bytes (e.g. `ids < 256`); patches holding only BOS, EOS or
    PAD do not count.
    """
    n_bytes = int(mask.sum())
    if n_bytes == 0:
        return float("nan")
    pid = patch_ids(starts)
    real = torch.zeros(starts.shape[0], int(pid[:, -1].max()) + 1, device=starts.device)  # (B, P)
    real.scatter_add_(1, pid, mask.float())
    return n_bytes / int((real > 0).sum())
