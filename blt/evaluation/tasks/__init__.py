"""The local lm-evaluation-harness task suite: task YAMLs over small JSONL files, shipped in the package.

TASKS_DIR is the directory the harness indexes (its include_path). loader.py reads the JSONL
files next to it for the harness, with no network and no cache; tools/make_char_tasks.py made them
from the shared corpora, deterministically. Tags: blt_suite (all 17 tasks), blt_char_gen (7
character tasks answered by generation), blt_char_mc (the same 7 as multiple choice),
blt_cloze_all (the cloze task with a clean, a random-case and a repeated-character context).
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
SUITE = "blt_suite"
