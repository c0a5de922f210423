"""Running a list of study jobs: in this process, or several at a time in processes of their own.

With one worker the jobs run here, one after the other. With more, each job runs in a spawned
process of its own (one torch thread, its own process group, so a terminal's Ctrl-C reaches
only the study), at most `workers` at once. The child's exit status says how the job ended:
0 done (its result.json is written), 128 + N stopped by signal N (its checkpoint is saved), 2 a
UserError and 1 anything else (the message is the last line of the job's study.log). A signal
to the study is passed on to every running job and no new one starts; a failed job makes the
others stop the same way (SIGTERM) before the study reports it.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from pathlib import Path

import torch

from blt.errors import UserError
from blt.experiments.study_config import LOG_FILE, RESULT_FILE
from blt.files import read_json
from blt.train.loop import StopRequest

EXIT_USER_ERROR, EXIT_FAILED = 2, 1


class Stopped(Exception):
    """A signal stopped the study's jobs (their checkpoints are saved); `results` holds the
    results of the jobs that finished."""

    def __init__(self, signal_name: str, results: list | None = None):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.results = results or []


def run_jobs(todo: list, work, child_work, study, out_dir: Path, workers: int, bar) -> list[dict]:
    """The results of `todo`'s jobs, in order. work(job) -> result runs one job in this process;
    child_work(study, job, out_dir), a module-level function, runs one in a child process.
    Stopped (with the finished jobs' results) when a signal stopped them."""
    if workers == 1 or len(todo) <= 1:
        results = []
        for job in todo:
            bar.set_description(f"{job.name} @ {job.budget:.3g}")
            try:
                results.append(work(job))
            except Stopped as e:
                raise Stopped(e.signal_name, results) from None
            bar.update(1)
        return results
    return _in_processes(todo, child_work, study, Path(out_dir), workers, bar)


def _child(child_work, study, job, out_dir: str) -> None:
    """A job in a process of its own: see the module docstring for its exit status."""
    os.setpgrp()  # the terminal's Ctrl-C goes to the study, which passes it on
    torch.set_num_threads(1)
    log = job.run_dir(out_dir) / LOG_FILE
    try:
        child_work(study, job, Path(out_dir))
    except Stopped as e:
        os._exit(128 + signal.Signals[e.signal_name].value)
    except UserError as e:
        _append(log, f"error: {e}")
        os._exit(EXIT_USER_ERROR)
    except BaseException:
        _append(log, traceback.format_exc() + "error: the job failed (traceback above)")
        os._exit(EXIT_FAILED)
    os._exit(0)


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text.rstrip("\n") + "\n")


class _PassSignalsOn(StopRequest):
    """While active, SIGINT and SIGTERM to the study are recorded (`signum`, the first) and sent
    to every running job, a second one too (a job's own second SIGINT stops it at once)."""

    def __init__(self, running: dict):
        super().__init__()
        self.running = running

    def _handle(self, signum, frame):
        self.signum = self.signum or signum
        self.send(signum)

    def send(self, signum) -> None:
        for proc in self.running.values():
            if proc.exitcode is None:
                os.kill(proc.pid, signum)


def _in_processes(todo: list, child_work, study, out_dir: Path, workers: int, bar) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    pending, running, results = list(todo), {}, {}
    stopped_by, failure, shown = None, None, -1
    with _PassSignalsOn(running) as signals:
        while pending or running:
            while pending and len(running) < workers and signals.signum is None and failure is None:
                job = pending.pop(0)
                proc = ctx.Process(target=_child, args=(child_work, study, job, str(out_dir)), name=f"study {job.name}")
                proc.start()
                running[job] = proc
            if len(running) != shown:  # redrawn only on a change (a log file gets every redraw)
                shown = len(running)
                bar.set_description(f"{shown} running")
            for job, proc in list(running.items()):
                proc.join(timeout=0.2)
                if proc.exitcode is None:
                    continue
                del running[job]
                code = proc.exitcode
                if code == 0:
                    results[job] = read_json(job.run_dir(out_dir) / RESULT_FILE)
                    bar.update(1)
                elif code > 128 or code < 0:  # stopped by a signal (negative: killed by it)
                    stopped_by = stopped_by or signal.Signals(code - 128 if code > 128 else -code).name
                elif failure is None:
                    log = job.run_dir(out_dir) / LOG_FILE
                    last = log.read_text().strip().splitlines()[-1] if log.is_file() else "no log"
                    failure = f"study job {job.name} at {job.budget:.3g} FLOPs failed: {last.removeprefix('error: ')} " \
                              f"(see {log})"
                    signals.send(signal.SIGTERM)  # the others save a checkpoint and stop
    if failure is not None:
        raise UserError(failure)
    done = [results[job] for job in todo if job in results]
    if signals.signum is not None or stopped_by is not None:
        name = signal.Signals(signals.signum).name if signals.signum is not None else stopped_by
        raise Stopped(name, done)
    return done
