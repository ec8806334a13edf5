"""GPU vs CPU: the Caltech-101 white-box transductive job (1 owner) on each device.

The job (default steps, alpha=50, seed 0) runs through the in-process Flower grid
(`simulations.run.inprocess`: real Messages, the real ClientApp, no Ray) once per device,
service and owner both on that device (run-config ``device``, which the service also
sends to the owners). Each run gets a fresh cache folder, so its owner trains its teacher
on that device, and the owners' in-memory caches are emptied between runs, so the setup
phase also includes reading the features. Per-phase seconds, wall seconds and student H
are printed and saved as JSON after each device (an existing file is never overwritten):

    python -m simulations.bench.gpu --data-dir ../shared/data/caltech101 \
        --out outputs/gpu.json
    python -m simulations.bench.gpu --devices cpu rounds=2 student-epochs=1 \
        teacher-epochs=1                                   # a quick smoke run

Without a usable GPU, ``cuda`` is skipped with a message (the run fails when only GPUs
were asked for). ``--cpu-overrides student-epochs=10`` shortens the CPU run only (for a
time-limited machine); generator and student speed-ups are then compared per generator
round and per student sample-epoch, and the CPU wall time at the GPU's settings is
projected from those rates (marked ``cpu_wall_projected``).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from azsl_flower.common.models import cuda_problem
from simulations.bench.common import FiguresFile, job_device, run_job
from simulations.run.simulate import parse_overrides

PHASES = ("setup", "generator", "verification", "student", "evaluation")
JOB = {"scenario": "whitebox", "teacher": "transductive", "alpha": 50.0, "seed": 0}
RESERVED = ("device", "cache-dir")  # set per run by this benchmark
# --cpu-overrides may change these only: the projection to the GPU's settings knows how
# they scale (generator time per round, student time per verified sample and epoch).
SCALABLE = ("rounds", "student-epochs")


def environment() -> dict[str, Any]:
    """Hardware and library versions the figures were measured with."""
    import flwr
    import numpy

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "gpu": gpus[0] if gpus else None,
        "gpus": gpus,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "flwr": flwr.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def _timestamp_flower_log(t0: float) -> None:
    """Prefix Flower's log lines with seconds since start (per-round times in the log)."""

    def stamp(record: logging.LogRecord) -> bool:
        record.msg = f"[{time.monotonic() - t0:7.1f}s] {record.msg}"
        return True

    logging.getLogger("flwr").addFilter(stamp)


def run_on(device: str, overrides: dict[str, Any], owners: int = 1) -> dict[str, Any]:
    """One whole job with service and owners on ``device``; returns its figures."""
    from azsl_flower.common.config import parse_run_config

    gpu = device.startswith("cuda")
    results, process_seconds, init_seconds = run_job(device, overrides, owners)
    cfg = parse_run_config({**overrides, "device": device})
    folder = results["output_dir"]
    phases = {p: results["phase_seconds"].get(p) for p in PHASES}
    kept = int(results["verification"]["kept"])
    sample_epochs = kept * cfg.student_epochs
    return {
        "device": results["device"],
        "device_name": torch.cuda.get_device_name(torch.device(device)) if gpu else "cpu",
        "phase_seconds": phases,
        "wall_seconds": results["wall_seconds"],
        "process_seconds": process_seconds,
        "cuda_init_seconds": init_seconds if gpu else None,
        "gpu_peak_memory_bytes": torch.cuda.max_memory_allocated(device) if gpu else None,
        "student": results["student"],
        "teacher": results["teacher"],
        "student_h": results["student"]["h"],
        "generator_rounds": cfg.rounds,
        "student_epochs": cfg.student_epochs,
        "verified_samples": kept,
        "generator_seconds_per_round": phases["generator"] / cfg.rounds if cfg.rounds else None,
        "student_seconds_per_1k_sample_epochs": (
            1000 * phases["student"] / sample_epochs if sample_epochs else None
        ),
        "round_trips": results["round_trips"],
        "messages": results["messages"],
        "config": {k: v for k, v in cfg.as_dict().items() if k in (*SCALABLE, *overrides)},
        "output_dir": folder,
    }


def compare(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """CPU seconds / GPU seconds per phase and for the whole job (first GPU run vs cpu).

    Where the CPU run had other rounds or student epochs, generator and student are
    compared per round and per sample-epoch, and the CPU wall is projected to the GPU's
    settings from those rates.
    """
    gpu = next((r for d, r in runs.items() if d.startswith("cuda")), None)
    cpu = runs.get("cpu")
    if gpu is None or cpu is None:
        return {}
    same = all(gpu[k] == cpu[k] for k in ("generator_rounds", "student_epochs"))
    rate = {
        "generator": "generator_seconds_per_round",
        "student": "student_seconds_per_1k_sample_epochs",
    }
    out: dict[str, Any] = {"cpu_wall_projected": not same}
    for p in PHASES:
        g, c = gpu["phase_seconds"][p], cpu["phase_seconds"][p]
        if not same and p in rate:
            g, c = gpu[rate[p]], cpu[rate[p]]
        out[p] = c / g if g and c is not None else None
    cpu_wall = cpu["wall_seconds"]
    if not same:  # swap the CPU's generator and student seconds for the GPU run's amounts
        units = {
            "generator": gpu["generator_rounds"],
            "student": gpu["verified_samples"] * gpu["student_epochs"] / 1000,
        }
        cpu_wall -= sum(cpu["phase_seconds"][p] or 0.0 for p in rate)
        cpu_wall += sum((cpu[rate[p]] or 0.0) * units[p] for p in rate)
    out["cpu_wall_seconds"] = cpu_wall
    out["wall"] = cpu_wall / gpu["wall_seconds"]
    return out


def table(runs: dict[str, dict[str, Any]], ratio: dict[str, Any]) -> str:
    """Markdown: one row per phase, one column per device (+ cpu/gpu ratio)."""
    devices = list(runs)
    head = "| phase | " + " | ".join(f"{d} s" for d in devices)
    head += " | cpu / gpu |" if ratio else " |"
    lines = [head, "|---" * (len(devices) + 1 + bool(ratio)) + "|"]
    for name in (*PHASES, "wall"):
        secs = [
            runs[d]["wall_seconds"] if name == "wall" else runs[d]["phase_seconds"][name]
            for d in devices
        ]
        cells = ["n/a" if s is None else f"{s:.2f}" for s in secs]
        if ratio:
            cells.append(f"{ratio[name]:.2f}x" if ratio.get(name) else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| student H | "
        + " | ".join(f"{runs[d]['student_h']:.4f}" for d in devices)
        + (" | |" if ratio else " |")
    )
    if ratio.get("cpu_wall_projected"):
        lines.append(
            f"(cpu ran shorter settings: generator and student ratios are per round and per "
            f"sample-epoch; cpu wall at the gpu's settings projected: "
            f"{ratio['cpu_wall_seconds']:.1f} s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="../shared/data/caltech101")
    ap.add_argument("--feature-file", default="effnetlite0.mat")
    ap.add_argument("--devices", default="cuda,cpu", help="comma list: auto, cuda, cuda:N, cpu")
    ap.add_argument(
        "--cpu-overrides",
        default="",
        help=f"comma list of key=value for the cpu run only; keys: {', '.join(SCALABLE)}",
    )
    ap.add_argument("--owners", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    ap.add_argument("--output-dir", default="outputs/benchmark-gpu")
    ap.add_argument("--out", default="outputs/benchmark-gpu/gpu.json")
    ap.add_argument("overrides", nargs="*", help="run-config key=value, e.g. rounds=2")
    args = ap.parse_args(argv)
    t_start = time.monotonic()

    overrides = parse_overrides(args.overrides)
    cpu_overrides = parse_overrides([i for i in args.cpu_overrides.split(",") if i])
    for key in RESERVED:
        if key in overrides:
            raise SystemExit(f"{key}= is set by this benchmark per run; use --devices instead")
    if bad := sorted(set(cpu_overrides) - set(SCALABLE)):
        raise SystemExit(f"--cpu-overrides: {bad} not allowed; only {list(SCALABLE)}")
    data_dir = Path(args.data_dir).resolve()
    job = {
        "dataset": "xlsa17",
        "data-dir": str(data_dir),
        "feature-file": args.feature_file,
        **JOB,
        "output-dir": args.output_dir,
        **overrides,
    }
    if job["dataset"] == "xlsa17":
        for name in (args.feature_file, "att_splits.mat"):
            if not (data_dir / name).is_file():
                raise SystemExit(f"--data-dir {data_dir} has no {name}")
    from azsl_flower.common.config import ConfigError, parse_run_config

    try:  # a bad key or value fails before any device is touched
        parse_run_config(job)
        parse_run_config({**job, **cpu_overrides})
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    if args.threads:
        torch.set_num_threads(args.threads)

    try:  # every name the run config accepts; auto is the device it picks here
        devices = [job_device(d.strip()) for d in args.devices.split(",") if d.strip()]
    except ValueError as exc:
        raise SystemExit(f"--devices: {exc}") from None
    devices = list(dict.fromkeys(devices))  # auto,cuda on a GPU machine: one run, not two
    skipped = {d: why for d in devices if d != "cpu" and (why := cuda_problem(d))}
    for d, why in skipped.items():
        print(f"{d}: {why}; skipping it", flush=True)
    todo = [d for d in devices if d not in skipped]
    if not todo:
        raise SystemExit(f"nothing to run: {'; '.join(skipped.values())}")

    _timestamp_flower_log(t_start)
    env = environment()
    print(
        f"torch {env['torch']} (CUDA {env['torch_cuda']}), GPU {env['gpu']}, "
        f"{env['cpu_count']} CPUs, {env['torch_threads']} torch threads",
        flush=True,
    )
    figures: dict[str, Any] = {
        "benchmark": "caltech101 whitebox-transductive, in-process grid, per device",
        "environment": env,
        "config": job,
        "cpu_overrides": cpu_overrides,
        "owners": args.owners,
        "skipped": skipped,
        "runs": {},
        "speedup_cpu_over_gpu": {},
    }
    out = FiguresFile(args.out)
    for d in todo:
        print(f"--- {d}: starting at {time.monotonic() - t_start:.1f} s", flush=True)
        run = run_on(d, {**job, **cpu_overrides} if d == "cpu" else job, args.owners)
        figures["runs"][d] = run
        figures["speedup_cpu_over_gpu"] = compare(figures["runs"])
        shown = ", ".join(f"{p} {s:.1f}" for p, s in run["phase_seconds"].items() if s is not None)
        print(
            f"--- {d} ({run['device_name']}): wall {run['wall_seconds']:.1f} s [{shown}], "
            f"student H {run['student_h']:.4f}",
            flush=True,
        )
        # never overwrites another file: picks a free name, then updates its own per device
        print(f"figures so far saved to {out.write(figures)}", flush=True)
    print(table(figures["runs"], figures["speedup_cpu_over_gpu"]))
    print(f"figures saved to {out.path} ({time.monotonic() - t_start:.1f} s in all)")


if __name__ == "__main__":
    main()
