"""The loopback deployment's work folder: one folder per party, and what each one holds.

:func:`prepare` makes what is missing there (TLS, SuperNode auth keys, encryption keys, the
owners' allow-list) and deals the digits over the owners: :func:`write_owner_data` writes
each owner's share as its own xlsa17 folder (``digits.mat`` + ``att_splits.mat``), so each
SuperNode reads only its own files while the service keeps ``dataset=digits``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from azsl_flower.common.config import CHOICES
from azsl_flower.tools.deploy import generate_node_auth
from azsl_flower.tools.signing import generate_signing_key
from azsl_flower.tools.tls import generate_tls
from azsl_flower.wire.crypto import write_keypair

CONNECTION = "azsl"
DATA_FILE = "digits.mat"
SIGNER = "azsl-reviewer"  # the public_key_id owners trust in --trusted-entities
HOST = "127.0.0.1"
# The partitions an owner's share can be dealt by: every simulated one but `explicit`, whose
# classes come from the run's owner-classes, not from a rule over the dataset.
DEALT = tuple(p for p in CHOICES["partition"] if p != "explicit")


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
    if partition not in DEALT:
        raise ValueError(f"partition={partition!r}: {', '.join(DEALT[:-1])} or {DEALT[-1]}")
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

    def node_config(
        self, i: int, device: str = "cpu", query_budget: int = 0, extra: str = ""
    ) -> str:
        """The ``--node-config`` string of owner i (TOML values, space separated); ``extra``:
        more policy keys in the same form (response modes, differential privacy)."""
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
        text += f" query-budget={int(query_budget)}" if query_budget else ""
        return f"{text} {extra.strip()}" if extra.strip() else text

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
