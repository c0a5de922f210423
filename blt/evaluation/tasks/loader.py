"""Reads this directory's JSONL files for lm-evaluation-harness, with no network and no cache.

The task YAMLs name it as `custom_dataset: !function loader.load_jsonl` and give the file in
`dataset_kwargs: {data_file: spell.jsonl}`. The harness calls it as
`load_jsonl(**task_metadata, **dataset_kwargs)` (lm_eval/api/task.py, ConfigurableTask.download),
so the other keyword arguments (version, config_source, model arguments...) are accepted and ignored.

Why not `dataset_path: json` with `data_files`: `datasets` resolves a relative data file against
the current working directory, not against the YAML, so the tasks would only load from one
directory; it also writes an Arrow cache under $HF_HOME and, unless HF_HUB_OFFLINE=1, sends a
request to count the download. Paths here are relative to this file, wherever the package lives.
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_jsonl(data_file: str, split: str = "test", **_ignored) -> dict[str, datasets.Dataset]:
    """{split: the rows of HERE/data_file}, one JSON object per line."""
    lines = (HERE / data_file).read_text(encoding="utf-8").splitlines()
    return {split: datasets.Dataset.from_list([json.loads(line) for line in lines if line])}
