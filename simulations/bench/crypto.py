"""Cost of the end-to-end encryption: AEAD throughput and a Caltech-101 run with vs without.

    python -m simulations.bench.crypto --data-dir ../shared/data/caltech101

1. Throughput (MB/s) of sealing + opening one message, per cipher suite and size, with and
   without the serialisation of a bundle of float32 arrays into the plaintext that is sealed.
2. The white-box Caltech-101 run (1 owner, default steps, same seed) with
   ``encryption=aes-256-gcm`` and with ``encryption=none``; overhead = relative wall-time
   difference (target <= 5 %), beside the service's own sealing/opening seconds.
``--repeats N`` alternates the two settings N times and compares medians; ``--runner
inprocess --device cuda`` runs service and owners in one process (no Ray), so both ends'
sealing and opening are inside the measured time on a quiet machine.
Figures are printed and saved as JSON (an existing file is never overwritten).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from azsl_flower.wire import codec
from azsl_flower.wire.crypto import Channel, generate_keypair
from simulations.bench.common import FiguresFile, caltech_run_config, job_device, run_case, run_job
from simulations.run.simulate import RUNNERS, parse_overrides


def throughput(suite: str, megabytes: int, repeats: int = 3) -> dict[str, float]:
    """Seal+open of one message of ``megabytes`` float32 features, best of ``repeats``."""
    a, b = generate_keypair(), generate_keypair()
    tx, rx = Channel(a, b.public_key(), 1, suite), Channel(b, a.public_key(), 1, suite)
    x = np.random.default_rng(0).standard_normal(megabytes * 2**18).astype(np.float32)
    rd = RecordDict()
    rd["arrays"] = ArrayRecord({"x": Array(x)})
    best_aead, best_total = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain = codec.to_bytes(codec.bundle([rd]))
        t1 = time.perf_counter()
        sealed = tx.seal("query.feedback", "bench", "service", "1", plain)
        rx.open(*sealed, "query.feedback", "service", "1")
        t2 = time.perf_counter()
        codec.unbundle(codec.from_bytes(plain))
        t3 = time.perf_counter()
        best_aead = min(best_aead, t2 - t1)
        best_total = min(best_total, t3 - t0)
    return {
        "suite": suite,
        "megabytes": megabytes,
        "aead_mb_per_s": megabytes / best_aead,
        "with_serialisation_mb_per_s": megabytes / best_total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="../shared/data/caltech101")
    ap.add_argument("--feature-file", default="effnetlite0.mat")
    ap.add_argument("--alpha", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-runs", action="store_true", help="throughput only")
    ap.add_argument("--output-dir", default="outputs/benchmark-crypto")
    ap.add_argument("--out", default="docs/benchmarks/encryption.json")
    ap.add_argument("--repeats", type=int, default=1, help="runs per suite, alternating")
    ap.add_argument("overrides", nargs="*", help="extra run-config key=value, e.g. rounds=5")
    ap.add_argument("--runner", choices=RUNNERS, default="ray")
    ap.add_argument("--device", default="auto", help="with --runner inprocess: cpu, cuda...")
    args = ap.parse_args()
    if args.runner != "ray" and not args.skip_runs:
        try:  # a device name no job accepts fails before the first run, not after it
            job_device(args.device)
        except ValueError as exc:
            raise SystemExit(f"--device: {exc}") from None

    rows = [throughput(s, mb) for s in ("aes-256-gcm", "chacha20-poly1305") for mb in (1, 16, 128)]
    print("| suite | MB | AEAD seal+open MB/s | with serialisation MB/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['suite']} | {r['megabytes']} | {r['aead_mb_per_s']:.0f} "
            f"| {r['with_serialisation_mb_per_s']:.0f} |"
        )
    runs: dict[str, list[dict]] = {}
    out = FiguresFile(args.out)  # written after every run: a later failure loses none
    out.write({"throughput": rows, "runs": runs})
    if not args.skip_runs:
        base = caltech_run_config(args, **parse_overrides(args.overrides))
        suites = ("none", "aes-256-gcm")
        for rep in range(args.repeats):  # alternate, so drift in machine load hits both
            for suite in suites:
                if args.runner == "ray":
                    r = run_case({**base, "encryption": suite})
                else:
                    r, _, _ = run_job(args.device, {**base, "encryption": suite})
                runs.setdefault(suite, []).append(
                    {
                        "wall_seconds": r["wall_seconds"],
                        "setup_seconds": r["phase_seconds"]["setup"],
                        "phase_seconds": r["phase_seconds"],
                        "student_h": r["student"]["h"],
                        "round_trips": r["round_trips"],
                        "encryption": r["encryption"],
                        "device": r["device"],
                        "output_dir": r["output_dir"],
                    }
                )
                out.write({"throughput": rows, "runs": runs})
                print(
                    f"[{rep + 1}/{args.repeats}] {suite}: wall {r['wall_seconds']:.1f} s, "
                    f"student H {r['student']['h']:.3f}",
                    flush=True,
                )
        wall = {k: statistics.median(x["wall_seconds"] for x in runs[k]) for k in suites}
        # set-up trains the owner's teacher (no crypto to speak of): the rest is the protocol
        talk = {
            k: statistics.median(x["wall_seconds"] - x["setup_seconds"] for x in runs[k])
            for k in suites
        }
        enc = runs["aes-256-gcm"][0]
        overhead = wall["aes-256-gcm"] / wall["none"] - 1
        talk_overhead = talk["aes-256-gcm"] / talk["none"] - 1
        service_share = enc["encryption"]["seconds"] / enc["wall_seconds"]
        print(
            f"encryption overhead (median of {args.repeats}): {100 * overhead:+.1f} % of wall "
            f"time (target <= 5 %), {100 * talk_overhead:+.1f} % of the phases after set-up; "
            f"service-side sealing/opening {enc['encryption']['seconds']:.2f} s "
            f"({100 * service_share:.2f} %), ciphertext/plaintext bytes "
            f"{enc['encryption']['ciphertext_bytes'] / enc['encryption']['plaintext_bytes']:.4f}"
        )
        runs["median_wall_seconds"] = wall  # type: ignore[assignment]
        runs["median_seconds_after_setup"] = talk  # type: ignore[assignment]
        runs["overhead_after_setup_fraction"] = talk_overhead  # type: ignore[assignment]
        runs["runner"] = f"{args.runner} ({enc['device']})"  # type: ignore[assignment]
        runs["overhead_fraction"] = overhead  # type: ignore[assignment]
        runs["service_crypto_fraction"] = service_share  # type: ignore[assignment]
    print(f"figures saved to {out.write({'throughput': rows, 'runs': runs})}")


if __name__ == "__main__":
    main()
