"""Loopback deployment: a real SuperLink and N SuperNodes on 127.0.0.1, TLS + node auth.

What `docs/deploy.md` walks through by hand in three terminals, as one script: it writes
certificates, SuperNode auth keys, encryption keys and each owner's own data into a work
folder, starts ``flower-superlink`` and one ``flower-supernode`` per owner as separate
processes bound to 127.0.0.1 on free ports, registers the nodes, writes the connection into
a private ``FLWR_HOME``, runs the *signed* app (``flwr run @azsl-flower/azsl-flower==VERSION
azsl --stream``: the SuperNodes start with ``--trusted-entities`` and run nothing else, see
:mod:`azsl_flower.tools.signing`), checks the run's real status (``flwr run --stream``
exits 0 when the ServerApp failed) and always stops every process it started (also on
Ctrl-C or failure). After the run it prints where a round trip's seconds went (Flower's
waits, the owners' ClientApp process start, imports, state load, crypto, compute: from the
service's timings in results.json and the owners' timing lines in their SuperNode logs) and
saves that in ``<work>/round-trip-breakdown.json``.

    python -m simulations.deploy.local demo --work /tmp/azsl-deploy --owners 2 \\
        --run-config "rounds=2 steps-per-round=2 student-epochs=2 samples-per-class=30"
    python -m simulations.deploy.local demo --work /tmp/azsl-deploy --restart-owner 1
    python -m simulations.deploy.local demo --work /tmp/azsl-deploy --owner-worker  # fast path
    python -m simulations.deploy.local owner-data --out DIR --owners 2   # data only
    python -m simulations.deploy.local owner-data --out DIR --owners 3 --partition iid \
        --data-dir ../shared/data/caltech101 --feature-file effnetlite0.mat

Owners' data: scikit-learn's digits (or any xlsa17 folder), dealt sample by sample over the
owners by the simulation's partition rules (``iid``: every class at every owner;
``class-disjoint``; ``dirichlet``), no sample twice, and written per owner as an xlsa17
folder (features file + ``att_splits.mat``), so each SuperNode reads only its own files
while the service keeps the class side only.

The work folder and the owners' data: ``simulations/deploy/layout.py``; the processes:
``simulations/deploy/processes.py``; this file: the two commands.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from pathlib import Path

from azsl_flower.tools.deploy import DeployError
from simulations.deploy.layout import DATA_FILE, DEALT, HOST, prepare, write_owner_data
from simulations.deploy.processes import LocalDeployment
from simulations.deploy.results import (
    BREAKDOWN,
    breakdown,
    format_breakdown,
    owner_timings_of,
    results_of,
    round_trip_cost,
)


def _demo(args: argparse.Namespace) -> int:
    # `kill <pid>` of this script also stops everything it started (via the with-block)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lay = prepare(args.work, args.owners)
    print(f"work folder: {lay.work} (logs in {lay.logs})")
    restarted = threading.Event()
    dep = LocalDeployment(
        lay,
        port=args.port,
        device=args.device,
        node_config=args.node_config,
        owner_worker=args.owner_worker,
    )
    with dep:
        dep.up(args.query_budget)
        print(f"SuperLink https://{HOST}:{dep.port}, nodes online: {dep.node_ids}")

        def watch(line: str) -> None:
            print(line, end="", flush=True)
            if (
                args.restart_owner
                and not restarted.is_set()
                and re.search(rf"\[generator {args.restart_after}/", line)
            ):
                restarted.set()
                print(f"[deploy_local] crashing and restarting owner-{args.restart_owner}")
                sig = signal.Signals[f"SIG{args.restart_signal}"]
                threading.Thread(
                    target=dep.restart_supernode, args=(args.restart_owner, sig), daemon=True
                ).start()

        rc, _ = dep.run(args.run_config, timeout=args.timeout, on_line=watch)
    found = results_of(lay)
    print(f"flwr run exited with {rc}; {len(found)} results.json under {lay.outputs}")
    if found:
        print(f"round-trip cost: {json.dumps(round_trip_cost(found[-1]))}")
        split = breakdown(found[-1], owner_timings_of(lay))
        (lay.work / BREAKDOWN).write_text(json.dumps(split, indent=2))
        print(f"{format_breakdown(split)}\n(saved in {lay.work / BREAKDOWN})")
    return rc


def _owner_data(args: argparse.Namespace) -> int:
    folders = write_owner_data(
        args.out, args.owners, args.data_dir, args.feature_file, args.partition, args.seed
    )
    name = DATA_FILE if args.data_dir is None else Path(args.feature_file).name
    for folder in folders:
        print(f"{folder} ({name} + att_splits.mat)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="prepare, start everything, flwr run, stop everything")
    demo.add_argument("--work", required=True, help="work folder (material is reused)")
    demo.add_argument("--owners", type=int, default=2)
    demo.add_argument("--port", type=int, default=0, help="SuperLink port (default: free)")
    demo.add_argument("--device", default="cpu", help="owners' device: auto, cpu, cuda[:N]")
    demo.add_argument("--query-budget", type=int, default=0)
    demo.add_argument("--run-config", default="", help="extra flwr run --run-config keys")
    demo.add_argument(
        "--node-config",
        default="",
        help="extra node-config keys for every owner, e.g. \"teacher-answer='probs' "
        "regulariser-answer='none' teacher-epsilon=8\"",
    )
    demo.add_argument(
        "--owner-worker",
        action="store_true",
        help="each owner answers through `azsl-flower owner serve` (torch kept in memory)",
    )
    demo.add_argument("--timeout", type=float, default=1800, help="seconds for flwr run")
    demo.add_argument("--restart-owner", type=int, default=0, help="crash+restart this owner")
    demo.add_argument("--restart-after", type=int, default=1, help="...at this generator round")
    demo.add_argument(
        "--restart-signal",
        choices=["TERM", "KILL"],
        default="TERM",
        help="TERM: clean stop (default); KILL: a crash",
    )
    demo.set_defaults(func=_demo)
    data = sub.add_parser("owner-data", help="write per-owner xlsa17 folders of one dataset")
    data.add_argument("--out", required=True)
    data.add_argument("--owners", type=int, default=2)
    data.add_argument("--data-dir", default=None, help="an xlsa17 folder (default: digits)")
    data.add_argument("--feature-file", default="res101.mat", help="its features file")
    data.add_argument("--partition", choices=DEALT, default="iid")
    data.add_argument("--seed", type=int, default=0, help="class-disjoint/dirichlet draws")
    data.set_defaults(func=_owner_data)
    args = ap.parse_args(argv)
    try:
        return int(args.func(args))
    except DeployError as exc:
        print(f"deploy_local: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
