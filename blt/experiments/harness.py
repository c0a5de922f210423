"""lm-evaluation-harness model for every run kind: `--model blt --model_args run=RUN_DIR`.

    python -m blt.experiments.harness --model blt --model_args run=runs/blt_tiny,device=cpu,batch_size=8 \\
        --tasks blt_suite --limit 20          # lm_eval's own command line, with `blt` registered
    lm = HarnessLM(run="runs/blt_tiny", device="cpu")           # from Python: lm_eval.simple_evaluate(model=lm)

Importing this module registers the class as `blt` (lm_eval's `@register_model`); the harness's
CLI has no plugin discovery, so `python -m blt.experiments.harness` is its command line with
the model registered (and, unless --include_path is given, the local suite blt/evaluation/tasks
included). `blt eval-tasks` (blt.experiments.task_suite) runs the local suite in one command.

Strings are UTF-8 encoded; every figure is computed on bytes, with the toolkit's own paths:
- loglikelihood(context, continuation): the document context + continuation is scored by THE
  windowed scorer (blt.evaluation.scorer, the run kind's `scores`, what='nats_greedy'), and the
  continuation's log-likelihood is minus the sum of the nats of its bytes; is_greedy holds when
  every continuation byte was the model's argmax. A context longer than the model's is cut from
  the left the way the scorer cuts every document: its windows slide, so each prediction sees
  min(its index, span - 1) earlier positions (bytes, or tokens for a BPE run), the most the
  model saw in training. BPE-token runs: the scorer puts each token's nats on its LAST byte, so
  the continuation owns exactly the tokens that END inside it, a token straddling the cut
  included (all of its nats, and its greediness); the context and the continuation are tokenized
  together, as one document.
- loglikelihood_rolling(text): minus the sum of `blt score`'s nats over the text's bytes (BOS
  first, EOS not scored): the same scorer, so the same windows.
- generate_until(context, kwargs): the run's incremental generator (`OpenRun.generate`, batched)
  with the request's stop strings (`until`, cut before them) and greedy decoding unless the
  request asks to sample. Token counts are bytes: max_gen_toks (or its aliases) is the number of
  new BYTES; a task without one gets `max_gen_bytes` (default 256, the harness's own default).
  The harness's max_length has no counterpart: a byte-level run keeps the last `context`
  positions of BOS + prompt (one warning for all the prompts it cut), a BLT keeps the whole
  prompt and slides. BPE-token runs cannot generate in this toolkit: they answer "" with one
  warning, so a mixed suite still scores their log-likelihood tasks.
Requests are sorted by length (less padding) and scored or generated `batch_size` at a time.
"""
from __future__ import annotations

import logging
import sys
import warnings

import lm_eval.models  # noqa: F401  (the built-in names first: get_model loads them only into an empty registry)
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import simple_parse_args_string, warning_once
from tqdm import tqdm

from blt.errors import UserError
from blt.evaluation.tasks import TASKS_DIR
from blt.inference.args import GenerationArgs
from blt.inference.byte_lm import PromptTruncated
from blt.runs.loading import open_run

log = logging.getLogger(__name__)
DEFAULT_MAX_GEN_BYTES = 256  # lm_eval's default max_gen_toks
DOCS_PER_CALL = 256  # documents per scorer call: the progress bar's step


@register_model("blt")
class HarnessLM(LM):
    """A run directory (byte LM, BPE-token LM or BLT) as an lm_eval LM: see the module docstring."""

    def __init__(self, run: str, device: str = "auto", batch_size: int | str = 16,
                 max_gen_bytes: int = DEFAULT_MAX_GEN_BYTES) -> None:
        super().__init__()
        try:
            self.batch_size = int(batch_size)
        except ValueError:
            raise UserError(f"batch_size must be a whole number (no 'auto'), got {batch_size!r}") from None
        if self.batch_size < 1 or max_gen_bytes < 0:
            raise UserError(f"need batch_size >= 1 and max_gen_bytes >= 0, got {batch_size} and {max_gen_bytes}")
        self.max_gen_bytes = max_gen_bytes
        self.run = open_run(run, device)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "HarnessLM":
        """model_args win over the harness's --device / --batch_size, which always carry a value
        (cuda:0 and 1 by default) and would otherwise collide with them. --max_batch_size only
        caps the harness's automatic batch size, which this model does not have."""
        options = {k: v for k, v in (additional_config or {}).items() if v is not None and k != "max_batch_size"}
        return cls(**(options | dict(arg_dict)))

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "HarnessLM":
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    def _scores(self, docs: list[bytes], what: str) -> list[np.ndarray]:
        """The scorer's per-byte values of every document, longest first in batches."""
        order = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
        out: list = [None] * len(docs)
        for at in tqdm(range(0, len(order), DOCS_PER_CALL), desc=f"blt: scoring {len(docs)} requests",
                       disable=len(order) <= DOCS_PER_CALL):
            part = order[at : at + DOCS_PER_CALL]
            arrays = [np.frombuffer(docs[i], dtype=np.uint8) for i in part]
            for i, values in zip(part, self.run.scores(arrays, self.batch_size, what)):
                out[i] = values
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [(context.encode("utf-8"), continuation.encode("utf-8")) for context, continuation in
                 (r.args for r in requests)]
        values = self._scores([c + x for c, x in pairs], "nats_greedy")  # (len, 2) each: nats, argmax hit
        out = []
        for (context, _), v in zip(pairs, values):
            cont = v[len(context) :]
            out.append((-float(cont[:, 0].sum(dtype=np.float64)), bool(cont[:, 1].all())))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        nats = self._scores([r.args[0].encode("utf-8") for r in requests], "nats")
        return [-float(v.sum(dtype=np.float64)) for v in nats]

    def generate_until(self, requests) -> list[str]:
        if not self.run.kind.generates:
            log.warning("blt: %s runs cannot generate; answering '' to %d generation requests",
                        self.run.kind.name, len(requests))
            return ["" for _ in requests]
        prompts = [r.args[0].encode("utf-8") for r in requests]
        groups: dict[GenerationArgs, list[int]] = {}  # requests that share their generation arguments
        for i, r in enumerate(requests):
            groups.setdefault(self.generation_args(r.args[1]), []).append(i)
        out = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="blt: generating", disable=len(requests) <= self.batch_size)
        with warnings.catch_warnings(record=True) as caught:  # one note for all cut prompts, not one each
            warnings.simplefilter("always", PromptTruncated)
            for args, members in groups.items():
                members.sort(key=lambda i: -len(prompts[i]))
                for at in range(0, len(members), self.batch_size):
                    part = members[at : at + self.batch_size]
                    for i, text in zip(part, self.run.generate([prompts[i] for i in part], args)):
                        out[i] = text.decode("utf-8", errors="replace")
                    bar.update(len(part))
        bar.close()
        cut = [w for w in caught if issubclass(w.category, PromptTruncated)]
        if cut:
            log.warning("blt: %d of %d prompts were longer than the model's context of %d bytes and kept their end",
                        len(cut), len(requests), self.run.cfg.context)
        for w in caught:
            if w not in cut:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out

    def generation_args(self, request_kwargs: dict) -> GenerationArgs:
        """A request's generation kwargs as GenerationArgs (token counts are bytes)."""
        kw = dict(normalize_gen_kwargs(request_kwargs, self.max_gen_bytes))  # do_sample=False: temperature 0
        kw.pop("do_sample")
        args = GenerationArgs(max_new_bytes=kw.pop("max_gen_toks"), temperature=kw.pop("temperature"),
                              top_k=kw.pop("top_k", None), top_p=kw.pop("top_p", None),
                              stop=tuple(s.encode("utf-8") for s in kw.pop("until")))
        if kw:
            warning_once(log, f"blt: ignoring generation arguments it has no counterpart for: {sorted(kw)}")
        return args.check()


def main() -> int:
    """lm_eval's command line with `blt` registered and the local suite included by default."""
    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv[1:]
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", str(TASKS_DIR)]
    sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except UserError as e:
        print(f"blt harness: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
