"""The lm-evaluation-harness model (blt.experiments.harness) against the toolkit's own paths, for
byte-LM, BLT and BPE-token runs: loglikelihood = the scorer's nats of the continuation's bytes,
is_greedy = the argmax, rolling = `blt score`'s sum, generate_until = `blt generate` greedy;
then the local suite end to end, `blt eval-tasks` and the lm_eval command line without a network.

The runs are tiny untrained models (seconds to build); their heads cannot pick a non-ASCII byte
or EOS, so greedy text is ASCII and never ends early.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

from blt.cli import main as blt_main
from blt.config import from_dict, save_yaml
from blt.data.tokens import BOS as TOKEN_BOS
from blt.data.tokens import train_tokenizer
from blt.evaluation.scorer import byte_lm_scores, token_lm_scores
from blt.evaluation.tasks import TASKS_DIR
from blt.experiments.harness import HarnessLM
from blt.experiments.task_suite import evaluate_tasks
from blt.patching.entropy import online_entropies
from blt.runs.checkpoint import save_checkpoint
from blt.runs.config import RunConfig
from blt.runs.kinds import build_model
from blt.runs.loading import open_run
from blt.vocab import encode

REPO = Path(__file__).resolve().parents[1]
CONTEXT = 64  # bytes (the BPE run: CONTEXT // 4 tokens): the suite's prompts and the long texts exceed it
CLOZE = [json.loads(line)["context"] for line in (TASKS_DIR / "cloze.jsonl").read_text().splitlines()[:40]]
TEXT = "\n\n".join(CLOZE)
PAIRS = [  # (context, continuation): empty context, a long context, multi-byte characters, nothing to score
    ("", "Hello"),
    ("ROMEO:", " Speak, speak."),
    (CLOZE[0], " And so it ended."),
    ("Café au lait,", " déjà vu: 日本語"),
    ("abc", ""),
]


def small(**extra) -> dict:
    return {"dim": 32, "n_layers": 1, "n_heads": 2, **extra}


def save_run(run: Path, cfg: RunConfig, model) -> str:
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run / "config.yaml")
    save_checkpoint(run, 5, model, cfg, {})
    return str(run)


def ascii_only(head: torch.nn.Linear) -> None:
    with torch.no_grad():
        head.weight[128:] = 0  # logit 0 for bytes >= 128 and the specials: below the best ASCII byte


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("harness")
    torch.manual_seed(0)
    byte_cfg = from_dict(RunConfig, {"model": small(context=CONTEXT)})
    byte_lm = build_model(byte_cfg)
    byte_lm.init_weights()
    ascii_only(byte_lm.head)

    blt_cfg = from_dict(RunConfig, {
        "model_kind": "blt",
        "blt": {"context": CONTEXT, "encoder": small(window=16), "latent": small(), "decoder": small(window=16),
                "hash_ngram_sizes": [3, 4], "hash_buckets": 97},
        "patching": {"kind": "entropy", "theta": 0.0},
        "entropy_model": small(context=CONTEXT, window=32),
    })
    blt = build_model(blt_cfg)
    blt.init_weights()
    ascii_only(blt.decoder.head)
    with torch.no_grad():  # theta: the median entropy on real text, so that patches vary in length
        theta = float(online_entropies(blt.entropy_model, encode(TEXT[:300].encode())[None]).median())
    blt_cfg = dataclasses.replace(blt_cfg, patching=dataclasses.replace(blt_cfg.patching, theta=theta))

    bpe_dir = root / "bpe"
    bpe_dir.mkdir()
    train_tokenizer(TEXT.encode(), 320).save(bpe_dir / "tokenizer.json")
    bpe_cfg = from_dict(RunConfig, {"model_kind": "bpe", "bpe": small(context=CONTEXT // 4, vocab_size=320)})
    bpe = build_model(bpe_cfg, bpe_dir)
    bpe.init_weights()
    return {"byte": save_run(root / "byte", byte_cfg, byte_lm), "blt": save_run(root / "blt", blt_cfg, blt),
            "bpe": save_run(bpe_dir, bpe_cfg, bpe)}


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def greedy(lm: HarnessLM, prompts: list[str], n: int, until: list[str] = ()) -> list[str]:
    kwargs = {"until": list(until), "max_gen_toks": n, "do_sample": False}
    return lm.generate_until(requests("generate_until", [(p, kwargs) for p in prompts]))


def cli(capsysbinary, *args) -> bytes:
    assert blt_main([*map(str, args)]) == 0
    return capsysbinary.readouterr().out


# ---------------------------------------------------------------- scorer: nats_greedy


def test_nats_greedy_marks_the_argmax_and_keeps_the_nats(runs):
    """Checked against one plain forward pass (the documents fit in the context)."""
    docs = [np.frombuffer(t, np.uint8) for t in (b"Speak, speak.", "déjà vu".encode(), b"ROMEO: hear me")]
    byte_lm = open_run(runs["byte"], "cpu").model
    for doc, values in zip(docs, byte_lm_scores(byte_lm, docs, batch_size=2, what="nats_greedy")):
        ids = encode(doc.tobytes())
        argmax = byte_lm(ids[None, :-1])[0].argmax(-1)  # (T,)
        np.testing.assert_array_equal(values[:, 1], (argmax == ids[1:]).numpy())
        np.testing.assert_allclose(values[:, 0], byte_lm_scores(byte_lm, [doc])[0], atol=1e-6)
    token_lm = open_run(runs["bpe"], "cpu").model
    for doc, values in zip(docs, token_lm_scores(token_lm, docs, batch_size=2, what="nats_greedy")):
        tokens = torch.from_numpy(token_lm.tokenizer.encode(doc.tobytes()))
        ids = torch.cat([torch.tensor([TOKEN_BOS]), tokens])
        hit = (token_lm(ids[None, :-1])[0].argmax(-1) == ids[1:]).float().numpy()  # per token
        last_bytes = np.cumsum(token_lm.token_lengths[tokens].numpy()) - 1
        expected = np.ones(len(doc), np.float32)  # bytes inside a token predict nothing
        expected[last_bytes] = hit
        np.testing.assert_array_equal(values[:, 1], expected)
        np.testing.assert_allclose(values[:, 0], token_lm_scores(token_lm, [doc])[0], atol=1e-6)


# ---------------------------------------------------------------- the three request types


@pytest.mark.parametrize("kind", ["byte", "blt", "bpe"])
def test_loglikelihood_is_the_scorers_nats_on_the_same_bytes(runs, kind):
    lm = HarnessLM(run=runs[kind], device="cpu", batch_size=3)
    got = lm.loglikelihood(requests("loglikelihood", PAIRS))
    for (context, continuation), (logprob, _) in zip(PAIRS, got):
        doc = (context + continuation).encode()
        nats = lm.run.scores([np.frombuffer(doc, np.uint8)], batch_size=1)[0]  # alone, unbatched
        expected = -float(nats[len(context.encode()) :].sum(dtype=np.float64))
        assert logprob == pytest.approx(expected, rel=1e-5, abs=1e-5), (context[:20], continuation)
    assert got[-1] == (0.0, True)  # an empty continuation costs nothing
    assert len(PAIRS[2][0]) > CONTEXT  # the long context slides, as the scorer slides


def test_a_bpe_token_straddling_the_cut_belongs_to_the_continuation(runs):
    """The documented rule, against one plain forward pass: the continuation's log-likelihood is
    minus the nats of every token whose last byte lies in it."""
    lm = HarnessLM(run=runs["bpe"], device="cpu")
    model = lm.run.model
    doc = b"and the whole of the other"
    tokens = torch.from_numpy(model.tokenizer.encode(doc))  # (T,)
    ends = np.cumsum(model.token_lengths[tokens].numpy())  # each token's end offset in bytes
    k = next(k for k in range(len(tokens)) if model.token_lengths[tokens[k]] >= 2)
    cut = int(ends[k]) - 1  # inside token k: its first bytes in the context, its last one not
    ids = torch.cat([torch.tensor([TOKEN_BOS]), tokens])
    with torch.no_grad():
        nats = torch.nn.functional.cross_entropy(model(ids[None, :-1])[0], ids[1:], reduction="none")  # (T,)
    [(logprob, _)] = lm.loglikelihood(requests("loglikelihood", [(doc[:cut].decode(), doc[cut:].decode())]))
    assert len(tokens) <= CONTEXT // 4  # one window: the plain forward pass is the reference
    assert logprob == pytest.approx(-float(nats[k:].sum()), rel=1e-5)


@pytest.mark.parametrize("kind", ["byte", "blt"])
def test_is_greedy_holds_exactly_for_the_greedy_continuation(runs, kind):
    lm = HarnessLM(run=runs[kind], device="cpu")
    prompts = ["ROMEO:", CLOZE[1]]
    outs = greedy(lm, prompts, 12)
    changed = [o[:-1] + ("a" if o[-1] != "a" else "b") for o in outs]  # the last byte is not the argmax
    args = list(zip(prompts, outs)) + list(zip(prompts, changed))
    flags = [g for _, g in lm.loglikelihood(requests("loglikelihood", args))]
    assert all(len(o) == 12 for o in outs)
    assert flags == [True, True, False, False]


@pytest.mark.parametrize("kind", ["byte", "blt", "bpe"])
def test_rolling_loglikelihood_is_blt_scores_sum(runs, kind, tmp_path, capsysbinary):
    texts = [TEXT[:700], "Café — déjà vu", ""]
    lm = HarnessLM(run=runs[kind], device="cpu", batch_size=2)
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]))
    for text, logprob in zip(texts[:2], got):
        (tmp_path / "in.txt").write_text(text, encoding="utf-8")
        out = cli(capsysbinary, "score", runs[kind], "--input", tmp_path / "in.txt", "--out", tmp_path / "o.npy",
                  "--device", "cpu")
        assert logprob == pytest.approx(-json.loads(out)["nats"], rel=1e-5)
    assert got[2] == 0.0


@pytest.mark.parametrize("kind", ["byte", "blt"])
def test_generate_until_is_blt_generate_greedy_and_stops(runs, kind, capsysbinary):
    lm = HarnessLM(run=runs[kind], device="cpu", batch_size=2)
    prompts = ["ROMEO:", CLOZE[1], "déjà"]  # CLOZE[1] is longer than the byte run's context
    free = greedy(lm, prompts, 24)  # batched
    for prompt, out in zip(prompts, free):
        raw = cli(capsysbinary, "generate", runs[kind], "--prompt", prompt, "--temperature", 0,
                  "--max-new-bytes", 24, "--raw", "--device", "cpu")
        assert out.encode() == raw[len(prompt.encode()) :], prompt[:20]
    # a stop string from the middle of the first output, seen there for the first time
    k = next(k for k in range(3, 20) if free[0][k : k + 2] not in free[0][: k + 1])
    stop = free[0][k : k + 2]
    stopped = greedy(lm, prompts, 24, until=[stop, "\x00never"])
    assert stopped == [out.split(stop)[0] for out in free]
    assert stopped[0] == free[0][:k]
    raw = cli(capsysbinary, "generate", runs[kind], "--prompt", prompts[0], "--temperature", 0,
              "--max-new-bytes", 24, "--stop", stop, "--raw", "--device", "cpu")
    assert raw.decode() == prompts[0] + stopped[0]


def test_bpe_runs_answer_generation_with_empty_strings_and_a_warning(runs, caplog):
    lm = HarnessLM(run=runs["bpe"], device="cpu")
    with caplog.at_level(logging.WARNING):
        assert greedy(lm, ["ROMEO:", "a"], 8) == ["", ""]
    assert "cannot generate" in caplog.text


def test_token_counts_are_bytes_and_sampling_follows_do_sample(runs):
    lm = HarnessLM(run=runs["byte"], device="cpu", max_gen_bytes=7)
    args = lm.generation_args({"until": "\n\n", "temperature": 0.5})  # no do_sample: temperature > 0 samples
    assert (args.max_new_bytes, args.temperature, args.stop) == (7, 0.5, (b"\n\n",))
    args = lm.generation_args({"max_new_tokens": 9, "do_sample": False, "temperature": 0.5, "top_k": 3})
    assert (args.max_new_bytes, args.temperature, args.top_k, args.stop) == (9, 0.0, 3, ())


def test_model_args_win_over_the_harness_defaults(runs):
    """The lm_eval CLI always passes device=cuda:0 and batch_size=1; model_args name their own."""
    lm = HarnessLM.create_from_arg_string(f"run={runs['byte']},device=cpu,batch_size=8",
                                          {"device": "cuda:0", "batch_size": 1, "max_batch_size": 64})
    assert lm.batch_size == 8 and lm.run.model.head.weight.device.type == "cpu"


# ---------------------------------------------------------------- the suite, the commands


@pytest.mark.parametrize("kind", ["byte", "blt"])
def test_the_whole_suite_runs_through_the_harness_offline(runs, kind, no_network):
    lm = HarnessLM(run=runs[kind], device="cpu", batch_size=8)
    results = evaluate_tasks(lm, ["blt_suite"], limit=2)
    assert no_network == []
    assert len(results["results"]) == 17 and all(n["effective"] == 2 for n in results["n-samples"].values())
    # the harness's accuracy is the argmax of our log-likelihoods
    rows = [json.loads(line) for line in (TASKS_DIR / "spell.jsonl").read_text().splitlines()[:2]]
    args = [(row["prompt"], " " + choice) for row in rows for choice in row["choices"]]
    ll = np.array([x for x, _ in lm.loglikelihood(requests("loglikelihood", args))]).reshape(2, 4)
    acc = np.mean([ll[i].argmax() == row["label"] for i, row in enumerate(rows)])
    assert results["results"]["blt_spell_mc"]["acc,none"] == pytest.approx(acc)


def test_eval_tasks_prints_the_harness_tables_and_a_comparison(runs, no_network, capsys):
    assert blt_main(["eval-tasks", runs["byte"], runs["bpe"], "--tasks", "blt_spell", "blt_spell_mc",
                     "--limit", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert no_network == []
    assert out.count("|blt_spell_mc") == 2  # the harness's table for each run
    table = out.split("| task | items | metric |")[1]
    assert "| blt_spell | 2 | exact_match,strip | 0.000 ± 0.000 | n/a |" in table  # BPE runs do not generate
    assert "| blt_spell_mc | 2 | acc |" in table


def test_the_lm_eval_command_line_in_a_process_without_a_network(runs):
    """`python -m blt.experiments.harness` is lm_eval's CLI with `blt` registered and the local
    suite included; run in a network namespace of its own (no interface but loopback)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"]).returncode != 0:
        pytest.skip("unshare -rn (a network namespace) is not available here")
    proc = subprocess.run(["unshare", "-rn", sys.executable, "-m", "blt.experiments.harness", "--model", "blt",
                           "--model_args", f"run={runs['blt']},device=cpu,batch_size=4", "--tasks", "blt_cloze",
                           "--limit", "2"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|blt_cloze|" in proc.stdout.replace(" ", "")


@pytest.mark.parametrize("args, words", [
    (["--tasks", "hellaswag"], ["no such task in the local suite: hellaswag"]),
    (["--limit", "0"], ["--limit must be positive"]),
    (["--batch-size", "0"], ["batch_size >= 1"]),
])
def test_bad_eval_tasks_arguments_are_one_line(runs, capsys, args, words):
    assert blt_main(["eval-tasks", runs["byte"], "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err


def test_without_lm_eval_the_command_says_so(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("blt.commands.eval_tasks", "blt.experiments.task_suite", "blt.experiments.harness"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        blt_main(["eval-tasks", "some_run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "lm_eval" in err and "blt-lm[eval]" in err, err
