"""Planner speed: prints figures (not a timed test).

1. The card command `plan --model qwen3-235b --gpus a100-80g`, end to end (process start to exit),
   median of 5 runs (target: under 3 s on a 2-core machine).
2. `gpuplan sweep` over the 8 Qwen3 sizes x every catalog GPU x every workload (target: under 60 s).
3. CP-SAT against the exhaustive evaluator on instances that grow (more GPU types, larger counts,
   released defaults): combinations, seconds of each, their ratio, and whether the optima agree.

    python benchmarks/planner_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _command(*args: str) -> list[str]:
    """`gpuplan plan|sweep ...` as a fresh process (the `plan` console script is `gpuplan plan`)."""
    return [sys.executable, "-m", "cli.main", *args]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr}")
    return seconds


def card(runs: int) -> None:
    cmd = _command("plan", "--model", "qwen3-235b", "--gpus", "a100-80g")
    times = [wall(cmd) for _ in range(runs)]
    print(f"card command, process start to exit: median {statistics.median(times):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)}; target < 3 s)")


def sweep() -> None:
    cmd = _command("sweep", "--json")
    seconds = wall(cmd)
    print(f"sweep, 8 Qwen3 sizes x all catalog GPUs x 5 workloads: {seconds:.1f} s (target < 60 s)")


def growing(quick: bool) -> None:
    from catalog import default_catalog
    from planner.domains import GpuAllowance, Instance, default_instance_fields
    from planner.exhaustive import solve_exhaustive
    from planner.solver import PlanSolver

    cat = default_catalog()

    def inst(model, workload, gpus, objective="hourly", all_choices=False):
        allowed = tuple(GpuAllowance(gpu=cat.gpu(n), max_count=c) for n, c in gpus)
        return Instance(model=cat.model(model), workload=workload, gpus=allowed, objective=objective,
                        all_choices=all_choices, **default_instance_fields(workload))

    four = [("h100", None), ("a100-80g", None), ("l40s", None), ("rtx4090", None)]
    cases = [
        ("8B full, 1 type x 8", inst("qwen3-8b", "full", [("h100", 8)])),
        ("8B full, 1 type, any count", inst("qwen3-8b", "full", [("h100", None)])),
        ("8B full, 2 types", inst("qwen3-8b", "full", four[:2])),
        ("8B full, 2 types, job objective", inst("qwen3-8b", "full", four[:2], objective="job")),
        ("8B full, 4 types", inst("qwen3-8b", "full", four)),
        ("8B full, 4 types, all choices", inst("qwen3-8b", "full", four, all_choices=True)),
        ("30B-A3B full (MoE), 4 types", inst("qwen3-30b", "full", four)),
        ("30B-A3B full, 4 types, all choices", inst("qwen3-30b", "full", four, all_choices=True)),
        ("235B pretrain, 2 types", inst("qwen3-235b", "pretrain", four[:2])),
        ("235B full, 4 types, all choices", inst("qwen3-235b", "full", four, all_choices=True)),
    ]
    if quick:
        cases = cases[:5]
    print(f"\n{'instance':34s} {'combinations':>14s} {'exhaustive s':>13s} {'CP-SAT s':>9s} {'ratio':>7s}  agree")
    for label, instance in cases:
        best = solve_exhaustive(instance)
        start = time.perf_counter()
        result = PlanSolver(instance).solve(time_limit=60)
        cpsat = time.perf_counter() - start
        agree = (result.objective == best.objective and
                 (result.choice is None or result.choice.strategy.num_gpus == best.gpus))
        print(f"{label:34s} {best.evaluated:14,d} {best.seconds:13.2f} {cpsat:9.2f} "
              f"{best.seconds / cpsat:7.1f}  {'yes' if agree else 'NO'} ({result.status})")
    print("ratio = exhaustive seconds / CP-SAT seconds (CP-SAT includes building its model and the"
          " throughput tie-break)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 card runs, no sweep, 5 growing instances")
    args = parser.parse_args()
    card(3 if args.quick else 5)
    if not args.quick:
        sweep()
    growing(args.quick)


if __name__ == "__main__":
    main()
