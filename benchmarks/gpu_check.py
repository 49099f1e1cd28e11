"""The whole GPU check in one command (under 5 minutes): tests, all_reduce, benchmarks.

Steps, each timed and given a status (``passed``, ``failed``, ``skipped`` with
the reason, ``missing`` or ``unsupported`` for a benchmark script that does not
exist yet or does not take ``--device``):

1. ``tests``: every test marked ``cuda`` (``python -m pytest -m cuda``).
2. ``all_reduce``: ``IntensityAccumulator.all_reduce`` across one process per
   GPU with the NCCL backend, checked bit for bit against one process folding
   every shard; skipped with the reason when fewer than two GPUs are visible.
   With ``--device cpu``: two processes on the gloo backend.
3. ``bench_derive``, ``bench_likelihood``, ``bench_train_step``: each script in
   ``benchmarks/`` with ``--device`` (and ``--quick`` with ``--quick`` or on the
   CPU). Each prints one JSON object as its last line; it is stored as is, and
   its ``targets`` (``{"met": bool, ...}``) are collected into the summary.

The GPU targets (issue 12): derive <= 1.3x one ``x.sum()`` on a 4 GiB float32
tensor with <= 64 MiB of extra GPU memory (``bench_derive``), and the loss
ratios (``bench_likelihood``, ``bench_train_step``).

Writes a JSON results file (``--out``, default ``gpu_check_results.json``) and
prints a summary. The exit status is 1 when a step failed (a benchmark that is
missing or unsupported, or a target not met, is reported but is no failure).

Run on a GPU:     python benchmarks/gpu_check.py
Run on the CPU:   python benchmarks/gpu_check.py --device cpu --quick   (CI does)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS = ("bench_derive", "bench_likelihood", "bench_train_step")
#: Each step's own time limit, in seconds; all steps together stop at BUDGET_S
#: (a step that would start with less than MIN_STEP_S left is skipped).
TIMEOUT_S = {"tests": 150, "all_reduce": 90, "bench": 120}
BUDGET_S = 285.0
MIN_STEP_S = 15.0

# ---------------------------------------------------------------- all_reduce
N_PATTERNS_PER_RANK = 5
NPHOTONS = 1e6


def _shard(rank: int) -> torch.Tensor:
    """Rank ``rank``'s patterns: deterministic, sums spanning orders of magnitude."""
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.rand(N_PATTERNS_PER_RANK + rank, 1, 32, 32, generator=g, dtype=torch.float64)
    return (x * 10.0 ** (rank - 2)).to(torch.float32)


def _all_reduce_worker(rank: int, world: int, backend: str, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    import physscale as ps

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    device = torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        acc = ps.IntensityAccumulator()
        acc.update(_shard(rank).to(device))
        acc.all_reduce()
        state = acc.state_dict()
        scale = float(acc.intensity_scale(NPHOTONS))
        Path(out_dir, f"rank{rank}.json").write_text(
            json.dumps({"state": state, "scale": scale, "device": str(device)})
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_all_reduce(device: str, timeout: float = TIMEOUT_S["all_reduce"]) -> dict[str, Any]:
    """all_reduce across processes: NCCL, one per GPU; gloo, two, with --device cpu."""
    import torch.multiprocessing as mp

    import physscale as ps

    if device == "cuda":
        world = torch.cuda.device_count()
        if world < 2:
            return {
                "status": "skipped",
                "reason": f"{world} CUDA device(s) visible; NCCL all_reduce needs at least 2",
            }
        backend = "nccl"
    else:
        world, backend = 2, "gloo"
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.spawn(
            _all_reduce_worker,
            args=(world, backend, _free_port(), out_dir),
            nprocs=world,
            join=False,
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                for process in context.processes:
                    process.terminate()
                raise subprocess.TimeoutExpired("all_reduce workers", timeout)
        results = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]
    # One process folding every shard, each on the device its rank used (the
    # same kernels, so the same bits), and an exactly rounded float64 reference.
    reference = ps.IntensityAccumulator()
    for rank in range(world):
        reference.update(_shard(rank).to(f"cuda:{rank}" if backend == "nccl" else "cpu"))
    expected_scale = float(reference.intensity_scale(NPHOTONS))
    same = all(
        r["state"] == reference.state_dict() and r["scale"] == expected_scale for r in results
    )
    shards = [_shard(rank).double() for rank in range(world)]
    total = math.fsum(v for x in shards for v in (x * x).reshape(-1).tolist())
    exact = math.sqrt(NPHOTONS / (total / sum(x.shape[0] for x in shards)))
    rel_err = abs(results[0]["scale"] - exact) / exact
    return {
        "status": "passed" if same and rel_err <= 1e-14 else "failed",
        "backend": backend,
        "world_size": world,
        "scale": results[0]["scale"],
        "bitwise_equal_to_one_process_on_every_rank": same,
        "rel_err_vs_fsum": float(f"{rel_err:.2e}"),
    }


# ---------------------------------------------------------------- tests
_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def run_tests(device: str, timeout: float = TIMEOUT_S["tests"]) -> dict[str, Any]:
    """Every ``cuda``-marked test; on the CPU they must at least collect and skip cleanly."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = proc.stdout.strip().splitlines()
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors"), 0)
    for number, kind in _SUMMARY.findall(lines[-1] if lines else ""):
        counts["errors" if kind.startswith("error") else kind] = int(number)
    ok = proc.returncode in (0, 5) and counts["failed"] == 0 and counts["errors"] == 0
    if device == "cuda" and counts["passed"] == 0:
        ok = False  # on a GPU the cuda tests must run, not skip
    return {
        "status": "passed" if ok else "failed",
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        **counts,
        "skip_reasons": [ln for ln in lines if ln.startswith("SKIPPED")],
        "tail": "\n".join(lines[-15:]) if not ok else "",
    }


# ---------------------------------------------------------------- benchmarks
def run_benchmark(
    name: str, device: str, quick: bool, timeout: float = TIMEOUT_S["bench"]
) -> dict[str, Any]:
    """One benchmark script with --device (and --quick); its last output line is JSON."""
    script = HERE / f"{name}.py"
    if not script.is_file():
        return {"status": "missing", "reason": f"benchmarks/{name}.py does not exist yet"}
    cmd = [sys.executable, str(script), "--device", device]
    if quick:
        cmd.append("--quick")
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    if proc.returncode != 0:
        if "unrecognized arguments" in proc.stderr:
            return {
                "status": "unsupported",
                "reason": f"benchmarks/{name}.py does not take {' '.join(cmd[2:])} yet",
                "tail": tail,
            }
        return {"status": "failed", "returncode": proc.returncode, "tail": tail}
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"status": "failed", "reason": "no JSON object on the last line", "tail": tail}
    return {"status": "passed", "command": " ".join(cmd[1:]), "result": result}


# ---------------------------------------------------------------- main
def _timed(fn: Any, *args: Any, limit: float, deadline: float) -> dict[str, Any]:
    """Run one step within ``limit`` seconds and before ``deadline`` (time.monotonic)."""
    start = time.perf_counter()
    timeout = min(limit, deadline - time.monotonic())
    if timeout < MIN_STEP_S:
        return {"status": "skipped", "reason": "out of time (the check stops at 5 minutes)",
                "seconds": 0.0}  # fmt: skip
    try:
        out: dict[str, Any] = fn(*args, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = {"status": "failed", "reason": f"timed out after {exc.timeout} s"}
    except Exception as exc:  # a crashed step is a failed step, reported with the others
        out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _targets(steps: dict[str, Any]) -> dict[str, Any]:
    """Each benchmark's own target verdict, plus derive's two GPU figures spelled out."""
    targets: dict[str, Any] = {}
    for name in BENCHMARKS:
        step = steps.get(name, {})
        result = step.get("result")
        if step.get("status") != "passed" or not isinstance(result, dict):
            targets[name] = {"met": None, "why": step.get("status", "not run")}
            continue
        targets[name] = result.get("targets", {"met": None, "why": "no targets reported"})
    derive = steps.get("bench_derive", {}).get("result")
    if isinstance(derive, dict):
        targets["derive_floor_ratio"] = derive["floor_ratio"]["derive"]
        targets["derive_extra_mib"] = derive["extra_mib"]["derive"]
        targets["derive_gib"] = derive["gib"]
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="small benchmark inputs")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); "
              "use --device cpu for the CPU run", file=sys.stderr)  # fmt: skip
        return 2
    quick = args.quick or args.device == "cpu"
    started = time.perf_counter()
    results: dict[str, Any] = {
        "check": "gpu_check",
        "device": args.device,
        "quick": quick,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if args.device == "cuda"
        else [],
        "steps": {},
    }
    steps = results["steps"]
    deadline = time.monotonic() + BUDGET_S
    steps["tests"] = _timed(run_tests, args.device, limit=TIMEOUT_S["tests"], deadline=deadline)
    steps["all_reduce"] = _timed(
        run_all_reduce, args.device, limit=TIMEOUT_S["all_reduce"], deadline=deadline
    )
    for name in BENCHMARKS:
        steps[name] = _timed(
            run_benchmark, name, args.device, quick, limit=TIMEOUT_S["bench"], deadline=deadline
        )
    results["targets"] = _targets(steps)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["ok"] = all(step["status"] != "failed" for step in steps.values())
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"gpu_check on {args.device} ({', '.join(results['gpus']) or 'no GPU'}), "
          f"torch {torch.__version__}, {results['duration_s']} s")  # fmt: skip
    for name, step in steps.items():
        why = step.get("reason") or step.get("why") or ""
        extra = ""
        if name == "tests":
            extra = f"{step.get('passed', 0)} passed, {step.get('skipped', 0)} skipped, " \
                    f"{step.get('failed', 0)} failed"  # fmt: skip
        elif "result" in step:
            met = step["result"].get("targets", {}).get("met")
            extra = "targets met" if met else "targets NOT met" if met is False else ""
        print(f"  {name:18} {step['status']:12} {step['seconds']:6.1f} s  {extra}{why}")
    t = results["targets"]
    if "derive_floor_ratio" in t:
        ratio, extra_mib = t["derive_floor_ratio"], t["derive_extra_mib"]
        print(f"  derive on {t['derive_gib']:g} GiB: {ratio:.2f}x one x.sum() (target <= 1.3x), "
              f"{extra_mib:.1f} MiB extra (target <= 64 MiB)")  # fmt: skip
    print(f"results: {args.out}  ({'ok' if results['ok'] else 'FAILED'})")
    return 0 if results["ok"] else 1


if __name__ == "__main__":  # spawned all_reduce workers import this as __mp_main__
    sys.exit(main())
