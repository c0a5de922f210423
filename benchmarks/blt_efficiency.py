"""BLT training step efficiency against the byte transformer its latent matches, old code vs new.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/blt_efficiency.py --before /tmp/blt_base \
        --report benchmarks/results/blt_efficiency.md

(`/tmp/blt_base` holds the older commit's files, e.g. `git archive fe60e7c | tar -x -C /tmp/blt_base`.)

Shapes are the study's (configs/study_cpu.yaml): a byte transformer of width 128, 4 layers,
512-byte windows, batch 8, against the study's entropy-patched BLT (latent 4 x 128, local
encoder 1 x 64 and decoder 2 x 64 with 64-byte windows, k = 2). Text: Dickens (--corpus). Patches: an
entropy model of the study's shape is trained for a few hundred steps here, its entropies of the
very windows timed are computed, and the global threshold is calibrated on them to 4.5 bytes
per patch, so the patch counts per row vary as they do in training.

Each step is a whole training step (forward, backward, the version's own AdamW: blt.train.optim).
Its FLOPs are the FLOPs EXECUTED, counted by FlopCounterMode on the same step: every matmul as
run (padding patches included), and the CPU attention kernel counted for every (query, key)
pair it is handed when given a boolean mask (it computes them all), or for the causal pairs
under `is_causal`. Achieved FLOP/s = executed FLOPs / seconds. Both code versions run in their
own processes, alternately, for several rounds (the machine is shared: the load is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from released_blt import cpu_flags  # benchmarks/ is this script's first import path

STUDY = "configs/study_cpu.yaml"
CORPUS = "/work/shared/data/dickens.txt"


def executed_sdpa_formulas() -> dict:
    """FlopCounterMode entries for the CPU attention kernel: pairs it computes (see docstring)."""
    import torch

    def pairs(query, key, is_causal):
        Tq, S = query.shape[-2], key.shape[-2]
        causal = sum(min(i + 1, S) for i in range(Tq)) if is_causal else Tq * S
        return query.numel() // (query.shape[-1] * Tq) * causal  # batch x heads x pairs

    def forward(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None, out_val=None):
        return 2 * pairs(query, key, is_causal and attn_mask is None) * (query.shape[-1] + value.shape[-1])

    def backward(grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False, *,
                 attn_mask=None, scale=None, out_val=None):
        return 2 * pairs(query, key, is_causal and attn_mask is None) * (3 * query.shape[-1] + 2 * value.shape[-1])

    forward._get_raw = backward._get_raw = True
    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


# ---- preparation: realistic entropy patches (run once, with the new code) ---------------------------


def prepare(out: Path, corpus_spec: str, entropy_steps: int, n_batches: int) -> dict:
    import dataclasses

    import torch

    from blt.config import load_config
    from blt.data.corpus import open_corpus
    from blt.data.stream import WindowSampler
    from blt.experiments.study import StudyConfig, entropy_run_config
    from blt.models.blt import complete_starts
    from blt.models.latent import pack_rows
    from blt.patching.calibration import calibrate_threshold
    from blt.patching.entropy import online_entropies
    from blt.patching.patchers import EntropyPatcher
    from blt.runs.kind_byte import load_byte_run
    from blt.train import loop

    study = load_config(StudyConfig, STUDY, [f"data.corpus={corpus_spec}"])
    ent_dir = out / "entropy"
    if not (ent_dir / "checkpoints").is_dir():
        cfg = entropy_run_config(study)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=entropy_steps, eval_bytes=20_000))
        loop.train(cfg, ent_dir)
    entropy_model, _ = load_byte_run(ent_dir, "cpu")
    corpus = open_corpus(study.data)
    T, B = study.model.context, study.data.batch_size
    windows = WindowSampler(corpus.split("train"), T, B, seed=1)
    ids = torch.stack([torch.from_numpy(windows.stream.ids(windows.window_positions(s))) for s in range(n_batches)])
    with torch.no_grad():
        ent = torch.stack([online_entropies(entropy_model, w) for w in ids])  # (n, B, T+1)
    theta, size = calibrate_threshold("entropy", ent.flatten(0, 1), ids.flatten(0, 1), study.patch_size)
    patcher = EntropyPatcher(theta)
    batches = [{"ids": w[:, :-1].contiguous(), "targets": w[:, 1:].contiguous(), "starts": patcher.starts(w, e)}
               for w, e in zip(ids, ent)]
    counts = [complete_starts(b["ids"], b["starts"])[:, :T].sum(1).tolist() for b in batches]  # patches per row
    meta = {"corpus": corpus_spec, "theta": theta, "mean_patch_size": size, "batches": n_batches, "batch_size": B,
            "context": T, "patches_per_row_mean": sum(map(sum, counts)) / (B * n_batches),
            "patches_padded_mean": sum(map(max, counts)) / n_batches,
            "latent_rows_mean": sum(pack_rows(c, max(c))[2] for c in counts) / n_batches}
    torch.save({"batches": batches, "meta": meta}, out / "batches.pt")
    return meta


# ---- a worker: one code version, both models, in its own process ------------------------------------


def worker(batches_path: Path, rounds: int, steps: int) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from blt.config import load_config
    from blt.experiments.study import StudyConfig, cell_run_config
    from blt.models.blt import ByteLatentTransformer
    from blt.models.byte_lm import ByteLM
    from blt.train.optim import build_optimizer

    torch.manual_seed(0)
    batches = torch.load(batches_path, weights_only=True)["batches"]
    study = load_config(StudyConfig, STUDY, [f"data.corpus={CORPUS}"])
    models = {}
    for name, cell in (("byte", "byte"), ("blt", "entropy")):
        cfg = cell_run_config(study, cell, steps, entropy_dir=Path("/nonexistent"))
        model = ByteLM(cfg.model) if name == "byte" else ByteLatentTransformer(cfg.blt)
        model.init_weights()
        models[name] = (model, build_optimizer(model, cfg.optim))

    def step(name, batch):
        model, opt = models[name]
        args = (batch["ids"], batch["targets"]) + ((batch["starts"],) if name == "blt" else ())
        loss, _ = model.loss(*args)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = {}
    for name in models:
        with FlopCounterMode(display=False, custom_mapping=executed_sdpa_formulas()) as counter:
            for b in batches:
                step(name, b)
        flops[name] = counter.get_total_flops() / len(batches)  # per step (AdamW adds no matmuls)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name in models:
            step(name, batches[0])  # warm
            tic = time.perf_counter()
            for i in range(steps):
                step(name, batches[i % len(batches)])
            times[name].append((time.perf_counter() - tic) / steps)
    print(json.dumps({"flops_per_step": flops, "seconds_per_step": times,
                      "bytes_per_step": int(batches[0]["targets"].numel())}))


def run_worker(code: Path, batches: Path, rounds: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--batches", str(batches),
           "--rounds", str(rounds), "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"worker for {code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the report -------------------------------------------------------------------------------------


def summarize(results: list[dict]) -> dict:
    """Per model: executed FLOPs per step, best and median seconds per step over every round,
    FLOP/s. The BLT / byte ratio: of the best times (the least disturbed by other jobs), and the
    median of the ratios within each round (byte and BLT measured back to back)."""
    out = {}
    for name in ("byte", "blt"):
        secs = sorted(s for r in results for s in r["seconds_per_step"][name])
        flops = results[0]["flops_per_step"][name]
        out[name] = {"flops": flops, "median_s": secs[len(secs) // 2], "best_s": secs[0],
                     "gflops": flops / secs[0] / 1e9, "median_gflops": flops / secs[len(secs) // 2] / 1e9,
                     "bytes_per_s": results[0]["bytes_per_step"] / secs[0]}
    out["ratio"] = out["blt"]["gflops"] / out["byte"]["gflops"]
    ratios = sorted((r["flops_per_step"]["blt"] / b) / (r["flops_per_step"]["byte"] / a)
                    for r in results for a, b in zip(r["seconds_per_step"]["byte"], r["seconds_per_step"]["blt"]))
    out["paired"] = (ratios[0], ratios[len(ratios) // 2], ratios[-1])
    return out


def report(args, meta: dict, versions: dict, loads: list, seconds: float) -> str:
    flags = cpu_flags()
    lines = [
        "# BLT training step efficiency: achieved FLOP/s against the byte transformer",
        "",
        "Command (one thread, the machine shared with other jobs):",
        "```",
        f"PYTHONPATH=. OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python benchmarks/blt_efficiency.py "
        f"--before {args.before} --corpus {args.corpus} --work {args.work} --rounds {args.rounds} "
        f"--repeats {args.repeats} --steps {args.steps} --report {args.report}",
        "```",
        f"CPU flags: {flags}",
        "",
        f"Study shapes ({STUDY}): batch {meta['batch_size']} x {meta['context']} bytes of {meta['corpus']}, "
        f"{meta['batches']} distinct batches cycled. Entropy patches: threshold {meta['theta']:.3f} calibrated "
        f"to {meta['mean_patch_size']:.2f} bytes per patch on these windows; {meta['patches_per_row_mean']:.1f} "
        f"patches per row on average, rows padded to {meta['patches_padded_mean']:.1f} (the longest row's "
        f"count); the new latent packs the {meta['batch_size']} rows into {meta['latent_rows_mean']:.2f} "
        "rows on average (the old one runs all of them).",
        "",
        "| code | model | executed GFLOP per step | s per step: best (median) | achieved GFLOP/s: best (median) "
        "| bytes/s (best) | BLT / byte FLOP/s: best (per-round median, range) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, s in versions.items():
        for name in ("byte", "blt"):
            m, (lo, mid, hi) = s[name], s["paired"]
            ratio = f"**{s['ratio']:.2f}** ({mid:.2f}, {lo:.2f}-{hi:.2f})" if name == "blt" else ""
            lines.append(f"| {label} | {name} | {m['flops'] / 1e9:.2f} | {m['best_s']:.3f} ({m['median_s']:.3f}) "
                         f"| {m['gflops']:.1f} ({m['median_gflops']:.1f}) | {m['bytes_per_s']:,.0f} | {ratio} |")
    before, after = versions["before"], versions["after"]
    lines += [
        "",
        f"BLT step time (best), after / before: {after['blt']['best_s'] / before['blt']['best_s']:.2f}x; "
        f"executed FLOPs per BLT step, after / before: {after['blt']['flops'] / before['blt']['flops']:.2f}x.",
        f"Load average (1 min) sampled between runs: {', '.join(f'{x:.1f}' for x in loads)} on "
        f"{os.cpu_count()} cores; {seconds / 60:.1f} min in all. Each row's median is over "
        f"{args.repeats} processes x {args.rounds} rounds of {args.steps} steps, byte and BLT alternating in "
        "each process and the two code versions alternating between processes.",
    ]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, help="a checkout of the older code")
    ap.add_argument("--work", type=Path, default=Path("/tmp/blt_efficiency"), help="scratch directory")
    ap.add_argument("--corpus", default=CORPUS, help="the text (default: Dickens)")
    ap.add_argument("--entropy-steps", type=int, default=300)
    ap.add_argument("--batches", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n-batches", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per process")
    ap.add_argument("--repeats", type=int, default=2, help="processes per code version")
    ap.add_argument("--steps", type=int, default=6, help="steps per round and model")
    ap.add_argument("--report", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.batches, args.rounds, args.steps)

    t0 = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parents[1]
    meta = prepare(args.work, args.corpus, args.entropy_steps, args.n_batches)
    print(json.dumps(meta), flush=True)
    codes = {"before": args.before, "after": here} if args.before else {"after": here}
    results = {label: [] for label in codes}
    loads = []
    for _ in range(args.repeats):
        for label, code in codes.items():
            loads.append(os.getloadavg()[0])
            results[label].append(run_worker(code.resolve(), args.work / "batches.pt", args.rounds, args.steps))
            print(label, json.dumps(results[label][-1]), flush=True)
    versions = {label: summarize(r) for label, r in results.items()}
    print(json.dumps(versions, indent=1))
    if args.report and args.before:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report(args, meta, versions, loads, time.time() - t0))


if __name__ == "__main__":
    main()
