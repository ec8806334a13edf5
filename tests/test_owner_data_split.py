"""`simulations.deploy.local owner-data` on an xlsa17 folder: one folder per owner, by the
simulation's partition rules, every sample held by exactly one owner."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from azsl_flower.owner.data import load_owner_data, read_xlsa17
from simulations.deploy.local import main, write_owner_data


@pytest.mark.parametrize("partition", ["iid", "class-disjoint", "dirichlet"])
def test_an_xlsa17_folder_is_split_without_sharing(tmp_path, write_xlsa17, partition):
    src = write_xlsa17(tmp_path / "src", num_classes=6, seen=4, per_class=20, tunseen=True)
    folders = write_owner_data(tmp_path / "out", 2, src["dir"], "res101.mat", partition, seed=3)
    whole = read_xlsa17(src["dir"])
    rows = np.concatenate(
        [scipy.io.loadmat(f / "res101.mat")["features"].T[:, 0] for f in folders]
    )  # column 0 of the synthetic features is each sample's index
    assert sorted(rows.astype(int).tolist()) == list(range(whole.labels.size))  # once each
    owners = [read_xlsa17(f) for f in folders]
    for part in owners:
        assert part.names == whole.names and np.array_equal(part.att, whole.att)
        for key, loc in part.splits.items():  # every split points at this owner's own rows
            original = part.features[loc, 0].astype(int)
            assert np.isin(original, whole.splits[key]).all(), key
    held = [set(np.unique(o.labels).tolist()) for o in owners]
    if partition == "class-disjoint":
        assert not held[0] & held[1] and held[0] | held[1] == set(range(6))
    if partition == "iid":
        assert held[0] == held[1] == set(range(6))
    # each owner's folder is what its SuperNode loads
    data = load_owner_data("xlsa17", str(folders[0]), "res101.mat", "inductive")
    assert data.num_classes == 6 and data.train_x.shape[1] == 4


def test_the_command_splits_a_folder_and_never_overwrites(tmp_path, write_xlsa17, capsys):
    src = write_xlsa17(tmp_path / "src", num_classes=5, seen=3, per_class=12)["dir"]
    argv = ["owner-data", "--out", str(tmp_path / "o"), "--owners", "2", "--data-dir", str(src)]
    assert main(argv) == 0
    assert "owner-2 (res101.mat + att_splits.mat)" in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        main(argv)
