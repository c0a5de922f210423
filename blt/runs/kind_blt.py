"""model_kind 'blt': the Byte Latent Transformer, and everything its patcher needs.

Resolved once before the first step and stored in the run (a resumed run recomputes nothing):
1. The entropy model (patching.entropy_run, a byte-level run) for entropy patchers: its
   architecture is copied into cfg.entropy_model, its weights go into the BLT (frozen), so the
   BLT checkpoint carries them and the run rebuilds alone.
2. The corpus's entropy file, <run>/entropies/, computed with that model (every rank its share
   of the corpus): training windows read their boundaries' entropies (or surprisals, for
   equal-information patching) from it. A file without the patcher's signal is recomputed.
3. Thresholds left null are calibrated on the VALIDATION split (held-out bytes) so the mean
   patch size hits patching.target_patch_size; the value and the size achieved are written
   into config.yaml (the resolved config) and <run>/patching.json.
4. Causal-BPE patching: a vocabulary learned from the training split, <run>/bpe_vocab.json.
One input position is one byte; a step's training FLOPs depend on its batch's patch counts
(every row is padded to the longest; the latent packs rows: see flops.blt_flops).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from blt.data.corpus import Corpus
from blt.data.stream import ShardPlan
from blt.errors import UserError
from blt.evaluation.bpb import patch_statistics, split_documents
from blt.evaluation.entropies import write_entropy_file
from blt.evaluation.flops import FlopReport, blt_flops
from blt.files import atomic_write_text, make_directory, print_line
from blt.inference.blt import generate_blt
from blt.models.blt import ByteLatentTransformer
from blt.models.byte_lm import ByteLM
from blt.patching.bpe import load_bpe_vocab, save_bpe_vocab, train_bpe
from blt.patching.calibration import calibrate_config
from blt.patching.entropy_file import load_entropy_file, stored_signals
from blt.patching.patchers import build_patcher
from blt.patching.sampler import PatchedWindowSampler
from blt.runs import layout
from blt.runs.checkpoint import latest_checkpoint, load_weights
from blt.runs.config import RunConfig, load_run_config
from blt.runs.kind_byte import load_byte_run

CALIBRATION_BYTES = 1_000_000  # held-out bytes the threshold is fitted on (at most)


def build(cfg: RunConfig, run_dir: Path | None = None) -> ByteLatentTransformer:
    """The BLT with its patcher (thresholds must be resolved) and, for entropy patchers, an
    entropy model of cfg.entropy_model's shape (weights: the entropy run's or the checkpoint's)."""
    model = ByteLatentTransformer(cfg.blt)
    vocab = None
    if cfg.patching.kind == "bpe":
        if run_dir is None:
            raise UserError("a BLT with BPE patching needs its run directory (bpe_vocab.json)")
        vocab = load_bpe_vocab(Path(run_dir) / layout.BPE_VOCAB)
    patcher = build_patcher(cfg.patching, vocab)
    entropy_model = None
    if patcher.needs_entropy:
        if cfg.entropy_model is None:
            raise UserError("this BLT config names no entropy model (set patching.entropy_run)")
        entropy_model = ByteLM(cfg.entropy_model)
    model.set_patching(patcher, entropy_model)
    return model


def entropy_run_config(cfg: RunConfig) -> RunConfig:
    run = cfg.patching.entropy_run
    if not run:
        raise UserError(f"patcher '{cfg.patching.kind}' needs an entropy model: set patching.entropy_run=RUN_DIR")
    ent = load_run_config(run)
    if ent.model_kind != "byte":
        raise UserError(f"patching.entropy_run {run} is a '{ent.model_kind}' run; it must be a byte-level run")
    return ent


def write_run_entropies(entropy_run, corpus: Corpus, out_dir, batch_size: int = 16, device="cpu",
                        progress: bool = True) -> dict:
    """The entropy file of a corpus, computed with a byte-level run's newest checkpoint."""
    model, cfg = load_byte_run(entropy_run, device)
    provenance = {
        "entropy_run": str(Path(entropy_run).resolve()),
        "checkpoint": latest_checkpoint(entropy_run).name,
        "model": dataclasses.asdict(cfg.model),
    }
    return write_entropy_file(model, corpus, out_dir, provenance, batch_size, progress)


def prepare(cfg: RunConfig, corpus: Corpus, run_dir: Path, env) -> RunConfig:
    """Resolve entropy model, entropies, thresholds and BPE vocabulary; returns the config."""
    make_directory(run_dir)
    p = cfg.patching
    if p.needs_entropy:
        cfg = dataclasses.replace(cfg, entropy_model=entropy_run_config(cfg).model)
        ent_dir = run_dir / layout.ENTROPY_DIR
        missing = p.signal not in stored_signals(ent_dir)
        env.barrier()  # every rank has looked before any rank writes
        if missing:  # every rank computes its share (collective)
            write_run_entropies(p.entropy_run, corpus, ent_dir, device=env.device, progress=cfg.train.progress)
    if p.kind == "bpe" and not (run_dir / layout.BPE_VOCAB).is_file():
        if env.rank == 0:
            vocab = train_bpe(corpus.split("train").data, p.bpe_vocab_size, p.bpe_sample_bytes)
            save_bpe_vocab(vocab, run_dir / layout.BPE_VOCAB)
        env.barrier()
    if p.needs_calibration:
        cfg = dataclasses.replace(cfg, patching=calibrated(cfg, corpus, run_dir))
    return cfg


def calibrated(cfg: RunConfig, corpus: Corpus, run_dir: Path):
    """The patching config with its threshold fitted on held-out (validation) bytes."""
    ents = load_entropy_file(run_dir / layout.ENTROPY_DIR, corpus)
    val = corpus.split("val")
    docs = split_documents(val, CALIBRATION_BYTES)
    val_ents = ents.split("val", cfg.patching.signal)
    doc_ents, offset = [], 0
    for doc in docs:
        doc_ents.append(val_ents.data[offset : offset + len(doc)].astype("float32"))
        offset += len(doc)
    patching, achieved = calibrate_config(cfg.patching, docs, doc_ents)
    info = {
        "kind": patching.kind,
        "theta": patching.theta,
        "theta_r": patching.theta_r,
        "budget": patching.budget,
        "target_patch_size": patching.target_patch_size,
        "calibration_mean_patch_size": achieved,
        "calibration_bytes": int(sum(len(d) for d in docs)),
        "calibration_split": "val",
    }
    atomic_write_text(run_dir / layout.PATCHING, json.dumps(info, indent=1) + "\n")
    print_line(
        f"blt train: calibrated {patching.kind} threshold theta={patching.theta} theta_r={patching.theta_r} "
        f"budget={patching.budget} -> "
        f"mean patch size {achieved:.3f} on {info['calibration_bytes']:,} held-out bytes "
        f"(target {patching.target_patch_size})"
    )
    return patching


def sampler(cfg: RunConfig, corpus: Corpus, run_dir: Path, plan: ShardPlan) -> PatchedWindowSampler:
    """Training batches {'ids', 'targets', 'starts'} for a prepared BLT run."""
    vocab = load_bpe_vocab(run_dir / layout.BPE_VOCAB) if cfg.patching.kind == "bpe" else None
    patcher = build_patcher(cfg.patching, vocab)
    entropies = None
    if patcher.needs_entropy:
        entropies = load_entropy_file(run_dir / layout.ENTROPY_DIR, corpus).split("train", patcher.signal)
    return PatchedWindowSampler(corpus.split("train"), entropies, patcher, cfg.blt.context, cfg.data.batch_size,
                                cfg.train.seed, plan)


def after_init(model, cfg: RunConfig) -> None:
    """A fresh run copies the entropy run's weights into its frozen entropy model."""
    if model.entropy_model is not None:
        load_weights(model.entropy_model, latest_checkpoint(cfg.patching.entropy_run))


def train_flops_per_position(cfg: RunConfig, stats: dict) -> float:
    """The FLOPs executed on the batch the stats describe (blt.models.blt.patch_stats, from
    ByteLatentTransformer.loss or study.measure_patches), padding included: its input positions
    per patch slot of the local models (B*T / patch_slots) and per patch the latent computed
    (B*T / latent_patches)."""
    positions = cfg.data.batch_size * cfg.blt.context
    per_slot = max(positions / max(stats["patch_slots"], 1), 1.0)
    per_latent = max(positions / max(stats["latent_patches"], 1), per_slot)
    return blt_flops(cfg.blt, per_slot, latent_patch_size=per_latent).train_per_byte


def describe(model, cfg: RunConfig, docs: list) -> tuple[dict, FlopReport]:
    """The patcher, its thresholds and the mean patch size it cuts the scored bytes into
    (which is also the patch size the FLOPs per byte are computed with)."""
    p = cfg.patching
    size = patch_statistics(model, docs)["mean_patch_size"]
    extra = {"patcher": p.kind, "theta": p.theta, "theta_r": p.theta_r, "budget": p.budget,
             "target_patch_size": p.target_patch_size, "mean_patch_size": size}
    return extra, blt_flops(cfg.blt, size, cfg.entropy_model)


generate = generate_blt
