"""Next-byte entropies of whole documents, splits and corpora, with the windowed scorer.

- `compute_entropies(model, docs)`: every byte of every document and its EOS, each document run
  from BOS (the context resets at document boundaries), under the model's sliding window
  (`scorer.byte_lm_scores`): batched, with per-row positions and masks, so a row's values are
  the same whether it is computed alone or beside other rows. (The reference implementation
  flattened batches and leaked bytes across rows; this one cannot.)
- `split_entropies(model, split)`: the same, gathered into a split's SplitEntropies.
- `write_entropy_file(model, corpus, out_dir, provenance)`: every split of a corpus into an
  entropy file (blt.patching.entropy_file), streamed job by job into its memory map; under
  torchrun each rank computes and writes its share.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from blt.data.corpus import ByteSplit, Corpus
from blt.evaluation.scorer import byte_lm_scores, iter_byte_lm
from blt.patching.entropy_file import EntropyFileWriter, SplitEntropies, corpus_fingerprint


def compute_entropies(model, docs: list, batch_size: int = 16, chunk: int | None = None) -> list[np.ndarray]:
    """Entropies of every document: float32 arrays of len(doc) + 1.

    Entry i < len(doc) is the entropy predicting byte i given BOS and bytes < i; the last entry
    predicts the document's EOS.
    """
    return byte_lm_scores(model, docs, batch_size, "entropy", eos=True, chunk=chunk)


def split_entropies(model, split: ByteSplit, batch_size: int = 16) -> SplitEntropies:
    """compute_entropies over a split's documents, gathered into a SplitEntropies (float32)."""
    data = np.zeros(split.n_bytes, dtype=np.float32)
    eos = []
    docs = [d for d in split.documents() if len(d)]
    starts = [int(a) for a, b in zip(split.docs[:-1], split.docs[1:]) if b > a]
    for start, ent in zip(starts, compute_entropies(model, docs, batch_size)):
        data[start : start + len(ent) - 1] = ent[:-1]
        eos.append(ent[-1])
    return SplitEntropies(data, np.asarray(eos, dtype=np.float32))


def write_entropy_file(model, corpus: Corpus, out_dir, provenance: dict, batch_size: int = 16,
                       progress: bool = True) -> dict:
    """Compute the entropies of every split of a corpus into out_dir; return the stats.
    provenance (the entropy run, its checkpoint and config) goes into entropies.json.

    Under torch.distributed (torchrun) every rank must call it: each computes its share of every
    split's scoring jobs (about 1/world of the bytes, whole jobs of 4 x context predictions, so
    one long document is shared too) and writes them into the one file (EntropyFileWriter)."""
    was_training = model.training
    model.eval()
    splits = {name: corpus.split(name) for name in corpus.split_names}
    keeps = {name: [(int(a), int(b)) for a, b in zip(sp.docs[:-1], sp.docs[1:]) if b > a]
             for name, sp in splits.items()}
    writer = EntropyFileWriter(out_dir, len(corpus.data), sum(len(k) for k in keeps.values()))
    share = (writer.rank, writer.world)
    eos_ranges, eos_at = {}, 0
    total, n_done = 0.0, 0
    t0 = time.time()
    bar = tqdm(total=len(corpus.data) // writer.world, unit="B", unit_scale=True, desc="entropies",
               disable=not progress or writer.rank != 0 or not sys.stderr.isatty())
    for name, split in splits.items():
        lo, _ = corpus.split_range(name)
        keep = keeps[name]
        docs = [split.data[a:b] for a, b in keep]
        for d, c, values in iter_byte_lm(model, docs, batch_size, "entropy", eos=True, share=share):
            n = len(docs[d])
            n_bytes = min(len(values), n - c)  # the EOS value, if any, is the last one
            at = lo + keep[d][0] + c
            writer.data[at : at + n_bytes] = values[:n_bytes]
            if c + len(values) > n:
                writer.eos[eos_at + d] = values[-1]
            total += float(values[:n_bytes].sum(dtype=np.float64))
            n_done += n_bytes
            bar.update(n_bytes)
        eos_ranges[name] = [eos_at, eos_at + len(keep)]
        eos_at += len(keep)
    bar.close()
    model.train(was_training)
    if writer.world > 1:
        sums = torch.tensor([total, n_done], dtype=torch.float64)
        dist.all_reduce(sums)
        total, n_done = sums[0].item(), int(sums[1].item())
    stats = {"bytes": n_done, "mean_entropy": total / max(n_done, 1), "seconds": round(time.time() - t0, 3)}
    if writer.world > 1:
        stats["processes"] = writer.world
    meta = {
        "corpus": corpus_fingerprint(corpus),
        "corpus_name": corpus.name,
        **provenance,
        "alignment": "ent[b] = entropy (nats) of the distribution predicting byte b from BOS and earlier bytes",
        "eos_ranges": eos_ranges,
        "stats": stats,
    }
    writer.finish(meta)
    return stats
