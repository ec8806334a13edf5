"""Loopback deployment: a real SuperLink and N SuperNodes on 127.0.0.1, TLS + node auth.

What `docs/deploy.md` walks through by hand in three terminals, as one script: it writes
certificates, SuperNode auth keys, encryption keys and each owner's own data into a work
folder, starts ``flower-superlink`` and one ``flower-supernode`` per owner as separate
processes bound to 127.0.0.1 on free ports, registers the nodes, writes the connection into
a private ``FLWR_HOME``, runs the *signed* app (``flwr run @azsl-flower/azsl-flower==VERSION
azsl --stream``: the SuperNodes start with ``--trusted-entities`` and run nothing else, see
:mod:`azsl_flower.tools.signing`), checks the run's real status (``flwr run --stream``
exits 0 when the ServerApp failed) and always stops every process it started (also on
Ctrl-C or failure).

    python -m simulations.deploy_local demo --work /tmp/azsl-deploy --owners 2 \\
        --run-config "rounds=2 steps-per-round=2 student-epochs=2 samples-per-class=30"
    python -m simulations.deploy_local demo --work /tmp/azsl-deploy --restart-owner 1
    python -m simulations.deploy_local owner-data --out DIR --owners 2   # data only
    python -m simulations.deploy_local owner-data --out DIR --owners 3 --partition iid \
        --data-dir ../shared/data/caltech101 --feature-file effnetlite0.mat

Owners' data: scikit-learn's digits (or any xlsa17 folder), dealt sample by sample over the
owners by the simulation's partition rules (``iid``: every class at every owner;
``class-disjoint``; ``dirichlet``), no sample twice, and written per owner as an xlsa17
folder (features file + ``att_splits.mat``), so each SuperNode reads only its own files
while the service keeps the class side only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from azsl_flower.tools.deploy import generate_node_auth, generate_tls, write_connection
from azsl_flower.tools.signing import AppRegistry, SignedApp, generate_signing_key, sign_app
from azsl_flower.wire.crypto import write_keypair
from simulations.local_superlink import free_port
from simulations.local_superlink import stop as stop_by_flwr_home

ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "azsl"
DATA_FILE = "digits.mat"
SIGNER = "azsl-reviewer"  # the public_key_id owners trust in --trusted-entities
HOST = "127.0.0.1"


class DeployError(RuntimeError):
    """A step of the loopback deployment failed; the message names it and the log file."""


# -- owners' data ----------------------------------------------------------------------------


def write_owner_data(
    out_dir: str | Path,
    owners: int,
    data_dir: str | Path | None = None,
    feature_file: str = "res101.mat",
    partition: str = "iid",
    seed: int = 0,
    dirichlet_beta: float = 0.5,
) -> list[Path]:
    """One xlsa17 folder per owner holding only that owner's share of one dataset.

    ``data_dir``: an xlsa17 folder (default: scikit-learn's digits). Every sample goes to
    one owner by the simulation's rule for ``partition`` (:mod:`azsl_flower.owner.partition`:
    ``iid`` deals a fixed shuffle round-robin, so each owner has every class;
    ``class-disjoint`` gives each class to one owner; ``dirichlet`` cuts each class at
    Dirichlet(``dirichlet_beta``) shares), and no sample is held twice. Indices are 1-based
    as in xlsa17; the class list and attributes are the same at every owner and at the
    service. The features file keeps its name (digits: ``digits.mat``).
    """
    import scipy.io

    from azsl_flower.owner.data import SPLIT_KEYS, digits_table, read_xlsa17
    from azsl_flower.owner.partition import class_holders, deal_samples, dirichlet_proportions

    if owners < 1:
        raise ValueError(f"owners={owners}: give at least one owner")
    if partition not in ("iid", "class-disjoint", "dirichlet"):
        raise ValueError(f"partition={partition!r}: iid, class-disjoint or dirichlet")
    table = digits_table() if data_dir is None else read_xlsa17(data_dir, feature_file)
    name = DATA_FILE if data_dir is None else Path(feature_file).name
    every = np.arange(table.labels.size)
    seen = np.unique(table.labels[table.splits["trainval_loc"]])
    unseen = np.unique(table.labels[table.splits["test_unseen_loc"]])
    held = class_holders(partition, owners, seen, unseen, len(table.names), seed)
    props = (
        dirichlet_proportions(owners, len(table.names), dirichlet_beta, seed)
        if partition == "dirichlet"
        else None
    )
    holder = deal_samples(every, table.labels, partition, held, props, seed)  # sample -> owner
    folders = []
    for o in range(owners):
        mine = {k: v[holder[v] == o] for k, v in table.splits.items() if k in SPLIT_KEYS}
        keep = np.unique(np.concatenate(list(mine.values())))
        if not keep.size:
            raise ValueError(f"owner {o + 1} of {owners} gets no sample; use fewer owners")
        where = {int(g): i for i, g in enumerate(keep)}  # global row -> row in this file
        folder = Path(out_dir).expanduser() / f"owner-{o + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in (folder / name, folder / "att_splits.mat"):
            if f.exists():
                raise FileExistsError(f"{f} exists; choose another --out (data is not replaced)")
        scipy.io.savemat(
            folder / name,
            {
                "features": table.features[keep].T.astype(np.float32),  # d x N, as xlsa17
                "labels": (table.labels[keep] + 1).reshape(-1, 1).astype(np.float64),
            },
        )
        names = np.empty((len(table.names), 1), dtype=object)
        names[:, 0] = table.names
        splits = {
            k: (np.array([where[int(g)] for g in v], dtype=np.float64) + 1).reshape(-1, 1)
            for k, v in mine.items()
        }
        scipy.io.savemat(
            folder / "att_splits.mat", {"att": table.att.T, "allclasses_names": names, **splits}
        )
        folders.append(folder)
    return folders


# -- layout and material ---------------------------------------------------------------------


@dataclass
class Layout:
    """Where everything lives inside the work folder (one folder per party)."""

    work: Path
    owners: int

    @property
    def tls(self) -> Path:  # the SuperLink operator's; ca.pem is what others receive
        return self.work / "superlink" / "tls"

    @property
    def ca(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def service(self) -> Path:  # the AI service: its key and the owners' allow-list
        return self.work / "service"

    @property
    def allow_list(self) -> Path:
        return self.service / "allowed-owners"

    @property
    def flwr_home(self) -> Path:  # the `flwr` user's (the AI service): config.toml
        return self.work / "flwr-home"

    def home_of(self, name: str) -> Path:
        """FLWR_HOME of one process: each party installs the app into its own."""
        if name == "superlink":
            return self.work / "superlink" / "flwr-home"
        if name.startswith("supernode-"):
            return self.owner(int(name.split("-")[1])) / "flwr-home"
        return self.flwr_home

    def homes(self) -> list[Path]:
        names = ["flwr", "superlink", *(f"supernode-{i}" for i in range(1, self.owners + 1))]
        return [self.home_of(n) for n in names]

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def outputs(self) -> Path:
        return self.work / "outputs"

    def owner(self, i: int) -> Path:
        """Owner i's own folder (1-based): keys, data, teacher cache."""
        return self.work / f"owner-{i}"

    @property
    def signer(self) -> Path:  # whoever reviews and signs the app (here: the service)
        return self.work / "signer"

    @property
    def apps(self) -> Path:  # the signed app bundles the local registry serves
        return self.work / "apps"

    def trusted(self, i: int) -> Path:
        """Owner i's ``--trusted-entities`` file: the signers whose apps it runs."""
        return self.owner(i) / "trusted-entities.yaml"

    def node_key(self, i: int) -> Path:
        return self.owner(i) / "auth" / f"owner-{i}.node.key"

    def node_pub(self, i: int) -> Path:
        return self.owner(i) / "auth" / f"owner-{i}.node.pub"

    def node_config(self, i: int, device: str = "cpu", query_budget: int = 0) -> str:
        """The ``--node-config`` string of owner i (TOML values, space separated)."""
        o = self.owner(i)
        pairs = {
            "data-dir": o / "data",
            "feature-file": DATA_FILE,
            "owner-key": o / "keys" / f"owner-{i}.key",
            "service-pub": o / "keys" / "service.pub",
            "cache-dir": o / "cache",
            "device": device,
        }
        text = " ".join(f"{k}='{v}'" for k, v in pairs.items())
        return text + (f" query-budget={int(query_budget)}" if query_budget else "")

    def run_config(self) -> str:
        """The deployment keys of ``flwr run --run-config`` (add the job's own keys)."""
        return (
            f"service-key='{self.service / 'service.key'}' owner-keys='{self.allow_list}' "
            f"output-dir='{self.outputs}'"
        )


def _copy(src: Path, dst: Path) -> None:
    """Hand a public file to the other side (here: a copy; for real: e-mail, USB...)."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


def prepare(work: str | Path, owners: int = 2) -> Layout:
    """Generate what is missing: TLS, node auth keys, X25519 keys, allow-list, owner data."""
    lay = Layout(Path(work).expanduser().resolve(), owners)
    lay.work.mkdir(parents=True, exist_ok=True)
    if not lay.ca.exists():
        generate_tls(lay.tls, ["127.0.0.1", "localhost"])
    if not (lay.service / "service.key").exists():
        write_keypair(lay.service, "service")
    if not (lay.signer / f"{SIGNER}.sign.key").exists():
        generate_signing_key(lay.signer, SIGNER)
    lay.allow_list.mkdir(parents=True, exist_ok=True)
    if any(not (lay.owner(i) / "data").exists() for i in range(1, owners + 1)):
        tmp = lay.work / ".owner-data"
        for i, folder in enumerate(write_owner_data(tmp, owners), start=1):
            lay.owner(i).mkdir(parents=True, exist_ok=True)
            if (lay.owner(i) / "data").exists():
                shutil.rmtree(folder)
            else:
                folder.rename(lay.owner(i) / "data")
        tmp.rmdir()
    for i in range(1, owners + 1):
        o = lay.owner(i)
        if not lay.node_key(i).exists():
            generate_node_auth(o / "auth", f"owner-{i}")
        if not (o / "keys" / f"owner-{i}.key").exists():
            write_keypair(o / "keys", f"owner-{i}")
        _copy(o / "keys" / f"owner-{i}.pub", lay.allow_list / f"owner-{i}.pub")
        _copy(lay.service / "service.pub", o / "keys" / "service.pub")
        _copy(lay.ca, o / "ca.pem")
        _copy(lay.signer / "trusted-entities.yaml", lay.trusted(i))
        (o / "cache").mkdir(exist_ok=True)
    return lay


# -- processes -------------------------------------------------------------------------------


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"process exited with {proc.returncode}; see {log}")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(0.5)
            s.connect((HOST, port))
            return
        time.sleep(0.2)
    raise DeployError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s; see {log}")


@dataclass
class LocalDeployment:
    """Start, watch and always stop a loopback SuperLink + SuperNodes (a context manager)."""

    layout: Layout
    port: int = 0
    device: str = "cpu"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    node_ids: dict[int, int] = field(default_factory=dict)
    node_ports: dict[int, int] = field(default_factory=dict)
    restarts: list[tuple[int, str, float]] = field(default_factory=list)
    budgets: dict[int, int] = field(default_factory=dict)
    app: SignedApp | None = None  # the signed app the SuperLink fetches from the registry
    registry: AppRegistry | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        bindir = Path(sys.executable).parent
        self.env = dict(
            os.environ,
            FLWR_HOME=str(self.layout.flwr_home),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            # the SuperNodes' ClientApp processes import azsl_flower from this tree
            PYTHONPATH=os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )
        self._bin = bindir

    # lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log = self.layout.logs / f"{name}.log"
        home = self.layout.home_of(name)
        home.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as f:
            f.write(f"\n$ {' '.join(argv)}\n".encode())
            f.flush()
            # own session: stop() signals the process group, children included
            proc = subprocess.Popen(
                argv,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env, FLWR_HOME=str(home), **(env or {})),
                cwd=self.layout.work,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def _kill(self, name: str, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            self._reap(proc, grace)

    @staticmethod
    def _reap(proc: subprocess.Popen, grace: float = 15.0) -> None:
        """Wait for the leader, then SIGKILL whatever is left of its process group."""
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
            os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Every process this deployment started, then anything left with one of its
        FLWR_HOMEs (a ServerApp or ClientApp process that escaped its group)."""
        for name in [n for n in self.procs if n != "superlink"]:  # nodes sign off first
            self._kill(name)
        self._kill("superlink")
        for home in self.layout.homes():
            stop_by_flwr_home(str(home))
        if self.registry is not None:
            self.registry.__exit__()
            self.registry = None

    # steps ----------------------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """One short `flwr` CLI call against this deployment's FLWR_HOME."""
        return subprocess.run(
            [str(self._bin / "flwr"), *args],
            env=self.env,
            cwd=self.layout.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start_superlink(self, timeout: float = 60) -> None:
        lay = self.layout
        db = lay.work / "superlink" / "state.db"
        # --database keeps registrations across SuperLink restarts; a new demo starts clean
        # (the same keys could not be registered twice otherwise)
        if "superlink" not in self.procs and not self.node_ids:
            db.unlink(missing_ok=True)
        if self.registry is None:  # sign this tree's app and serve it as Flower Hub would
            key = lay.signer / f"{SIGNER}.sign.key"
            self.app = sign_app(ROOT, key, SIGNER, lay.apps)
            self.registry = AppRegistry([self.app]).__enter__()
        proc = self._spawn(
            "superlink",
            [
                str(self._bin / "flower-superlink"),
                "--ssl-certfile",
                str(lay.tls / "server.pem"),
                "--ssl-keyfile",
                str(lay.tls / "server.key"),
                "--ssl-ca-certfile",
                str(lay.ca),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--database",
                str(db),
                "--host",
                HOST,
                "--port",
                str(self.port),
            ],
            env={"FLWR_SUPERGRID_API_URL": self.registry.url},
        )
        _wait_port(self.port, proc, timeout, lay.logs / "superlink.log")
        write_connection(
            CONNECTION,
            f"{HOST}:{self.port}",
            lay.ca,
            home=lay.flwr_home,
            make_default=True,
            replace=True,
        )

    def register(self, i: int) -> int:
        """`flwr supernode register` owner i's public key; returns its node id."""
        out = self.flwr(
            "supernode", "register", str(self.layout.node_pub(i)), CONNECTION, "--format", "json"
        )
        match = re.search(r'"node-id":\s*"?(\d+)', out.stdout)
        if out.returncode != 0 or not match:
            raise DeployError(f"registering owner-{i} failed:\n{out.stdout}\n{out.stderr}")
        self.node_ids[i] = int(match.group(1))
        return self.node_ids[i]

    def start_supernode(self, i: int, query_budget: int | None = None) -> subprocess.Popen:
        lay = self.layout
        self.node_ports.setdefault(i, free_port())  # a restart keeps its Runtime API port
        if query_budget is not None:
            self.budgets[i] = query_budget
        return self._spawn(
            f"supernode-{i}",
            [
                str(self._bin / "flower-supernode"),
                "--superlink",
                f"{HOST}:{self.port}",
                "--root-certificates",
                str(lay.owner(i) / "ca.pem"),
                "--auth-supernode-private-key",
                str(lay.node_key(i)),
                "--trusted-entities",  # runs only apps signed by these keys
                str(lay.trusted(i)),
                "--node-config",
                lay.node_config(i, self.device, self.budgets.get(i, 0)),
                "--host",
                HOST,
                "--port",
                str(self.node_ports[i]),
                # no dependency flag: SuperNodes never install (only the SuperLink does)
            ],
        )

    def nodes(self) -> dict[int, str]:
        """Node id -> status as the SuperLink reports it."""
        out = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        try:
            listing = json.loads(out.stdout[out.stdout.index("{") :])
        except ValueError:
            return {}
        return {int(n["node-id"]): str(n["status"]) for n in listing.get("nodes", [])}

    def wait_online(self, owners: list[int], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        want = {self.node_ids[i] for i in owners}
        while time.monotonic() < deadline:
            for i in owners:
                proc = self.procs.get(f"supernode-{i}")
                if proc is not None and proc.poll() is not None:
                    raise DeployError(
                        f"SuperNode owner-{i} exited with {proc.returncode}; "
                        f"see {self.layout.logs / f'supernode-{i}.log'}"
                    )
            status = self.nodes()
            if all(status.get(n) == "online" for n in want):
                return
            time.sleep(1.0)
        raise DeployError(f"SuperNodes {sorted(want)} not all online after {timeout:.0f}s")

    def up(self, query_budget: int = 0) -> None:
        """SuperLink, registration, all SuperNodes, and wait until all are online."""
        self.start_superlink()
        owners = list(range(1, self.layout.owners + 1))
        for i in owners:
            self.register(i)
        for i in owners:
            self.start_supernode(i, query_budget)
        self.wait_online(owners)

    def restart_supernode(
        self, i: int, sig: int = signal.SIGTERM, pause: float = 1.0, timeout: float = 150
    ) -> float:
        """Stop owner i's SuperNode with ``sig`` and start it again with the same key and node
        config, as a supervisor (systemd ``Restart=always``) would; returns seconds offline.

        SIGTERM is a clean stop: the SuperNode deactivates itself and comes back at once.
        After SIGKILL (a crash) the SuperLink still counts the node online until its
        heartbeat expires (2 x 30 s in Flower 1.42) and refuses to activate it again
        (`flower-supernode` exits with code 305), so it is restarted until it gets in.
        """
        t0 = time.monotonic()
        name = f"supernode-{i}"
        log = self.layout.logs / f"{name}.log"
        self._kill(name, sig)
        self.restarts.append((i, signal.Signals(sig).name, time.time()))
        while True:
            time.sleep(pause)
            start = log.stat().st_size if log.exists() else 0
            self.start_supernode(i)
            attempt_end, said = time.monotonic() + 30, None
            # the SuperLink's status cannot tell: a crashed node still shows "online"
            while time.monotonic() < attempt_end and (said := self._said(log, start)) is None:
                time.sleep(0.5)
            if said == "activated":
                return time.monotonic() - t0
            # Flower 1.42: after "Exit Code: 305" the process lingers (its SuperExec child
            # keeps retrying), so a refused start is stopped here, not awaited.
            self._kill(name, grace=5)
            if time.monotonic() - t0 > timeout:
                raise DeployError(f"owner-{i} did not come back within {timeout:.0f}s; see {log}")
            pause = 5.0

    @staticmethod
    def _said(log: Path, start: int) -> str | None:
        """What the SuperNode started at log offset ``start`` reported: activated or refused."""
        with log.open("rb") as f:
            f.seek(start)
            text = f.read()
        if b"Exit Code:" in text:
            return "refused"
        return "activated" if b"SuperNode ID:" in text else None

    def run(
        self,
        run_config: str,
        timeout: float = 600,
        on_line: Callable[[str], None] | None = None,
        signed: bool = True,
    ) -> tuple[int, str]:
        """`flwr run <signed app> azsl --stream`; returns (exit code, log). Killed after
        timeout. ``signed=False`` submits this folder instead (an app nobody signed, which
        the SuperNodes refuse). The exit code is the run's: ``flwr run --stream`` itself
        exits 0 when the ServerApp failed, so a run whose status is not
        ``finished:completed`` returns 1."""
        app = self.app.spec if signed and self.app is not None else str(ROOT)
        argv = [
            str(self._bin / "flwr"),
            "run",
            app,
            CONNECTION,
            "--stream",
            "--run-config",
            f"{self.layout.run_config()} {run_config}".strip(),
        ]
        log_path = self.layout.logs / "flwr-run.log"
        lines: list[str] = []
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.layout.work,
            text=True,
            start_new_session=True,
        )
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _killpg(proc)

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            with log_path.open("a") as log:
                log.write(f"\n$ {' '.join(argv)}\n")
                for line in proc.stdout:  # type: ignore[union-attr]
                    lines.append(line)
                    log.write(line)
                    log.flush()
                    if on_line is not None:
                        on_line(line)
            proc.wait()
        finally:
            timer.cancel()
            _killpg(proc)
        text = "".join(lines)
        if expired.is_set():
            text += f"\n[deploy_local] flwr run killed after {timeout:.0f}s\n"
        rc = int(proc.returncode)
        status = self.run_status(text)
        text += f"\n[deploy_local] run status: {status}\n"
        if rc == 0 and status != "finished:completed":
            rc = 1
        return rc, text

    def run_status(self, log: str) -> str:
        """The run's status as the SuperLink reports it (``finished:completed``, ...)."""
        match = re.search(r"Successfully started run (\d+)", log)
        if not match:
            return "not started"
        out = self.flwr("ls", CONNECTION, "--run-id", match.group(1), "--format", "json")
        try:
            listing = json.loads(out.stdout[out.stdout.index("{") :])
            return str(listing["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            return f"unknown ({out.stdout.strip()[-200:]})"


def _killpg(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def results_of(layout: Layout) -> list[dict]:
    """Every results.json written under the work folder's outputs."""
    return [json.loads(p.read_text()) for p in sorted(layout.outputs.glob("*/results.json"))]


def round_trip_cost(results: dict) -> dict[str, float]:
    """What a deployed round trip costs: the generator phase's seconds per round trip
    (Flower's SuperNode polling, a ClientApp process per message, the owners' work)."""
    rounds = len(results.get("history", [])) or 1
    generator = float(results.get("phase_seconds", {}).get("generator", 0.0))
    return {
        "round_trips": int(results.get("round_trips", 0)),
        "wall_seconds": round(float(results.get("wall_seconds", 0.0)), 1),
        "generator_seconds_per_round_trip": round(generator / rounds, 2),
        "wall_seconds_per_round_trip": round(
            float(results.get("wall_seconds", 0.0)) / max(1, int(results.get("round_trips", 1))), 2
        ),
    }


# -- command line ----------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    # `kill <pid>` of this script also stops everything it started (via the with-block)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lay = prepare(args.work, args.owners)
    print(f"work folder: {lay.work} (logs in {lay.logs})")
    restarted = threading.Event()
    with LocalDeployment(lay, port=args.port, device=args.device) as dep:
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
    data.add_argument("--partition", choices=["iid", "class-disjoint", "dirichlet"], default="iid")
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
