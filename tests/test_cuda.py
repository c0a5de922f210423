"""What only a GPU can check: the CUDA paths against the CPU, generation's caches on CUDA, bf16
and FSDP2's mixed precision, torch.compile with CUDA kernels. Skipped where torch sees no GPU
(CI); benchmarks/gpu_check.sh runs them on a GPU machine."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from test_blt_generate import PROMPT, make_patcher, tiny_blt

from blt.config import from_dict
from blt.inference.args import GenerationArgs
from blt.inference.blt import generate_blt
from blt.inference.slow import generate_slow
from blt.patching.entropy import window_starts
from blt.runs.config import RunConfig
from blt.train import loop
from blt.train.metrics import read_metrics
from blt.vocab import encode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _corpus() -> str:
    text = SHARED_DATA / "tinyshakespeare.txt"
    return str(text) if text.is_file() else "stdlib"  # the GPU machine has no ../shared beside the checkout


@pytest.mark.parametrize("kind", ["static", "entropy", "equal_info"])
def test_blt_forward_on_cuda_matches_the_cpu(kind):
    model = tiny_blt()
    model.set_patching(make_patcher(kind, model), model.entropy_model)
    seq = encode(PROMPT)[None]
    with torch.no_grad():
        starts = window_starts(model, seq)
        cpu = model(seq[:, :-1], starts).log_softmax(-1)
        model.to(CUDA)
        gpu_starts = window_starts(model, seq.to(CUDA))
        gpu = model(seq[:, :-1].to(CUDA), gpu_starts).log_softmax(-1).cpu()
    assert torch.equal(gpu_starts.cpu(), starts)
    assert (gpu - cpu).abs().max() < 1e-3  # TF32 and other kernels: close, not equal


@pytest.mark.parametrize("kind", ["space", "entropy"])
def test_incremental_generation_on_cuda_equals_the_slow_path(kind):
    model = tiny_blt()
    model.set_patching(make_patcher(kind, model), model.entropy_model)
    model.to(CUDA)
    args = GenerationArgs(128, temperature=0)
    fast = generate_blt(model, [PROMPT, PROMPT[:20]], args)
    slow = generate_slow(model, [PROMPT, PROMPT[:20]], args)
    assert fast == slow and all(len(x) == 128 for x in fast)


def _train(tmp_path: Path, name: str, **train) -> list[dict]:
    local = {"dim": 64, "n_layers": 1, "n_heads": 2, "window": 32}
    tree = {
        "model_kind": "blt",
        "blt": {"context": 256, "encoder": local, "latent": {"dim": 128, "n_layers": 2, "n_heads": 4},
                "decoder": local, "k": 2, "hash_buckets": 1024},
        "patching": {"kind": "space"},
        "data": {"corpus": _corpus(), "batch_size": 8, "max_bytes": 2_000_000},
        "optim": {"lr": 2e-3, "warmup_steps": 5},
        "train": {"steps": 30, "log_every": 1, "eval_every": 0, "ckpt_every": 0, "eval_bytes": 2000,
                  "progress": False, "device": "cuda", **train},
    }
    loop.train(from_dict(RunConfig, tree), tmp_path / name)
    return read_metrics(tmp_path / name / "metrics.jsonl")


def test_bf16_and_fsdp_mixed_precision_train_like_fp32(tmp_path):
    fp32 = [r["loss"] for r in _train(tmp_path, "fp32")]
    bf16 = [r["loss"] for r in _train(tmp_path, "bf16", bf16=True)]
    fsdp = [r["loss"] for r in _train(tmp_path, "fsdp", parallel="fsdp")]  # bf16 parameters on a GPU
    assert fp32[-1] < fp32[0] - 1.0
    for other in (bf16, fsdp):
        assert abs(other[-1] - fp32[-1]) < 0.1 and abs(other[0] - fp32[0]) < 0.02


def test_compile_on_cuda_trains_like_eager(tmp_path):
    eager = [r["loss"] for r in _train(tmp_path, "eager")]
    compiled = [r["loss"] for r in _train(tmp_path, "compiled", compile=True)]
    assert compiled == pytest.approx(eager, rel=1e-3)
