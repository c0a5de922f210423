"""The entropy file: a corpus's next-byte entropies, stored once, read by BLT training.

A directory holding
    entropies.f16      float16 (N,) aligned with the corpus bytes: ent[b] predicts byte b
    entropies_eos.f16  float16 (D,) the entropy predicting each document's EOS
    entropies.json     corpus fingerprint, entropy run, model config, stats
Documents are those of each split (a document cut by a split boundary restarts at the cut,
exactly as the training stream lays it out), so the corpus's split fractions are part of the
fingerprint. The EOS entropies are stored because the sampler must give an EOS position the
value the entropy model would give online: a 0 there would let starts[q] depend on ids[q].
The values are computed by blt.evaluation.entropies; this module only writes and reads them.
Data files are written under temporary names and renamed; entropies.json goes last, so a
directory with entropies.json always holds complete data. Several processes (torchrun) write one
file together: rank 0 creates the temporary files, every rank fills its own disjoint ranges of
them, and rank 0 renames them and writes entropies.json once every rank has flushed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist

from blt.data.corpus import Corpus
from blt.errors import UserError
from blt.files import atomic_write_text, temporary_name

DATA_FILE, EOS_FILE, META_FILE = "entropies.f16", "entropies_eos.f16", "entropies.json"


@dataclass
class SplitEntropies:
    """A split's entropies: `data` aligned with split.data, `eos` one per non-empty document."""

    data: np.ndarray  # (n,) float16 or float32
    eos: np.ndarray  # (D,) in document order, empty documents skipped (as VirtualStream does)


def corpus_fingerprint(corpus: Corpus) -> dict:
    """What the entropies depend on: the bytes, the document offsets and the split cuts."""
    docs_hash = hashlib.sha256(np.ascontiguousarray(corpus.docs, dtype=np.int64).tobytes()).hexdigest()
    return {**corpus.fingerprint, "docs_sha256": docs_hash, "fractions": list(corpus.fractions)}


class EntropyFileWriter:
    """Fill `data` (a float16 memmap of N values) and `eos` (D values), then `finish`.

    Under torch.distributed every rank makes one and writes its own disjoint ranges; the
    constructor and `finish` are collective (every rank calls them)."""

    def __init__(self, out_dir, n_bytes: int, n_eos: int):
        self.out_dir = Path(out_dir)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        names = [None, None]
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            names = [temporary_name(self.out_dir / DATA_FILE), temporary_name(self.out_dir / EOS_FILE)]
            for name, n in zip(names, (n_bytes, n_eos)):
                np.memmap(name, dtype=np.float16, mode="w+", shape=(max(n, 1),)).flush()
        if self.world > 1:
            dist.broadcast_object_list(names, src=0)  # rank 0's temporary names (they hold its pid)
        self.tmp_data, self.tmp_eos = names
        self.n_bytes, self.n_eos = n_bytes, n_eos
        self.data = np.memmap(self.tmp_data, dtype=np.float16, mode="r+", shape=(max(n_bytes, 1),))
        self.eos = np.memmap(self.tmp_eos, dtype=np.float16, mode="r+", shape=(max(n_eos, 1),))

    def finish(self, meta: dict) -> None:
        """Make the file complete: data, EOS values, then entropies.json (with `meta`)."""
        self.data.flush()
        self.eos.flush()
        del self.data, self.eos
        if self.world > 1:
            dist.barrier()  # every rank's ranges are on disk
        if self.rank == 0:
            for tmp, n in ((self.tmp_data, self.n_bytes), (self.tmp_eos, self.n_eos)):
                if n == 0:
                    Path(tmp).write_bytes(b"")  # a memmap cannot be empty: the placeholder value goes
            (self.out_dir / META_FILE).unlink(missing_ok=True)  # an older file must never describe the new data
            os.replace(self.tmp_data, self.out_dir / DATA_FILE)
            os.replace(self.tmp_eos, self.out_dir / EOS_FILE)
            atomic_write_text(self.out_dir / META_FILE, json.dumps(meta, indent=1))
        if self.world > 1:
            dist.barrier()  # no rank goes on before the file is complete


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
