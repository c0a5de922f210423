"""Everything a BPE-token run (model_kind: bpe) needs before its first step, kept in the run.

1. <run>/tokenizer.json: a byte-level BPE tokenizer learned from (a sample of) the TRAINING
   split, bpe.vocab_size ids at most. A resumed run reuses it and never retrains: the
   checkpoint's embedding rows mean the ids of this tokenizer.
2. <run>/tokens/train.{bin,json}: the training split as tokens, [BOS t.. EOS] per document,
   which training windows are drawn from; remade only if the tokenizer or the corpus changed.
Rank 0 makes both; the other ranks wait, then read them.
"""
from __future__ import annotations

from pathlib import Path

from blt.data.corpus import Corpus
from blt.data.tokens import TOKENIZER_FILE, TokenWindowSampler, cached_tokens, load_tokenizer, train_tokenizer
from blt.run import RunConfig
from blt.train import distributed as D

TOKENS_PREFIX = "tokens/train"


def _train_tokens(corpus: Corpus, run_dir: Path):
    """The training split's token memory map (made if missing or stale)."""
    source = {"corpus": corpus.fingerprint, "split": "train", "range": list(corpus.split_range("train"))}
    tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
    return cached_tokens(tokenizer, corpus.split("train"), run_dir / TOKENS_PREFIX, source)


def prepare_bpe(cfg: RunConfig, corpus: Corpus, run_dir: Path, env) -> None:
    """Learn the tokenizer (fresh runs only) and tokenize the training split."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if env.rank == 0:
        path = run_dir / TOKENIZER_FILE
        if not path.is_file():
            if cfg.train.progress:
                print(f"blt train: learning a {cfg.bpe.vocab_size}-token BPE tokenizer from the training split")
            train_tokenizer(corpus.split("train").data, cfg.bpe.vocab_size, cfg.bpe.sample_bytes).save(path)
        tokens = _train_tokens(corpus, run_dir)
        if cfg.train.progress:
            n_bytes = corpus.split("train").n_bytes
            print(f"blt train: training split: {n_bytes:,} bytes -> {len(tokens):,} tokens (BOS/EOS included)")
    D.barrier()


def bpe_sampler(cfg: RunConfig, corpus: Corpus, run_dir: Path, rank: int) -> TokenWindowSampler:
    """Training batches {'ids', 'targets'} for a prepared BPE run."""
    tokens = _train_tokens(corpus, run_dir)
    return TokenWindowSampler(tokens, cfg.bpe.context, cfg.data.batch_size, cfg.train.seed, rank)
