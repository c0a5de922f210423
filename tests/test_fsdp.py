"""FSDP2 training (train.parallel: fsdp) on the CPU: two gloo ranks against one process.

Every run here is a tiny BLT with entropy patching (blocks in all three parts, the hash tables
and the frozen entropy model are all FSDP units), trained for 20 steps with data.shards: 2, so
its global batch is the same whether 2 ranks take 1 micro-batch each or one process takes 2
(blt.data.stream.ShardPlan). The test runs this file as the training script, under
`python -m torch.distributed.run --nproc_per_node 2` or as one plain process; its `__main__`
block can SIGKILL rank 0 in the middle of writing a checkpoint (after every rank's DCP shards
are on disk, before the checkpoint is renamed into place).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED_DATA, make_entropy_run

from blt.runs import layout

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS, KILL_AT, CKPT_EVERY = 20, 10, 5
LOSS_RTOL = 1e-5  # fp32: the acceptance bound per step


def _main(config: str, out: str, resume: str, kill_at: str) -> None:
    from blt.config import load_config
    from blt.runs.config import RunConfig
    from blt.train import checkpointing, loop

    real_files = checkpointing.checkpoint_files

    def files_or_die(full, step, *args):
        if step == int(kill_at):  # rank 0, every rank's shards written, nothing renamed yet
            os.kill(os.getpid(), signal.SIGKILL)
        return real_files(full, step, *args)

    checkpointing.checkpoint_files = files_or_die
    loop.train(load_config(RunConfig, config), Path(out), resume=resume == "resume")


def _config(tmp_path: Path, corpus: Path, entropy_run: Path, world: int) -> Path:
    local = {"dim": 32, "n_layers": 1, "n_heads": 2, "window": 16}
    tree = {
        "model_kind": "blt",
        "blt": {"context": 48, "encoder": local, "latent": {"dim": 32, "n_layers": 2, "n_heads": 2},
                "decoder": local, "k": 2, "hash_buckets": 256},
        "patching": {"kind": "entropy", "theta": 5.4, "entropy_run": str(entropy_run)},
        "data": {"corpus": str(corpus), "batch_size": 3, "shards": 2},
        "optim": {"lr": 3e-3, "warmup_steps": 3},
        "train": {"steps": STEPS, "grad_accum": 2 // world, "parallel": "fsdp", "log_every": 1, "eval_every": 0,
                  "eval_bytes": 500, "ckpt_every": CKPT_EVERY, "progress": False, "device": "cpu"},
    }
    path = tmp_path / f"world{world}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _launch(world: int, config: Path, out: Path, resume: bool = False, kill_at: int = 0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    head = [sys.executable]
    if world > 1:
        head += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    args = [__file__, str(config), str(out), "resume" if resume else "fresh", str(kill_at)]
    return subprocess.Popen(head + args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _finish(proc, ok: bool = True) -> str:
    _, err = proc.communicate(timeout=600)
    if ok:
        assert proc.returncode == 0, err[-3000:]
    else:
        assert proc.returncode != 0, err[-3000:]
    return err


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from blt.runs.loading import load_model

    model, _ = load_model(run)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_training(a: Path, b: Path, steps) -> None:
    la, lb = _losses(a), _losses(b)
    for s in steps:
        assert lb[s] == pytest.approx(la[s], rel=LOSS_RTOL), (s, la[s], lb[s])
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four runs started together (two cores): 1 process and 2 ranks uninterrupted, and 1 process
    and 2 ranks killed (SIGKILL) while writing their step-10 checkpoint."""
    tmp = tmp_path_factory.mktemp("fsdp")
    corpus = SHARED_DATA / "tinyshakespeare.txt"
    entropy_run, _ = make_entropy_run(tmp)
    configs = {w: _config(tmp, corpus, entropy_run, w) for w in (1, 2)}
    dirs = {name: tmp / name for name in ("one", "two", "one_killed", "two_killed")}
    procs = {
        "one": _launch(1, configs[1], dirs["one"]),
        "two": _launch(2, configs[2], dirs["two"]),
    }
    for name in procs:
        _finish(procs[name])
    killed = {"one_killed": _launch(1, configs[1], dirs["one_killed"], kill_at=KILL_AT),
              "two_killed": _launch(2, configs[2], dirs["two_killed"], kill_at=KILL_AT)}
    for proc in killed.values():
        _finish(proc, ok=False)
    return dirs, configs


def test_two_ranks_train_as_one_process_with_the_same_global_batch(runs):
    dirs, _ = runs
    _assert_same_training(dirs["one"], dirs["two"], range(1, STEPS + 1))
    assert len(_losses(dirs["one"])) == STEPS
    assert _losses(dirs["one"])[STEPS] < _losses(dirs["one"])[1] - 0.5  # it trained
    ckpt = dirs["two"] / "checkpoints" / "LATEST"
    assert ckpt.read_text().strip() == layout.checkpoint_name(STEPS)
    assert (dirs["two"] / "checkpoints" / ckpt.read_text().strip() / "dcp").is_dir()  # sharded


@pytest.mark.parametrize("killed, resume_world", [("two_killed", 1), ("one_killed", 2)])
def test_a_checkpoint_killed_mid_write_leaves_the_previous_one_and_resumes_at_another_world_size(
        runs, killed, resume_world):
    """SIGKILL while the step-10 checkpoint is half written: LATEST still names step 5, whole
    (its weights load), and resuming there at the other world size trains steps 6-20 exactly
    as the uninterrupted run of that size did."""
    dirs, configs = runs
    run = dirs[killed]
    root = run / "checkpoints"
    assert (root / "LATEST").read_text().strip() == layout.checkpoint_name(CKPT_EVERY)
    assert list(root.glob(f".{layout.checkpoint_name(KILL_AT)}.tmp*"))  # the half-written one is there, ignored
    _weights(run)  # the previous checkpoint loads
    _finish(_launch(resume_world, configs[resume_world], run, resume=True))
    assert not list(root.glob(".step_*.tmp*"))  # cleaned up on resume
    reference = dirs["one" if resume_world == 1 else "two"]
    _assert_same_training(reference, run, range(CKPT_EVERY + 1, STEPS + 1))


def _train_in_process(tree: dict, out: Path) -> list[float]:
    from blt.config import from_dict
    from blt.runs.config import RunConfig
    from blt.train import loop

    loop.train(from_dict(RunConfig, tree), out)
    return list(_losses(out).values())


@pytest.mark.parametrize("option", ["activation_checkpointing", "compile"])
def test_activation_checkpointing_and_compile_train_as_without(tmp_path, option):
    """Tolerances: activation checkpointing recomputes the same fp32 arithmetic (rel 1e-6);
    torch.compile's Inductor kernels may fuse and reorder reductions (rel 1e-4)."""
    tree = {"model": {"dim": 32, "n_layers": 2, "n_heads": 2, "context": 32},
            "data": {"corpus": str(SHARED_DATA / "tinyshakespeare.txt"), "batch_size": 4},
            "optim": {"lr": 3e-3, "warmup_steps": 2},
            "train": {"steps": 4, "log_every": 1, "eval_every": 0, "ckpt_every": 0, "progress": False,
                      "device": "cpu"}}
    plain = _train_in_process(tree, tmp_path / "plain")
    tree["train"][option] = True
    changed = _train_in_process(tree, tmp_path / option)
    assert changed == pytest.approx(plain, rel=1e-6 if option == "activation_checkpointing" else 1e-4)
    assert len(plain) == 4 and plain[-1] != plain[0]


def test_activation_checkpointing_under_fsdp(tmp_path):
    """The BLT (every part's blocks) under FSDP in one process, with and without checkpointing."""
    entropy_run, _ = make_entropy_run(tmp_path)
    tree = yaml.safe_load(_config(tmp_path, SHARED_DATA / "tinyshakespeare.txt", entropy_run, 1).read_text())
    tree["train"].update(steps=4, ckpt_every=0)
    plain = _train_in_process(tree, tmp_path / "plain")
    tree["train"]["activation_checkpointing"] = True
    assert _train_in_process(tree, tmp_path / "ac") == pytest.approx(plain, rel=1e-6)


if __name__ == "__main__":
    _main(*sys.argv[1:5])
