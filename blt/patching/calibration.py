"""Pick an entropy threshold (or a surprisal budget) for a target mean patch size, on held-out data.

Mean patch size = (number of real bytes) / (number of patches they form): BOS, EOS and PAD
are not bytes, and a patch holding none of the real bytes does not count. For the global
rule the size grows monotonically with theta (fewer positions clear a higher bar), for the
relative rule with theta_r, and with max_patch_length too (merging two patches never adds
splits). For the equal-information rule it grows with the budget: where a patch closes is a
non-decreasing function of where it opened and of the budget, so a larger budget puts every
k-th start at or after where it was. Bisection on the threshold finds it. The size is a step function of the threshold
(one step per distinct entropy value), so the search stops within `tol` (1%) of the target
when it can and otherwise returns the closest size it met.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from blt.errors import UserError
from blt.patching.patchers import CALIBRATED, PatcherConfig, build_patcher, mean_patch_size
from blt.vocab import BOS_ID, EOS_ID


def calibration_rows(docs: list, doc_entropies: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents laid out as one row [BOS doc (EOS)]... with their entropies. (1, N) each

    doc_entropies[i] holds len(docs[i]) values, or len + 1 with the EOS entropy last (the form
    `compute_entropies` returns); documents restart patching at every BOS.
    """
    ids, ent = [], []
    for doc, h in zip(docs, doc_entropies):
        if len(h) not in (len(doc), len(doc) + 1):
            raise ValueError(f"a document of {len(doc)} bytes came with {len(h)} entropies")
        tail = [EOS_ID] if len(h) == len(doc) + 1 else []
        ids.append(np.concatenate([[BOS_ID], np.asarray(doc, dtype=np.int64), tail]))
        ent.append(np.concatenate([[0.0], np.asarray(h, dtype=np.float32)]))
    return (
        torch.from_numpy(np.concatenate(ids).astype(np.int64))[None],
        torch.from_numpy(np.concatenate(ent).astype(np.float32))[None],
    )


def calibrate_threshold(
    kind: str,
    entropies: torch.Tensor,
    ids: torch.Tensor,
    target_mean: float = 4.5,
    max_patch_length: int | None = None,
    theta_r: float | None = None,
    tol: float = 0.01,
    max_iter: int = 100,
) -> tuple[float, float]:
    """(threshold, achieved mean patch size) for entropies/ids (B, T+1) of held-out documents
    (entropies: the kind's signal, blt.patching.entropy).

    kind 'entropy' searches theta, 'relative' searches theta_r, 'entropy_relative' searches
    theta with theta_r held at the given value, 'equal_info' searches the surprisal budget.
    """
    if kind not in CALIBRATED:
        raise UserError(f"only entropy and equal_info patchers have a threshold to calibrate, not '{kind}'")
    if kind == "entropy_relative" and theta_r is None:
        raise UserError("calibrating 'entropy_relative' searches theta and needs theta_r set")
    real = ids < 256
    if not bool(real.any()):
        raise UserError("calibration needs at least one held-out byte")
    # thresholds below lo start a patch wherever the rule can, above hi nowhere
    if kind == "equal_info":
        lo, hi = -1.0, float(entropies.double().clamp(min=0).sum()) + 1.0
    else:
        score = entropies if kind != "relative" else entropies[:, 1:] - entropies[:, :-1]
        lo, hi = float(score.min()) - 1.0, float(score.max()) + 1.0

    def size(value: float) -> float:
        fields = {"theta_r": theta_r, CALIBRATED[kind]: value}  # the searched field wins
        cfg = PatcherConfig(kind=kind, max_patch_length=max_patch_length, **fields)
        return mean_patch_size(build_patcher(cfg).starts(ids, entropies), real)

    size_lo, size_hi = size(lo), size(hi)
    if not size_lo <= target_mean <= size_hi:
        raise UserError(
            f"a mean patch size of {target_mean} is out of reach for '{kind}' patching here: "
            f"thresholds give between {size_lo:.3f} and {size_hi:.3f} bytes per patch on the held-out data"
        )
    best = min(((lo, size_lo), (hi, size_hi)), key=lambda p: abs(p[1] - target_mean))
    for _ in range(max_iter):
        if abs(best[1] / target_mean - 1) <= tol:
            break
        mid = (lo + hi) / 2
        if mid in (lo, hi):  # the interval is one float wide: a step of the size function
            break
        m = size(mid)
        if abs(m - target_mean) < abs(best[1] - target_mean):
            best = (mid, m)
        if m < target_mean:
            lo = mid
        else:
            hi = mid
    return best


def calibrate_config(
    cfg: PatcherConfig, docs: list, doc_entropies: list, target_mean: float | None = None, bpe_vocab=None
) -> tuple[PatcherConfig, float]:
    """cfg with its searched threshold set for target_mean (default cfg.target_patch_size), and
    the achieved mean patch size; doc_entropies hold the kind's signal. Patchers without a
    threshold come back unchanged with their size."""
    target = cfg.target_patch_size if target_mean is None else target_mean
    ids, ent = calibration_rows(docs, doc_entropies)
    if cfg.kind not in CALIBRATED:
        return cfg, mean_patch_size(build_patcher(cfg, bpe_vocab).starts(ids, ent), ids < 256)
    value, achieved = calibrate_threshold(cfg.kind, ent, ids, target, cfg.max_patch_length, cfg.theta_r)
    return dataclasses.replace(cfg, **{CALIBRATED[cfg.kind]: value}), achieved
