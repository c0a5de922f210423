"""The GPU check (benchmarks/gpu_check.sh) is prepared here, where there is no GPU: the shell
script parses, and its MFU benchmark runs its whole path on tiny shapes on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_mfu_benchmark_runs_on_tiny_shapes(tmp_path):
    report = tmp_path / "mfu.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_mfu.py", "--work", str(tmp_path / "w"), "--report", str(report), "--tiny",
         "--device", "cpu", "--no-compile", "--steps", "3", "--warmup", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in report.read_text().splitlines() if line.startswith("| byte |") or line.startswith("| blt |")]
    assert len(rows) == 2
    for row in rows:
        tflops, mfu = row.split("|")[2:4]
        assert float(tflops) > 0 and mfu.strip().endswith("%")
