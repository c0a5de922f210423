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
directory with entropies.json always holds complete data. The data file's disk space is taken
before it is filled, and the temporaries are removed on any error or Ctrl-C.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blt.data.corpus import Corpus
from blt.errors import UserError
from blt.files import (
    atomic_write_text, make_directory, read_errors, read_json, remove_quietly, temporary_name, write_errors,
)

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
    """Fill `data` (a float16 memmap of N values) and hand the EOS values to `finish`. Used as a
    context manager: if its block raises (Ctrl-C included), the temporaries are removed."""

    def __init__(self, out_dir, n_bytes: int):
        self.out_dir = make_directory(out_dir)
        self.tmp_data = temporary_name(self.out_dir / DATA_FILE)
        self.tmp_eos = temporary_name(self.out_dir / EOS_FILE)
        try:
            with write_errors(self.out_dir / DATA_FILE):
                with open(self.tmp_data, "wb") as f:
                    if hasattr(os, "posix_fallocate"):  # the disk space up front: a full disk fails here,
                        os.posix_fallocate(f.fileno(), 0, 2 * n_bytes)  # not as SIGBUS in the memory map
                    else:
                        f.truncate(2 * n_bytes)
                self.data = np.memmap(self.tmp_data, dtype=np.float16, mode="r+", shape=(n_bytes,))
        except BaseException:
            self._remove_temporaries()
            raise

    def _remove_temporaries(self) -> None:
        self.data = None  # the memory map lets go of its file
        remove_quietly(self.tmp_data)
        remove_quietly(self.tmp_eos)

    def __enter__(self) -> "EntropyFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._remove_temporaries()
        return False

    def finish(self, eos: list[float], meta: dict) -> None:
        """Make the file complete: data, EOS values, then entropies.json (with `meta`)."""
        with write_errors(self.out_dir / DATA_FILE):
            self.data.flush()
            self.data = None
            np.asarray(eos, dtype=np.float16).tofile(self.tmp_eos)
            (self.out_dir / META_FILE).unlink(missing_ok=True)  # an older file must never describe the new data
            os.replace(self.tmp_data, self.out_dir / DATA_FILE)
            os.replace(self.tmp_eos, self.out_dir / EOS_FILE)
        atomic_write_text(self.out_dir / META_FILE, json.dumps(meta, indent=1))


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
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("eos_ranges"), dict):
        raise UserError(f"{meta_path} is damaged (no eos_ranges); remove {out_dir} to compute the entropies again")
    if meta.get("corpus") != corpus_fingerprint(corpus):
        raise UserError(
            f"the entropies in {out_dir} were computed for another corpus or split "
            f"({meta.get('corpus_name')}); recompute them with `blt entropies`"
        )
    N = len(corpus.data)
    with read_errors(out_dir / DATA_FILE):
        data = np.memmap(out_dir / DATA_FILE, dtype=np.float16, mode="r")
        eos = np.fromfile(out_dir / EOS_FILE, dtype=np.float16)
    if len(data) != N or len(eos) != max((b for _, b in meta["eos_ranges"].values()), default=-1):
        raise UserError(
            f"the entropy files in {out_dir} do not match the corpus size; recompute them with `blt entropies`"
        )
    return EntropyFile(data, eos, meta, corpus)
