"""Data-parallel training: two CPU ranks (gloo) launched by torchrun on a tiny config.

The test runs this very file under `python -m torch.distributed.run --nproc_per_node 2`; each
rank (the `__main__` block) records which ranks saved checkpoints, trains, and dumps its
final and initial parameters for the test to compare.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def _rank_main(config_path: str, out_dir: str, dump_dir: str) -> None:
    from blt.config import load_config
    from blt.runs.config import RunConfig
    from blt.train import checkpointing, loop

    rank = int(os.environ["RANK"])
    dump = Path(dump_dir)
    captured = {}
    real_setup, real_save = loop.setup_model, checkpointing.save_checkpoint

    def setup_and_capture(cfg, device, run_dir=None):
        model = real_setup(cfg, device, run_dir)
        captured["model"] = model
        captured["init"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    def save_and_record(run_dir, step, *args, **kwargs):
        with open(dump / f"saved_by_rank{rank}", "a") as f:
            f.write(f"{step}\n")
        return real_save(run_dir, step, *args, **kwargs)

    loop.setup_model, checkpointing.save_checkpoint = setup_and_capture, save_and_record
    result = loop.train(load_config(RunConfig, config_path), Path(out_dir))
    torch.save(
        {"final": captured["model"].state_dict(), "init": captured["init"], "result": result},
        dump / f"rank{rank}.pt",
    )


def test_two_cpu_ranks_train_in_lockstep(text_file, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "context": 32},
        "data": {"corpus": str(text_file), "batch_size": 4},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 6, "grad_accum": 2, "log_every": 2, "eval_every": 0, "eval_bytes": 1000,
                  "ckpt_every": 3, "progress": False, "device": "cpu"},
    }))
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}  # this checkout's blt
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         __file__, str(config), str(out), str(dump)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    assert any(not torch.equal(r0["final"][k], r0["init"][k]) for k in r0["final"])
    assert r0["result"]["step"] == r1["result"]["step"] == 6

    # only rank 0 wrote: checkpoints at 3 and 6, and one metrics row per logged step
    assert (dump / "saved_by_rank0").read_text().split() == ["3", "6"]
    assert not (dump / "saved_by_rank1").exists()
    rows = [yaml.safe_load(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 6]  # logged steps, plus checkpoint steps (3, 6)
    assert rows[-1]["tokens"] == 6 * 2 * 2 * 4 * 32  # steps x ranks x micro-steps x batch x context
    assert "val_bpb" in rows[-1]
    info = yaml.safe_load((out / "run.json").read_text())
    assert info["world_size"] == 2

    from blt.runs.loading import load_model

    model, _ = load_model(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, r0["final"][k]), k


if __name__ == "__main__":
    _rank_main(*sys.argv[1:4])
