"""The owner policy's node-config keys: the :data:`KEYS` table, and the README table from it.

Adding a key: one row in :data:`KEYS` (name, deployed default, simulated default, parser,
meaning, what it protects; a parser not yet in :mod:`azsl_flower.owner.policy_values` goes
there), then read ``policy[name]`` where it is enforced (:class:`~azsl_flower.owner.policy.
OwnerPolicy`). The README table is :func:`markdown_table` (``python -m
azsl_flower.owner.policy`` prints it; a test keeps them equal).
"""

from __future__ import annotations

from typing import Any

from azsl_flower.owner.policy_values import (
    DEFAULT_TEMPERATURE,
    MAX_EPOCHS,
    MAX_SEED,
    RUN,
    TEMPERATURE_RANGE,
    PolicyKey,
    _count,
    _device,
    _optional_epochs,
    _optional_rate,
    _optional_seed,
    _partition,
    _scenarios,
    _suite,
    _switch,
    _temperature,
    _text,
    relative_file,
)
from azsl_flower.owner.privacy import (
    MAX_ANSWER_DECIMALS,
    MAX_DP_BATCH,
    MAX_DP_EPOCHS,
    MAX_DP_LR,
    MAX_EPSILON,
)

__all__ = ["KEYS", "markdown_table"]

KEYS: tuple[PolicyKey, ...] = (
    PolicyKey(
        "allowed-scenarios",
        "whitebox,blackbox",
        "whitebox,blackbox,weights,dfzsl",
        _scenarios,
        "scenarios this owner answers (comma list)",
        "`weights` (the teacher's weights and real per-class feature means and variances) "
        "only by explicit opt-in; leave out `whitebox` to refuse input gradients",
    ),
    PolicyKey(
        "encryption",
        "aes-256-gcm",
        RUN,
        _suite,
        "the cipher suite this owner speaks; an owner with `owner-key` never speaks `none`",
        "a service or relay cannot downgrade the owner to clear text",
    ),
    PolicyKey(
        "owner-key",
        "",
        "",
        _text,
        "this owner's X25519 private key file (`azsl-flower keys generate`)",
        "only the pinned service can read answers; a simulated owner without it uses the run's "
        "per-run keys",
    ),
    PolicyKey(
        "service-pub",
        "",
        "",
        _text,
        "the pinned service public key; messages sealed by any other key are refused",
        "no other party can query this owner",
    ),
    PolicyKey(
        "data-dir",
        "",
        RUN,
        _text,
        "this owner's xlsa17 folder (empty: scikit-learn's digits, a demo owner)",
        "the service cannot point the owner at other files",
    ),
    PolicyKey(
        "feature-file",
        "res101.mat",
        RUN,
        lambda n, r: relative_file(f"node-config {n}", r),
        "features file inside `data-dir` (relative, no `..`)",
        "the features file stays inside the data folder",
    ),
    PolicyKey(
        "cache-dir",
        "",
        RUN,
        _text,
        "teachers, run state (encrypted session, budget) and per-run keys (empty: "
        "`$AZSL_CACHE_DIR` or `~/.cache/azsl-flower`)",
        "the service cannot choose where the owner writes",
    ),
    PolicyKey("device", "auto", RUN, _device, "`auto`, `cpu`, `cuda`, `cuda:N`", "-"),
    PolicyKey(
        "seed",
        "",
        RUN,
        _optional_seed,
        f"teacher seed, up to {MAX_SEED} (empty: derived from this owner's key fingerprint)",
        "owners never share a seed; the service cannot make the owner train new teachers "
        "by changing its seed",
    ),
    PolicyKey(
        "teacher-epochs",
        "",
        RUN,
        _optional_epochs,
        f"teacher training epochs, 1..{MAX_EPOCHS} (empty: the run's value, up to "
        "`max-teacher-epochs`)",
        "the owner decides how its teacher is trained",
    ),
    PolicyKey(
        "lr-teacher",
        "",
        RUN,
        _optional_rate,
        "teacher learning rate in (0, 1] (empty: the run's value)",
        "as above",
    ),
    PolicyKey(
        "max-teacher-epochs",
        100,
        0,
        _count,
        "the most teacher epochs a run may ask for (0: no cap)",
        "bounded work per set-up",
    ),
    PolicyKey(
        "max-teachers",
        8,
        0,
        _count,
        "cached teacher files kept; the oldest are removed (0: keep all)",
        "bounded disk use when runs ask for other teacher settings",
    ),
    PolicyKey(
        "max-setups",
        4,
        0,
        _count,
        "set-up requests answered per run (each may train a teacher; 0: no limit)",
        "bounded work per run",
    ),
    PolicyKey(
        "query-budget",
        0,
        0,
        _count,
        "generated samples answered per run: feedback, verification and dfzsl probes together "
        "(0: no limit)",
        "how much the service learns about the teacher; held in the run state on disk, "
        "reserved under a lock, so concurrent requests and restarts cannot exceed it",
    ),
    PolicyKey(
        "max-eval-models",
        6,
        0,
        _count,
        "models scored on the owner's test split per run (0: no limit)",
        "each scored model returns per-class counts on real test features: a crafted model "
        "reads a little about them",
    ),
    PolicyKey(
        "max-calibration-values",
        128,
        0,
        _count,
        "calibration values scored per run, summed over models (0: no limit)",
        "as above: each value is one more set of counts",
    ),
    PolicyKey(
        "min-class-count",
        5,
        0,
        _count,
        "classes with fewer test samples than this are left out of evaluation counts",
        "counts of a class of one or two samples would tell about those samples",
    ),
    PolicyKey(
        "dfzsl-temperature",
        DEFAULT_TEMPERATURE,
        DEFAULT_TEMPERATURE,
        _temperature,
        "scenario dfzsl: the cosine teacher's temperature in "
        f"[{TEMPERATURE_RANGE[0]:g}, {TEMPERATURE_RANGE[1]:g}] (logits are cosines divided by it)",
        "-",
    ),
    PolicyKey(
        "dfzsl-release-head",
        False,
        False,
        _switch,
        "scenario dfzsl: send the teacher's class directions at set-up instead of answering probes",
        "by default the service learns the directions only from logits on probes, within "
        "`query-budget` (about one probe per feature dimension pins a linear head down)",
    ),
    PolicyKey(
        "teacher-answer",
        "logits",
        "logits",
        _text,
        "the most revealing teacher answer given: `logits` > `probs` > `topk:K` > `label`; "
        "below `probs` the owner refuses `whitebox` (per-sample losses and their input "
        "gradients reveal the whole softmax), below `logits` also `dfzsl` and `weights`",
        "what the service learns about the teacher per query, in every scenario "
        "(docs/privacy.md: extraction)",
    ),
    PolicyKey(
        "regulariser-answer",
        "gradient",
        "gradient",
        _text,
        "the most revealing regulariser answer: `gradient` = `statistics` > `value` > `none` "
        "(`statistics`: the class statistics sent once at set-up, exact or the "
        "`stats-epsilon` release; no regulariser in any feedback reply); a black-box without "
        "`gradient` answers outputs only",
        "`gradient` lets the service solve for every class's feature mean and variance "
        "(docs/privacy.md), `statistics` sends them; `none` keeps them home",
    ),
    PolicyKey(
        "answer-decimals",
        -1,
        -1,
        _text,
        f"round every number answered to this many decimals, 0..{MAX_ANSWER_DECIMALS} "
        "(-1: exact; float32 answers have no more digits)",
        "less precision per answer",
    ),
    PolicyKey(
        "teacher-epsilon",
        "",
        "",
        _text,
        f"train the teacher with DP-SGD (Opacus) to this ε in (0, {MAX_EPSILON:g}] "
        "(empty, 0 or `inf`: not private)",
        "every answer is post-processing of a DP model: the bound holds for any number of queries",
    ),
    PolicyKey(
        "teacher-delta",
        "",
        "",
        _text,
        "δ of every mechanism, below 1/n, n the training images (empty or 0: 1/(10 n)); "
        "1/n or more is refused at set-up",
        "no mechanism may publish a training image outright",
    ),
    PolicyKey(
        "stats-epsilon",
        "",
        "",
        _text,
        "release the regulariser's class statistics once with the Gaussian mechanism at this ε "
        f"in (0, {MAX_EPSILON:g}] (composed with the teacher's by Opacus's accountant; needs "
        "`stats-clip`)",
        "the class means and variances the regulariser answers about are noisy",
    ),
    PolicyKey(
        "stats-clip",
        "",
        "",
        _text,
        "per-record L2 bound for the statistics release, finite > 0 (choose it without looking "
        "at the data)",
        "one image's influence on the statistics",
    ),
    PolicyKey(
        "teacher-model",
        "auto",
        "auto",
        _text,
        "the teacher network: `mlp` (the paper's), `linear` (softmax regression) or `auto`: "
        "`linear` with `teacher-epsilon`, `mlp` without",
        "DP-SGD loses far less accuracy on the linear teacher "
        "(docs/benchmarks/dp-settings-val.json)",
    ),
    PolicyKey("dp-clip", 1.0, 1.0, _text, "DP-SGD per-sample gradient norm bound, finite > 0", "-"),
    PolicyKey(
        "dp-batch-size", 512, 512, _text, f"DP-SGD expected batch (Poisson), 1..{MAX_DP_BATCH}", "-"
    ),
    PolicyKey(
        "epsilon-limit",
        "",
        "",
        _text,
        "the most ε all of this owner's DP releases may compose to, over every run and training "
        "set (its cache keeps them; finite > 0; empty, 0 or `inf`: no limit); a release past "
        "it is refused",
        "a service cannot add up releases (transductive and inductive teacher, test and val "
        "split) beyond what the owner agreed to",
    ),
    PolicyKey(
        "dp-epochs",
        30,
        30,
        _text,
        f"DP-SGD passes over the owner's data, 1..{MAX_DP_EPOCHS}",
        "the owner's, so the service's `teacher-epochs` (or `seed`) never buys a new release",
    ),
    PolicyKey(
        "dp-lr",
        0.2,
        0.2,
        _text,
        f"DP-SGD learning rate in (0, {MAX_DP_LR:g}] (SGD, momentum 0.9)",
        "-",
    ),
    PolicyKey(
        "lifetime-setups",
        32,
        0,
        _count,
        "set-up requests answered over this owner's lifetime, all runs together (0: no limit)",
        "bounded work however many runs a service starts (each set-up may train a teacher); "
        "32 is 8 runs at `max-setups`, or 16 to 32 ordinary runs (one or two set-ups each); "
        "counted in the cache's lifetime file, under a lock",
    ),
    PolicyKey(
        "lifetime-eval-models",
        48,
        0,
        _count,
        "models scored on the owner's test split over its lifetime, all runs together "
        "(0: no limit)",
        "per-run caps do not bound a service that starts new runs: a crafted model reads about "
        "one exact value of one real test row per model scored, so 48 reads less than one 64-d "
        "digits row, while a default job (4 models a run) runs 12 times",
    ),
    PolicyKey(
        "lifetime-calibration-values",
        512,
        0,
        _count,
        "calibration values scored over the owner's lifetime, summed over models and runs "
        "(0: no limit)",
        "as above: each value is one more set of counts on real test rows; 512 is 6 validation "
        "runs (17 values x 4 models, plus their test runs' 4 each)",
    ),
    PolicyKey(
        "owner-worker",
        "",
        "",
        _text,
        "the Unix socket of this owner's worker (`azsl-flower owner serve --socket PATH`): "
        "each message is answered there, with torch and the teacher kept in memory (empty: "
        "in the ClientApp's own process)",
        "the worker runs the same checks, locks and budget; its socket is 0600 in a 0700 "
        "folder, so only the owner's own processes reach it",
    ),
    PolicyKey(
        "partition-id",
        None,
        None,
        _partition,
        "simulation only (Flower's simulation sets it): this owner's share of one dataset",
        "marks a simulated owner; never set it in a deployment",
    ),
    PolicyKey(
        "num-partitions",
        None,
        None,
        _partition,
        "simulation only: how many owners share the dataset",
        "-",
    ),
)
_BY_NAME = {k.name: k for k in KEYS}


def markdown_table() -> str:
    """The README's owner-policy table, generated from :data:`KEYS`."""

    def show(value: Any) -> str:
        if value is RUN:
            return "the run's"
        if value is None or value == "":
            return "–"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        return f"`{value}`"

    rows = [
        "| node-config key | deployed default | simulated default | meaning | protects |",
        "|---|---|---|---|---|",
    ]
    for k in KEYS:
        rows.append(
            f"| `{k.name}` | {show(k.default)} | {show(k.simulated)} | {k.meaning} | {k.protects} |"
        )
    return "\n".join(rows)
