"""The local lm-evaluation-harness suite (blt/evaluation/tasks): its data, its YAMLs, a run through
the harness.

The data tests need the shared corpora (dickens.txt, tinyshakespeare.txt): ../shared/data beside
the repository, $BLT_DATA_DIR or /work/shared/data; without them those tests are skipped. The
harness tests need only the committed files. Two stand-in models: CharCountLM (records the
requests it gets) and OracleLM (reads the gold answer from the request's document), which must
score 1.0 everywhere. tests/test_harness.py runs the suite with real models.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from blt.evaluation.tasks import TASKS_DIR as TASK_DIR

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "tools" / "make_char_tasks.py"
CHAR = ["spell", "reverse", "insert", "delete", "substitute", "swap", "ith_letter"]
GEN_TASKS = [f"blt_{t}" for t in CHAR]
MC_TASKS = [f"blt_{t}_mc" for t in CHAR] + ["blt_cloze", "blt_cloze_noised_case", "blt_cloze_noised_repeat"]
ALL_TASKS = GEN_TASKS + MC_TASKS


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASK_DIR / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_char_tasks", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shared_data() -> Path:
    for d in (ROOT.parent / "shared" / "data", os.environ.get("BLT_DATA_DIR"), "/work/shared/data"):
        if d and (Path(d) / "dickens.txt").is_file() and (Path(d) / "tinyshakespeare.txt").is_file():
            return Path(d)
    pytest.skip("shared corpora not found (../shared/data, $BLT_DATA_DIR, /work/shared/data)")


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    # include_defaults=False: indexing the harness's own ~15k task entries takes ~9 s, ours ~0.1 s
    return TaskManager(include_path=str(TASK_DIR), include_defaults=False)


class RecordingLM(LM):
    """Knows nothing (every answer is equally likely, every generation empty); records the first
    request of each kind it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, tuple] = {}

    def loglikelihood(self, requests):
        self.seen.setdefault("loglikelihood", requests[0].args)
        return [(0.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests):
        return [0.0 for _ in requests]

    def generate_until(self, requests):
        self.seen.setdefault("generate_until", requests[0].args)
        return ["" for _ in requests]


class OracleLM(LM):
    """Answers from the request's own document (Instance.doc): the gold choice gets log-likelihood
    0 and the others -100; generation returns the gold answer as a model would (" answer")."""

    def loglikelihood(self, requests):
        gold = [r.doc["choices"][r.doc["label"]] for r in requests]
        return [(0.0, True) if r.args[1].strip() == g.strip() else (-100.0, False) for r, g in zip(requests, gold)]

    def loglikelihood_rolling(self, requests):
        return [0.0 for _ in requests]

    def generate_until(self, requests):
        return [" " + r.doc["answer"] for r in requests]


# ---------------------------------------------------------------- data
def test_generator_is_deterministic_and_matches_the_committed_data(generator, shared_data, tmp_path):
    counts = generator.generate(shared_data, tmp_path / "a")  # in this process...
    env = dict(os.environ, PYTHONHASHSEED="12345")  # ...and in another, with other string hashes
    subprocess.run([sys.executable, str(GENERATOR), "--data-dir", str(shared_data), "--out", str(tmp_path / "b")],
                   env=env, check=True, capture_output=True)
    assert sorted(counts) == sorted(p.name for p in TASK_DIR.glob("*.jsonl"))
    for name in counts:
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), name
        assert first == (TASK_DIR / name).read_bytes(), f"{name} differs from what the generator writes"


def test_data_is_small():
    assert sum(p.stat().st_size for p in TASK_DIR.iterdir()) < 1_000_000


@pytest.mark.parametrize("task", CHAR)
def test_char_answers_recomputed(task):
    """Every answer recomputed independently from the item's word and args; sound choices."""
    items = rows(f"{task}.jsonl")
    demo_block = items[0]["prompt"].rsplit("\n\n", 1)[0]
    for it in items:
        w, a = it["word"], it["args"]
        expect = {
            "spell": lambda: " ".join(w),
            "reverse": lambda: "".join(reversed(w)),
            "insert": lambda: "".join(ch + a["new"] * (ch == a["letter"]) for ch in w),
            "delete": lambda: "".join(ch for ch in w if ch != a["letter"]),
            "substitute": lambda: "".join(a["new"] if ch == a["letter"] else ch for ch in w),
            "swap": lambda: "".join(w[a["j"] - 1] if k == a["i"] - 1 else w[a["i"] - 1] if k == a["j"] - 1 else ch
                                    for k, ch in enumerate(w)),
            "ith_letter": lambda: w[a["i"] - 1],
        }[task]()
        assert it["answer"] == expect, it["id"]
        assert len(it["choices"]) == 4 == len(set(it["choices"])) and it["choices"][it["label"]] == expect
        head, question = it["prompt"].rsplit("\n\n", 1)
        assert head == demo_block, "the demonstrations are the same for every item"
        assert f'"{w}"' in question and question.endswith("\nAnswer:") and f'"{w}"' not in head
        assert len(it["answer"]) <= 32  # fits max_gen_toks for a byte-level model


def test_cloze_items():
    items = rows("cloze.jsonl")
    assert {it["source"] for it in items} == {"dickens", "shakespeare"}
    squash = lambda s: re.sub(r"(.)\1+", r"\1", s)  # noqa: E731
    for it in items:
        assert len(set(it["choices"])) == 4 and 0 <= it["label"] < 4
        sep = " " if it["source"] == "dickens" else "\n"
        assert all(c.startswith(sep) and not c[1:].startswith((" ", "\n")) for c in it["choices"])
        assert it["context_random_case"].lower() == it["context"].lower() != it["context_random_case"]
        assert squash(it["context_repeat"]) == squash(it["context"]) != it["context_repeat"]


# ---------------------------------------------------------------- harness
def test_every_yaml_loads_through_the_task_manager(task_manager):
    names = {re.search(r"^task: (\S+)$", p.read_text(), re.M).group(1) for p in TASK_DIR.glob("*.yaml")}
    assert names == set(ALL_TASKS)
    assert set(ALL_TASKS) <= set(task_manager.all_subtasks)
    assert {"blt_suite", "blt_char_gen", "blt_char_mc", "blt_cloze_all"} <= set(task_manager.all_tags)
    loaded = task_manager.load(["blt_suite"])["tasks"]
    assert set(loaded) == set(ALL_TASKS)
    for name, task in loaded.items():
        data = "cloze.jsonl" if "cloze" in name else f"{name[4:].removesuffix('_mc')}.jsonl"
        assert len(task.eval_docs) == len(rows(data)), name
        assert task.OUTPUT_TYPE == ("generate_until" if name in GEN_TASKS else "multiple_choice")


def test_the_network_guard_does_see_attempts(no_network, tmp_path):
    """Negative control, and the reason the suite avoids `dataset_path: json`: load_dataset("json")
    sends a download-count request unless HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) was set before
    `datasets` was imported."""
    import datasets

    if datasets.config.HF_HUB_OFFLINE or not datasets.config.HF_UPDATE_DOWNLOAD_COUNTS:
        pytest.skip("offline mode is on, so datasets sends nothing")
    datasets.load_dataset("json", data_files=str(TASK_DIR / "spell.jsonl"), cache_dir=str(tmp_path))
    assert no_network, "expected the download counter's request to be caught"


def test_requests_have_the_documented_shape(task_manager):
    lm = RecordingLM()
    lm_eval.simple_evaluate(model=lm, tasks=["blt_spell", "blt_spell_mc"], task_manager=task_manager, limit=2)
    prompt, continuation = lm.seen["loglikelihood"]
    assert prompt.endswith("Answer:") and continuation.startswith(" ")  # target_delimiter " " + choice
    prompt, gen_kwargs = lm.seen["generate_until"]
    assert prompt.endswith("Answer:")
    assert gen_kwargs == {"until": ["\n"], "max_gen_toks": 32, "do_sample": False, "temperature": 0.0}


def test_oracle_scores_one_everywhere(task_manager):
    results = lm_eval.simple_evaluate(model=OracleLM(), tasks=ALL_TASKS, task_manager=task_manager)["results"]
    for name in GEN_TASKS:
        assert results[name]["exact_match,strip"] == 1.0, name
    for name in MC_TASKS:
        assert results[name]["acc,none"] == 1.0 and results[name]["acc_norm,none"] == 1.0, name


def test_pyproject_ships_every_task_file_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "blt.evaluation.tasks"]
    data = [p.name for p in TASK_DIR.iterdir() if p.is_file() and p.suffix != ".py"]
    assert len(data) == 28 and all(any(fnmatch.fnmatch(name, g) for g in globs) for name in data), data
