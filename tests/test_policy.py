"""The owner policy read from the node config: defaults, bad values, what it overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from azsl_flower.owner.policy import KEYS, OwnerPolicy, PolicyError, markdown_table
from azsl_flower.wire.errors import Refused

README = Path(__file__).resolve().parents[1] / "README.md"


def test_a_deployed_owner_answers_whitebox_and_blackbox_only_by_default():
    policy = OwnerPolicy.from_node_config({})
    assert not policy.simulated
    assert policy["allowed-scenarios"] == {"whitebox", "blackbox"}
    for scenario in ("whitebox", "blackbox"):
        policy.settings({"scenario": scenario}, "me")
    with pytest.raises(Refused, match="allowed-scenarios") as exc:
        policy.settings({"scenario": "weights"}, "me")
    assert exc.value.code == "policy"
    opted_in = OwnerPolicy.from_node_config({"allowed-scenarios": "blackbox,weights"})
    opted_in.settings({"scenario": "weights"}, "me")
    with pytest.raises(Refused, match="'whitebox' is not allowed"):
        opted_in.settings({"scenario": "whitebox"}, "me")


def test_the_cipher_suite_comes_from_the_node_config_never_the_run():
    keys = {"owner-key": "o.key", "service-pub": "s.pub"}
    for run in ({"encryption": "none"}, {"encryption": "chacha20-poly1305"}, {}):
        assert OwnerPolicy.from_node_config(keys).suite(run) == "aes-256-gcm"
        assert OwnerPolicy.from_node_config({}).suite(run) == "aes-256-gcm"
    chacha = OwnerPolicy.from_node_config({**keys, "encryption": "chacha20-poly1305"})
    assert chacha.suite({"encryption": "none"}) == "chacha20-poly1305"
    with pytest.raises(PolicyError, match="never answers in clear text"):
        OwnerPolicy.from_node_config({**keys, "encryption": "none"})
    # a simulated owner without keys of its own is the service's stand-in: the run decides
    sim = OwnerPolicy.from_node_config({"partition-id": 0, "num-partitions": 2})
    assert sim.suite({"encryption": "none"}) == "none"
    pinned = OwnerPolicy.from_node_config({"partition-id": 0, **keys})
    assert pinned.suite({"encryption": "none"}) == "aes-256-gcm"


def test_a_deployed_owner_takes_no_path_device_seed_or_partition_from_the_service():
    policy = OwnerPolicy.from_node_config(
        {"data-dir": "/owner/data", "feature-file": "f.mat", "cache-dir": "/owner/cache"}
    )
    asked = {
        "dataset": "xlsa17",
        "data-dir": "/elsewhere",
        "feature-file": "/etc/shadow",
        "cache-dir": "/tmp/service-chose-this",
        "device": "cuda:7",
        "seed": 123,
        "partition": "explicit",
        "owner-classes": "0;1",
    }
    s = policy.settings(asked, "fingerprint-a")
    assert (s["data-dir"], s["feature-file"], s["cache-dir"]) == (
        "/owner/data",
        "f.mat",
        "/owner/cache",
    )
    assert s["device"] == "auto" and (s["partition"], s["owner-classes"]) == ("iid", "")
    # the seed is the owner's own: stable, different per owner, never the service's
    again = policy.settings({**asked, "seed": 7}, "fingerprint-a")
    other = policy.settings(asked, "fingerprint-b")
    assert s["seed"] == again["seed"] != other["seed"] and s["seed"] != 123
    assert OwnerPolicy.from_node_config({"seed": 5}).settings(asked, "x")["seed"] == 5
    # without a data-dir a deployed owner serves the embedded digits, whatever is asked
    assert OwnerPolicy.from_node_config({}).settings(asked, "x")["dataset"] == "digits"


def test_a_simulated_owner_takes_the_runs_settings_but_never_a_path_outside_its_data():
    sim = OwnerPolicy.from_node_config({"partition-id": 1, "num-partitions": 2})
    s = sim.settings({"data-dir": "/d", "feature-file": "x.mat", "partition": "iid"}, "x")
    assert (s["data-dir"], s["feature-file"]) == ("/d", "x.mat") and sim.partition == (1, 2)
    for bad in ("/abs/x.mat", "../x.mat", "sub/../../x.mat", "~/x.mat", "C:\\x.mat"):
        with pytest.raises(Refused, match="inside the data folder"):
            sim.settings({"feature-file": bad}, "x")


def test_teacher_settings_are_the_owners_or_capped():
    capped = OwnerPolicy.from_node_config({})
    assert capped.settings({"teacher-epochs": 40}, "x")["teacher-epochs"] == 40
    with pytest.raises(Refused, match="max-teacher-epochs=100"):
        capped.settings({"teacher-epochs": 10**6}, "x")
    for lr in (0.0, -1.0, 5.0, float("nan")):
        with pytest.raises(Refused, match="lr-teacher"):
            capped.settings({"lr-teacher": lr}, "x")
    own = OwnerPolicy.from_node_config({"teacher-epochs": 3, "lr-teacher": 0.01})
    s = own.settings({"teacher-epochs": 10**6, "lr-teacher": 5.0}, "x")
    assert (s["teacher-epochs"], s["lr-teacher"]) == (3, 0.01)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"query-budget": "lots"}, "query-budget='lots'"),
        ({"query-budget": -1}, "query-budget=-1"),
        ({"max-eval-models": 1.5}, "max-eval-models=1.5"),
        ({"allowed-scenarios": "all"}, "allowed-scenarios='all'"),
        ({"allowed-scenarios": ""}, "allowed-scenarios=''"),
        ({"encryption": "rot13"}, "encryption='rot13'"),
        ({"feature-file": "../other/res101.mat"}, "inside the data folder"),
        ({"feature-file": "/abs/res101.mat"}, "inside the data folder"),
        ({"lr-teacher": 2}, "lr-teacher=2"),
        ({"owner-key": "o.key"}, "set both owner-key and service-pub"),
        ({"partition-id": 3, "num-partitions": 2}, "partition-id 3 outside 0..1"),
        ({"qurey-budget": 5}, "unknown node-config key"),
    ],
)
def test_bad_node_config_is_refused_naming_the_key(config, match):
    with pytest.raises(PolicyError, match=match):
        OwnerPolicy.from_node_config(config)


def test_the_readme_lists_every_policy_key_with_its_defaults():
    assert markdown_table() in README.read_text(), (
        "README's owner-policy table is out of date: paste `python -m azsl_flower.owner.policy`"
    )
    assert len({k.name for k in KEYS}) == len(KEYS)
