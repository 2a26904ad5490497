"""Benchmark: a default run on the whole flowers set killed with SIGKILL in stage 2 and resumed, against the same
run uninterrupted (same seed), both with the shared MobileNetV2-0.35 weights, in one script run.

    python benchmarks/resume.py [--kill-after-stage-epochs 3] [--out benchmarks/results/resume.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FLOWERS, REPO, RESULTS, WEIGHTS, machine, require_shared_data, write_results

COMMAND = [sys.executable, "-m", "tfl.cli", "finetune", "--data", str(FLOWERS), "--alpha", "0.35",
           "--weights", str(WEIGHTS)]


def summary(run: Path, wall: float) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    rows = list(csv.DictReader((run / "history.csv").open()))
    return {"val_accuracy": metrics["accuracy"], "epochs": len(rows), "best_epoch": metrics["best_epoch"],
            "wall_seconds": round(wall, 1)}


def run_to_completion(args: list[str]) -> float:
    start = time.time()
    subprocess.run(args, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.time() - start


def killed_and_resumed(runs: Path, kill_after: int) -> dict:
    start = time.time()
    process = subprocess.Popen(COMMAND + ["--output", str(runs), "--name", "killed"], cwd=REPO,
                               stdout=subprocess.DEVNULL)
    state_path = runs / "killed.partial" / "checkpoint" / "state.json"
    while True:
        if process.poll() is not None:
            raise SystemExit("the run finished before it could be killed")
        try:
            state = json.loads(state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        if state and state["stage"] == 1 and state["stage_epochs"] >= kill_after:
            break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = {"stage": 2, "stage_epochs_done": state["stage_epochs"], "seconds": round(time.time() - start, 1)}
    resume_seconds = run_to_completion(COMMAND[:4] + ["--resume", "killed", "--output", str(runs)])
    result = summary(runs / "killed", time.time() - start)
    return result | {"killed_at": killed_at, "resume_seconds": round(resume_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-after-stage-epochs", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "resume.json"))
    args = parser.parse_args()
    require_shared_data()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        wall = run_to_completion(COMMAND + ["--output", str(runs), "--name", "plain"])
        plain = summary(runs / "plain", wall)
        resumed = killed_and_resumed(runs, args.kill_after_stage_epochs)
    print(f"{'run':<28} {'val acc':>8} {'epochs':>7} {'wall':>8}")
    print(f"{'uninterrupted':<28} {plain['val_accuracy']:>8.4f} {plain['epochs']:>7} {plain['wall_seconds']:>7.0f}s")
    print(f"{'killed in stage 2, resumed':<28} {resumed['val_accuracy']:>8.4f} {resumed['epochs']:>7} "
          f"{resumed['wall_seconds']:>7.0f}s  (killed after {resumed['killed_at']['stage_epochs_done']} stage-2 "
          f"epochs; resume took {resumed['resume_seconds']:.0f}s)")
    write_results(args.out, {"machine": machine(), "dataset": str(FLOWERS.name), "uninterrupted": plain,
                             "killed_and_resumed": resumed})


if __name__ == "__main__":
    main()
