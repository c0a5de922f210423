#!/usr/bin/env bash
# GPU readiness check, one script for a machine with a CUDA GPU (about 10 minutes on one H100/H200):
#   1. the environment: the GPU, torch, CUDA;
#   2. the tests that need CUDA (tests/test_cuda.py: CUDA vs CPU forward, incremental generation
#      on CUDA vs the slow path, bf16 and FSDP2 mixed precision, torch.compile) and the
#      generation and causality suites on the CPU of that machine;
#   3. MFU of the byte transformer and the BLT at ~1 B-parameter shapes with FSDP2 + bf16 +
#      torch.compile (benchmarks/gpu_mfu.py).
# It writes OUT/gpu_check.md (the report), OUT/pytest.log and OUT/gpu_mfu.md; run it from the
# repository root with a python that has torch with CUDA (no install, nothing downloaded):
#   bash benchmarks/gpu_check.sh OUT
set -euo pipefail
OUT=${1:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
REPORT="$OUT/gpu_check.md"

{
  echo "# GPU check"
  echo
  echo '```'
  echo "bash benchmarks/gpu_check.sh $OUT   # $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo '```'
  echo
  echo '## Environment'
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  echo '```'
} > "$REPORT"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to torch")'

status=0
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py tests/test_blt_generate.py \
  tests/test_no_leak.py 2>&1 | tee "$OUT/pytest.log" || status=$?
{
  echo
  echo "## Tests (exit status $status)"
  echo
  echo '```'
  tail -n 15 "$OUT/pytest.log"
  echo '```'
} >> "$REPORT"

mfu_status=0
timeout 420 "$PY" benchmarks/gpu_mfu.py --work "$OUT/mfu_runs" --report "$OUT/gpu_mfu.md" || mfu_status=$?
{
  echo
  echo "## MFU (exit status $mfu_status)"
  echo
  if [ -f "$OUT/gpu_mfu.md" ]; then tail -n +2 "$OUT/gpu_mfu.md"; else echo "no report"; fi
} >> "$REPORT"
rm -rf "$OUT/mfu_runs"
cat "$REPORT"
exit $(( status || mfu_status ))
