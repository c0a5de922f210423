"""Next-byte entropies (and surprisals) of whole documents, splits and corpora, with the windowed scorer.

- `compute_entropies(model, docs)`: every byte of every document and its EOS, each document run
  from BOS (the context resets at document boundaries), under the model's sliding window
  (`scorer.byte_lm_scores`): batched, with per-row positions and masks, so a row's values are
  the same whether it is computed alone or beside other rows. (The reference implementation
  flattened batches and leaked bytes across rows; this one cannot.) `scorer.document_signals`
  gives either signal in the same form.
- `split_entropies(model, split, signal)`: the same, gathered into a split's SplitEntropies.
- `write_entropy_file(model, corpus, out_dir, provenance)`: every split of a corpus into an
  entropy file (blt.patching.entropy_file), both signals from one pass, streamed job by job
  into its memory maps; under torchrun each rank computes and writes its share.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from blt.data.corpus import ByteSplit, Corpus
from blt.evaluation.scorer import byte_lm_scores, document_signals, iter_byte_lm
from blt.patching.entropy_file import EntropyFileWriter, SplitEntropies, corpus_fingerprint


def compute_entropies(model, docs: list, batch_size: int = 16, chunk: int | None = None) -> list[np.ndarray]:
    """Entropies of every document: float32 arrays of len(doc) + 1.

    Entry i < len(doc) is the entropy predicting byte i given BOS and bytes < i; the last entry
    predicts the document's EOS.
    """
    return byte_lm_scores(model, docs, batch_size, "entropy", eos=True, chunk=chunk)


def split_entropies(model, split: ByteSplit, batch_size: int = 16, signal: str = "entropy") -> SplitEntropies:
    """A signal over a split's documents (document_signals), gathered into a SplitEntropies
    (float32)."""
    data = np.zeros(split.n_bytes, dtype=np.float32)
    eos = []
    docs = [d for d in split.documents() if len(d)]
    starts = [int(a) for a, b in zip(split.docs[:-1], split.docs[1:]) if b > a]
    for start, ent in zip(starts, document_signals(model, docs, signal, batch_size)):
        data[start : start + len(ent) - 1] = ent[:-1]
        eos.append(ent[-1])
    return SplitEntropies(data, np.asarray(eos, dtype=np.float32))


def write_entropy_file(model, corpus: Corpus, out_dir, provenance: dict, batch_size: int = 16,
                       progress: bool = True) -> dict:
    """Compute both signals of every split of a corpus into out_dir; return the stats.
    provenance (the entropy run, its checkpoint and config) goes into entropies.json.

    Under torch.distributed (torchrun) every rank must call it: each computes its share of every
    split's scoring jobs (about 1/world of the bytes, whole jobs of 4 x context predictions, so
    one long document is shared too) and writes them into the one file (EntropyFileWriter)."""
    was_training = model.training
    model.eval()
    splits = {name: corpus.split(name) for name in corpus.split_names}
    keeps = {name: [(int(a), int(b)) for a, b in zip(sp.docs[:-1], sp.docs[1:]) if b > a]
             for name, sp in splits.items()}
    eos_ranges, eos_at = {}, 0
    totals = np.zeros(3)  # nats of entropy and of surprisal over the bytes, the bytes
    t0 = time.time()
    with EntropyFileWriter(out_dir, len(corpus.data), sum(len(k) for k in keeps.values())) as writer:
        share = (writer.rank, writer.world)
        bar = tqdm(total=len(corpus.data) // writer.world, unit="B", unit_scale=True, desc="entropies",
                   disable=not progress or writer.rank != 0 or not sys.stderr.isatty())
        ent_data, sur_data = writer.data["entropy"], writer.data["surprisal"]
        ent_eos, sur_eos = writer.eos["entropy"], writer.eos["surprisal"]
        for name, split in splits.items():
            lo, _ = corpus.split_range(name)
            keep = keeps[name]
            docs = [split.data[a:b] for a, b in keep]
            for d, c, values in iter_byte_lm(model, docs, batch_size, "entropy_nats", eos=True, share=share):
                ent, nats = values[:, 0], values[:, 1]
                # predictions c .. c+k-1 of document d: of its bytes, the last one of its EOS
                n, k = len(docs[d]), len(ent)
                n_bytes = min(k, n - c)
                at = lo + keep[d][0] + c
                ent_data[at : at + n_bytes] = ent[:n_bytes]
                if c + k > n:
                    ent_eos[eos_at + d] = ent[-1]
                # the surprisal of byte c + i is the signal at the next position: byte c + i + 1, or the EOS
                inside = min(n_bytes, n - c - 1)
                sur_data[at + 1 : at + 1 + inside] = nats[:inside]
                if n_bytes and c + n_bytes == n:
                    sur_eos[eos_at + d] = nats[n_bytes - 1]
                totals += [float(ent[:n_bytes].sum(dtype=np.float64)), float(nats[:n_bytes].sum(dtype=np.float64)),
                           n_bytes]
                bar.update(n_bytes)
            eos_ranges[name] = [eos_at, eos_at + len(keep)]
            eos_at += len(keep)
        bar.close()
        model.train(was_training)
        if writer.world > 1:
            sums = torch.tensor(totals, dtype=torch.float64)
            dist.all_reduce(sums)
            totals = sums.numpy()
        n_done = int(totals[2])
        stats = {"bytes": n_done, "mean_entropy": totals[0] / max(n_done, 1),
                 "mean_surprisal": totals[1] / max(n_done, 1), "seconds": round(time.time() - t0, 3)}
        if writer.world > 1:
            stats["processes"] = writer.world
        meta = {
            "corpus": corpus_fingerprint(corpus),
            "corpus_name": corpus.name,
            **provenance,
            "alignment": {
                "entropy": "value at byte b = entropy (nats) of the distribution predicting b from BOS and earlier bytes",
                "surprisal": "value at byte b = surprisal (nats) of the byte before b in its document, 0 at its first byte",
            },
            "eos_ranges": eos_ranges,
            "stats": stats,
        }
        writer.finish(meta)
    return stats
