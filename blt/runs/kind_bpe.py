"""model_kind 'bpe': a transformer over BPE tokens, the token baseline (scored in bits per byte).

Before its first step a run learns, once, and keeps:
1. <run>/tokenizer.json: a byte-level BPE tokenizer learned from (a sample of) the TRAINING
   split, bpe.vocab_size ids at most. A resumed run reuses it and never retrains: the
   checkpoint's embedding rows mean the ids of this tokenizer.
2. <run>/tokens/train.{bin,json}: the training split as tokens, [BOS t.. EOS] per document,
   which training windows are drawn from; remade only if the tokenizer or the corpus changed.
Rank 0 makes both; the other ranks wait, then read them. One input position is one token.
"""
from __future__ import annotations

from pathlib import Path

from blt.data.corpus import Corpus
from blt.data.stream import ShardPlan
from blt.data.tokens import TokenWindowSampler, cached_tokens, load_tokenizer, train_tokenizer
from blt.errors import UserError
from blt.files import make_directory, print_line
from blt.evaluation.flops import FlopReport, bpe_lm_flops
from blt.models.token_lm import TokenLM
from blt.runs import layout
from blt.runs.config import RunConfig


def build(cfg: RunConfig, run_dir: Path | None = None) -> TokenLM:
    if run_dir is None:
        raise UserError("a BPE-token model needs its run directory (tokenizer.json)")
    return TokenLM(cfg.bpe, load_tokenizer(Path(run_dir) / layout.TOKENIZER))


def _train_tokens(corpus: Corpus, run_dir: Path):
    """The training split's token memory map (made if missing or stale)."""
    source = {"corpus": corpus.fingerprint, "split": "train", "range": list(corpus.split_range("train"))}
    tokenizer = load_tokenizer(run_dir / layout.TOKENIZER)
    return cached_tokens(tokenizer, corpus.split("train"), run_dir / layout.TOKENS_PREFIX, source)


def prepare(cfg: RunConfig, corpus: Corpus, run_dir: Path, env) -> RunConfig:
    """Learn the tokenizer (fresh runs only) and tokenize the training split."""
    make_directory(run_dir)
    if env.rank == 0:
        path = run_dir / layout.TOKENIZER
        if not path.is_file():
            if cfg.train.progress:
                print_line(f"blt train: learning a {cfg.bpe.vocab_size}-token BPE tokenizer from the training split")
            train_tokenizer(corpus.split("train").data, cfg.bpe.vocab_size, cfg.bpe.sample_bytes).save(path)
        tokens = _train_tokens(corpus, run_dir)
        if cfg.train.progress:
            n_bytes = corpus.split("train").n_bytes
            print_line(f"blt train: training split: {n_bytes:,} bytes -> {len(tokens):,} tokens (BOS/EOS included)")
    env.barrier()
    return cfg


def sampler(cfg: RunConfig, corpus: Corpus, run_dir: Path, plan: ShardPlan) -> TokenWindowSampler:
    """Training batches {'ids', 'targets'} for a prepared BPE run."""
    tokens = _train_tokens(corpus, run_dir)
    return TokenWindowSampler(tokens, cfg.bpe.context, cfg.data.batch_size, cfg.train.seed, plan)


def train_flops_per_position(cfg: RunConfig, stats: dict) -> float:
    """A position is one token."""
    return bpe_lm_flops(cfg.bpe, cfg.bpe.vocab_size, bytes_per_token=1.0).train_per_byte


def describe(model, cfg: RunConfig, docs: list) -> tuple[dict, FlopReport]:
    """The bytes per token the tokenizer achieves on the scored bytes; FLOPs per byte at that."""
    bytes_per_token = model.tokenizer.bytes_per_token(docs)
    return {"bytes_per_token": bytes_per_token}, bpe_lm_flops(cfg.bpe, cfg.bpe.vocab_size, bytes_per_token)


def generate(model, prompts, args, on_bytes=None):
    """The token baseline is for scoring only: `blt generate` reports that in one line."""
    raise UserError("generation is not implemented for BPE-token runs (model_kind: bpe); use blt eval or blt score")


def feeds(model):
    """Compression codes bytes one by one; a token model predicts tokens."""
    raise UserError("compression needs a byte-level model (model_kind byte or blt); this is a BPE-token run")
