"""Next-byte entropies from an entropy model (an ordinary byte-level run), online and offline.

Alignment (see `patchers.py`): entropies[q] is the entropy, in nats, of the entropy model's
distribution that PREDICTS position q, computed from positions < q only. Position 0 and BOS
positions carry 0 (never used: BOS and the byte after it always start a patch).

- `prediction_entropies(logits)`: (B, T, V) -> (B, T+1), shifting by one into that alignment.
- `online_entropies(model, ids)`: one forward over a (B, T+1) window of documents that each
  begin with BOS (generation, evaluation). Rows never see each other.
- `compute_entropies(model, docs)` (`split_entropies(model, split)` for a whole split): every
  byte of every document and its EOS, each document run from BOS (the context resets at
  document boundaries), under the model's sliding window (`ByteLM.iter_per_byte`): batched,
  with per-row positions and masks, so a row's values are the same whether it is computed
  alone or beside other rows. The reference implementation flattened batches and leaked bytes
  across rows; this one cannot.
- The entropy file (`write_entropy_file` / `load_entropy_file`): a directory holding
    entropies.f16      float16 (N,) aligned with the corpus bytes: ent[b] predicts byte b
    entropies_eos.f16  float16 (D,) the entropy predicting each document's EOS
    entropies.json     corpus fingerprint, entropy run, model config, stats
  Documents are those of each split (a document cut by a split boundary restarts at the cut,
  exactly as the training stream lays it out), so the corpus's split fractions are part of the
  fingerprint. The EOS entropies are stored because the sampler must give an EOS position the
  value the entropy model would give online: a 0 there would let starts[q] depend on ids[q].
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from blt.data.corpus import ByteSplit, Corpus
from blt.errors import UserError
from blt.models.masks import document_ids, window_mask
from blt.vocab import BOS_ID

DATA_FILE, EOS_FILE, META_FILE = "entropies.f16", "entropies_eos.f16", "entropies.json"


def prediction_entropies(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits[:, q-1]) at q; 0 at q = 0. (B, T, V) -> (B, T+1)"""
    logp = F.log_softmax(logits.float(), dim=-1)
    h = -(logp.exp() * logp).sum(-1)  # (B, T)
    return F.pad(h, (1, 0))


@torch.no_grad()
def online_entropies(model, ids: torch.Tensor) -> torch.Tensor:
    """Entropies for a (B, T+1) window whose documents begin with BOS. (B, T+1)

    The model sees ids[:, :-1] under its own rules: causal, one document per BOS, at most
    W = min(window, context) keys per query (the span it was trained with).
    """
    x = ids[:, :-1]  # (B, T)
    B, T = x.shape
    W = min(model.cfg.window or model.cfg.context, model.cfg.context)
    pos = torch.arange(T, device=ids.device).expand(B, T)
    docs = document_ids(x, BOS_ID)
    logits = model(x, positions=pos, mask=window_mask(pos, W, docs))  # (B, T, V)
    return prediction_entropies(logits).masked_fill(ids == BOS_ID, 0.0)


def compute_entropies(model, docs: list, batch_size: int = 16, chunk: int | None = None) -> list[np.ndarray]:
    """Entropies of every document: float32 arrays of len(doc) + 1.

    Entry i < len(doc) is the entropy predicting byte i given BOS and bytes < i; the last entry
    predicts the document's EOS.
    """
    was_training = model.training
    model.eval()
    out = model.per_byte(docs, "entropy", batch_size, chunk, eos=True)
    model.train(was_training)
    return out


@dataclass
class SplitEntropies:
    """A split's entropies: `data` aligned with split.data, `eos` one per non-empty document."""

    data: np.ndarray  # (n,) float16 or float32
    eos: np.ndarray  # (D,) in document order, empty documents skipped (as VirtualStream does)


def split_entropies(model, split: ByteSplit, batch_size: int = 16, chunk: int | None = None) -> SplitEntropies:
    """compute_entropies over a split's documents, gathered into a SplitEntropies (float32)."""
    data = np.zeros(split.n_bytes, dtype=np.float32)
    eos = []
    docs = [d for d in split.documents() if len(d)]
    starts = [int(a) for a, b in zip(split.docs[:-1], split.docs[1:]) if b > a]
    for start, ent in zip(starts, compute_entropies(model, docs, batch_size, chunk)):
        data[start : start + len(ent) - 1] = ent[:-1]
        eos.append(ent[-1])
    return SplitEntropies(data, np.asarray(eos, dtype=np.float32))


def corpus_fingerprint(corpus: Corpus) -> dict:
    """What the entropies depend on: the bytes, the document offsets and the split cuts."""
    docs_hash = hashlib.sha256(np.ascontiguousarray(corpus.docs, dtype=np.int64).tobytes()).hexdigest()
    return {**corpus.fingerprint, "docs_sha256": docs_hash, "fractions": list(corpus.fractions)}


def write_entropy_file(
    entropy_run_dir, corpus: Corpus, out_dir, batch_size: int = 16, device: str = "cpu", progress: bool = True
) -> dict:
    """Compute entropies for every split of a corpus into out_dir; return the summary.

    Data files are written under temporary names and renamed; entropies.json goes last, so a
    directory with entropies.json always holds complete data.
    """
    from tqdm import tqdm

    from blt.checkpoint import latest_checkpoint, load_model
    from blt.config import to_dict

    model, cfg = load_model(entropy_run_dir, device)
    if cfg.model_kind != "byte":
        raise UserError(f"{entropy_run_dir} is a '{cfg.model_kind}' run; an entropy model is a byte-level run")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    N = len(corpus.data)
    tmp_data = out_dir / f".{DATA_FILE}.tmp{os.getpid()}"
    tmp_eos = out_dir / f".{EOS_FILE}.tmp{os.getpid()}"
    ent = np.memmap(tmp_data, dtype=np.float16, mode="w+", shape=(N,))
    eos_all, eos_ranges = [], {}
    total, n_done = 0.0, 0
    t0 = time.time()
    bar = tqdm(total=N, unit="B", unit_scale=True, desc="entropies", disable=not progress or not sys.stderr.isatty())
    for name in corpus.split_names:
        lo, _ = corpus.split_range(name)
        split = corpus.split(name)
        keep = [(int(a), int(b)) for a, b in zip(split.docs[:-1], split.docs[1:]) if b > a]
        docs = [split.data[a:b] for a, b in keep]
        eos = np.zeros(len(docs), dtype=np.float32)
        for d, c, values in model.iter_per_byte(docs, "entropy", batch_size, None, eos=True):
            n = len(docs[d])
            n_bytes = min(len(values), n - c)  # the EOS value, if any, is the last one
            at = lo + keep[d][0] + c
            ent[at : at + n_bytes] = values[:n_bytes]
            if c + len(values) > n:
                eos[d] = values[-1]
            total += float(values[:n_bytes].sum(dtype=np.float64))
            n_done += n_bytes
            bar.update(n_bytes)
        eos_ranges[name] = [len(eos_all), len(eos_all) + len(eos)]
        eos_all.extend(eos.tolist())
    bar.close()
    ent.flush()
    del ent
    np.asarray(eos_all, dtype=np.float16).tofile(tmp_eos)
    stats = {"bytes": n_done, "mean_entropy": total / max(n_done, 1), "seconds": round(time.time() - t0, 3)}
    meta = {
        "corpus": corpus_fingerprint(corpus),
        "corpus_name": corpus.name,
        "entropy_run": str(Path(entropy_run_dir).resolve()),
        "checkpoint": latest_checkpoint(entropy_run_dir).name,
        "model": to_dict(cfg.model),
        "alignment": "ent[b] = entropy (nats) of the distribution predicting byte b from BOS and earlier bytes",
        "eos_ranges": eos_ranges,
        "stats": stats,
    }
    (out_dir / META_FILE).unlink(missing_ok=True)  # an older file must never describe the new data
    os.replace(tmp_data, out_dir / DATA_FILE)
    os.replace(tmp_eos, out_dir / EOS_FILE)
    tmp_meta = out_dir / f".{META_FILE}.tmp{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, out_dir / META_FILE)
    return stats


@dataclass
class EntropyFile:
    data: np.ndarray  # (N,) float16 memmap aligned with corpus.data
    eos: np.ndarray  # (D_all,) float16, the splits' documents in order
    meta: dict
    corpus: Corpus

    def split(self, name: str) -> SplitEntropies:
        lo, hi = self.corpus.split_range(name)
        a, b = self.meta["eos_ranges"][name]
        return SplitEntropies(self.data[lo:hi], self.eos[a:b])


def load_entropy_file(out_dir, corpus: Corpus) -> EntropyFile:
    """Open an entropy directory written for this corpus (UserError if it was not)."""
    out_dir = Path(out_dir)
    meta_path = out_dir / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{out_dir} holds no entropy file (no {META_FILE}); run `blt entropies` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("corpus") != corpus_fingerprint(corpus):
        raise UserError(
            f"the entropies in {out_dir} were computed for another corpus or split "
            f"({meta.get('corpus_name')}); recompute them with `blt entropies`"
        )
    N = len(corpus.data)
    data = np.memmap(out_dir / DATA_FILE, dtype=np.float16, mode="r")
    eos = np.fromfile(out_dir / EOS_FILE, dtype=np.float16)
    if len(data) != N or len(eos) != max(b for _, b in meta["eos_ranges"].values()):
        raise UserError(
            f"the entropy files in {out_dir} do not match the corpus size; recompute them with `blt entropies`"
        )
    return EntropyFile(data, eos, meta, corpus)
