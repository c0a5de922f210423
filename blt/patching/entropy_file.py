"""The entropy file: a corpus's per-byte entropy-model signals, stored once, read by BLT training.

A directory holding, for each signal (blt.patching.entropy: 'entropy' and 'surprisal'),
    entropies.f16 / surprisals.f16          float16 (N,) aligned with the corpus bytes: the
                                            signal at byte b's position (the entropy predicting
                                            b; the surprisal of the byte before b in its
                                            document, 0 for a document's first byte)
    entropies_eos.f16 / surprisals_eos.f16  float16 (D,) the signal at each document's EOS
    entropies.json                          corpus fingerprint, entropy run, model config,
                                            stats, the signals held
Documents are those of each split (a document cut by a split boundary restarts at the cut,
exactly as the training stream lays it out), so the corpus's split fractions are part of the
fingerprint. The EOS values are stored because the sampler must give an EOS position the
value the entropy model would give online: a 0 there would let starts[q] depend on ids[q].
Both signals come from one pass of the entropy model; a file written before surprisals were
stored holds entropies only (its entropies.json lists no signals), and asking it for
surprisals says to recompute it. The values are computed by blt.evaluation.entropies; this
module only writes and reads them. Data files are written under temporary names and renamed;
entropies.json goes last, so a directory with entropies.json always holds complete data. The
files' disk space is taken before they are filled, and the temporaries are removed on any
error or Ctrl-C. Several processes (torchrun) write one file together: rank 0 creates the
temporary files, every rank fills its own disjoint ranges of them, and rank 0 renames them and
writes entropies.json once every rank has flushed.
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
from blt.files import (
    atomic_write_text, make_directory, read_errors, read_json, remove_quietly, temporary_name, write_errors,
)

META_FILE = "entropies.json"
FILES = {  # signal (blt.patching.entropy.SIGNALS) -> (per-byte file, per-document EOS file)
    "entropy": ("entropies.f16", "entropies_eos.f16"),
    "surprisal": ("surprisals.f16", "surprisals_eos.f16"),
}


@dataclass
class SplitEntropies:
    """A split's values of one signal: `data` aligned with split.data, `eos` one per non-empty
    document."""

    data: np.ndarray  # (n,) float16 or float32
    eos: np.ndarray  # (D,) in document order, empty documents skipped (as VirtualStream does)


def corpus_fingerprint(corpus: Corpus) -> dict:
    """What the entropies depend on: the bytes, the document offsets and the split cuts."""
    docs_hash = hashlib.sha256(np.ascontiguousarray(corpus.docs, dtype=np.int64).tobytes()).hexdigest()
    return {**corpus.fingerprint, "docs_sha256": docs_hash, "fractions": list(corpus.fractions)}


class EntropyFileWriter:
    """Fill `data[signal]` (float16 memmaps of N values) and `eos[signal]` (D values) for every
    signal, zeros to start with, then `finish`. Used as a context manager: if its block raises
    (Ctrl-C included), the temporaries are removed.

    Under torch.distributed every rank makes one and writes its own disjoint ranges; the
    constructor and `finish` are collective (every rank calls them)."""

    def __init__(self, out_dir, n_bytes: int, n_eos: int):
        self.out_dir = Path(out_dir)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        self.sizes = {}  # temporary name -> values
        created = [None]
        if self.rank == 0:
            make_directory(self.out_dir)
            for data_file, eos_file in FILES.values():
                self.sizes[temporary_name(self.out_dir / data_file)] = n_bytes
                self.sizes[temporary_name(self.out_dir / eos_file)] = n_eos
            try:
                for tmp, n in self.sizes.items():
                    with write_errors(tmp), open(tmp, "wb") as f:
                        if hasattr(os, "posix_fallocate"):  # the disk space up front: a full disk fails here,
                            os.posix_fallocate(f.fileno(), 0, 2 * max(n, 1))  # not as SIGBUS in the memory map
                        else:
                            f.truncate(2 * max(n, 1))
                created = [self.sizes]
            finally:
                if self.world > 1:  # the others learn rank 0's temporary names (they hold its pid), or its failure
                    dist.broadcast_object_list(created, src=0)
                if created[0] is None:
                    self._remove_temporaries()
        elif self.world > 1:
            dist.broadcast_object_list(created, src=0)
            if created[0] is None:
                raise UserError(f"could not create the entropy file in {self.out_dir} (see rank 0's error)")
        self.sizes = created[0]
        names = list(self.sizes)

        def open_map(i):
            return np.memmap(names[i], dtype=np.float16, mode="r+", shape=(max(self.sizes[names[i]], 1),))

        self.data = {signal: open_map(2 * i) for i, signal in enumerate(FILES)}
        self.eos = {signal: open_map(2 * i + 1) for i, signal in enumerate(FILES)}

    def _remove_temporaries(self) -> None:
        self.data, self.eos = {}, {}  # the memory maps let go of their files
        if self.rank == 0:
            for tmp in self.sizes:
                remove_quietly(tmp)

    def __enter__(self) -> "EntropyFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._remove_temporaries()
        return False

    def finish(self, meta: dict) -> None:
        """Make the file complete: data, EOS values (per signal), then entropies.json (with `meta`)."""
        for values in (*self.data.values(), *self.eos.values()):
            values.flush()
        self.data, self.eos = {}, {}
        if self.world > 1:
            dist.barrier()  # every rank's ranges are on disk
        if self.rank == 0:
            (self.out_dir / META_FILE).unlink(missing_ok=True)  # an older file must never describe the new data
            finals = [self.out_dir / name for pair in FILES.values() for name in pair]
            for (tmp, n), final in zip(self.sizes.items(), finals):
                with write_errors(final):
                    if n == 0:
                        Path(tmp).write_bytes(b"")  # a memmap cannot be empty: the placeholder value goes
                    os.replace(tmp, final)
            atomic_write_text(self.out_dir / META_FILE, json.dumps({**meta, "signals": list(FILES)}, indent=1))
        if self.world > 1:
            dist.barrier()  # no rank goes on before the file is complete


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class EntropyFile:
    values: dict[str, tuple[np.ndarray, np.ndarray]]  # signal -> (N,) float16 memmap, (D_all,) EOS values
    meta: dict
    corpus: Corpus

    def split(self, name: str, signal: str = "entropy") -> SplitEntropies:
        if signal not in self.values:
            raise UserError(f"the entropy file in {self.meta['dir']} holds no {signal} values (it was written "
                            "before they were stored); delete it and recompute it with `blt entropies`")
        data, eos = self.values[signal]
        lo, hi = self.corpus.split_range(name)
        a, b = self.meta["eos_ranges"][name]
        return SplitEntropies(data[lo:hi], eos[a:b])


def stored_signals(out_dir) -> tuple[str, ...]:
    """The signals an entropy directory holds (none without its entropies.json)."""
    meta_path = Path(out_dir) / META_FILE
    if not meta_path.is_file():
        return ()
    meta = read_json(meta_path)
    return tuple(meta.get("signals", ["entropy"])) if isinstance(meta, dict) else ()


def load_entropy_file(out_dir, corpus: Corpus) -> EntropyFile:
    """Open an entropy directory written for this corpus (UserError if it was not)."""
    out_dir = Path(out_dir)
    meta_path = out_dir / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{out_dir} holds no entropy file (no {META_FILE}); run `blt entropies` first")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("eos_ranges"), dict):
        raise UserError(f"{meta_path} is damaged (no eos_ranges); remove {out_dir} to compute the entropies again")
    if meta.get("corpus") != corpus_fingerprint(corpus):
        raise UserError(
            f"the entropies in {out_dir} were computed for another corpus or split "
            f"({meta.get('corpus_name')}); recompute them with `blt entropies`"
        )
    N = len(corpus.data)
    n_docs = max((b for _, b in meta["eos_ranges"].values()), default=-1)
    values = {}
    for signal in stored_signals(out_dir):
        data_file, eos_file = FILES[signal]
        with read_errors(out_dir / data_file):
            data = np.memmap(out_dir / data_file, dtype=np.float16, mode="r")
            eos = np.fromfile(out_dir / eos_file, dtype=np.float16)
        if len(data) != N or len(eos) != n_docs:
            raise UserError(
                f"the entropy files in {out_dir} do not match the corpus size; recompute them with `blt entropies`"
            )
        values[signal] = (data, eos)
    return EntropyFile(values, {**meta, "dir": str(out_dir)}, corpus)
