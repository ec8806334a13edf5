"""Start, watch and always stop a loopback SuperLink + SuperNodes, each its own process.

Every process gets its own session (:mod:`simulations.deploy.groups`) and ``FLWR_HOME``
(folders from :mod:`simulations.deploy.layout`), so :meth:`LocalDeployment.stop` can stop it
with its children, and then anything left with one of those homes. What the runs wrote:
:mod:`simulations.deploy.results`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from azsl_flower.owner.forward import listening
from azsl_flower.owner.timing import ENV as OWNER_TIMINGS
from azsl_flower.tools.deploy import DeployError, write_connection
from azsl_flower.tools.signing import AppRegistry, SignedApp, sign_app
from simulations.deploy.groups import kill_group, spawn, stop_group, wait_port
from simulations.deploy.layout import CONNECTION, HOST, SIGNER, Layout
from simulations.run.local_superlink import free_port
from simulations.run.local_superlink import stop as stop_by_flwr_home

ROOT = Path(__file__).resolve().parents[2]  # the app folder


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
    node_config: str = ""  # more node-config keys for every owner ("teacher-answer='probs'")
    owner_worker: bool = False  # each owner answers through `azsl-flower owner serve`
    app: SignedApp | None = None  # the signed app the SuperLink fetches from the registry
    registry: AppRegistry | None = None
    _worker_configs: dict[int, str] = field(default_factory=dict)

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
        proc = spawn(
            argv, log, dict(self.env, FLWR_HOME=str(home), **(env or {})), self.layout.work
        )
        self.procs[name] = proc
        return proc

    def _kill(self, name: str, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_group(proc, sig, grace)

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
        wait_port(self.port, proc, timeout, lay.logs / "superlink.log")
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

    def worker_socket(self, i: int) -> Path:
        """Owner i's worker socket, in a folder of its own (0700, made by the worker)."""
        return self.layout.owner(i) / "worker" / "owner.sock"

    def start_worker(self, i: int, node_config: str, timeout: float = 120) -> None:
        """`azsl-flower owner serve` beside owner i's SuperNode (left running while the
        SuperNode restarts, as its own service unit would); waits until it answers."""
        sock, name = self.worker_socket(i), f"worker-{i}"
        self._worker_configs[i] = node_config
        argv = [str(self._bin / "azsl-flower"), "owner", "serve", "--socket", str(sock)]
        proc = self._spawn(name, [*argv, "--node-config", node_config], {OWNER_TIMINGS: "1"})
        deadline = time.monotonic() + timeout
        while not listening(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = self.layout.logs / f"{name}.log"
                raise DeployError(f"owner-{i}'s worker did not start; see {log}")
            time.sleep(0.2)

    def restart_worker(self, i: int, sig: int = signal.SIGTERM) -> None:
        """Stop owner i's worker and start it again with the node config it had."""
        self._kill(f"worker-{i}", sig)
        self.start_worker(i, self._worker_configs[i])

    def start_supernode(self, i: int, query_budget: int | None = None) -> subprocess.Popen:
        lay = self.layout
        self.node_ports.setdefault(i, free_port())  # a restart keeps its Runtime API port
        if query_budget is not None:
            self.budgets[i] = query_budget
        config = lay.node_config(i, self.device, self.budgets.get(i, 0), self.node_config)
        if self.owner_worker:
            config += f" owner-worker='{self.worker_socket(i)}'"
            worker = self.procs.get(f"worker-{i}")
            if worker is None or worker.poll() is not None:
                self.start_worker(i, config)
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
                config,
                "--host",
                HOST,
                "--port",
                str(self.node_ports[i]),
                # no dependency flag: SuperNodes never install (only the SuperLink does)
            ],
            # each ClientApp process logs its timings to this owner's log (never the wire)
            env={OWNER_TIMINGS: "1"},
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
            kill_group(proc)

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
            kill_group(proc)
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
