"""The run config's keys: every default (DEFAULTS), every option list (CHOICES), the enums.

Written once here and read everywhere: pyproject's ``[tool.flwr.app.config]`` is generated
from DEFAULTS (:mod:`azsl_flower.common.pyproject_sync`), Hydra's config store starts from it
(:mod:`azsl_flower.common.presets`), and the owner side reads CHOICES. Adding a run-config
key: its default in DEFAULTS (options in CHOICES, an enum in ENUMS), then its field and any
range check in :mod:`azsl_flower.common.config` (``RunConfig``, ``parse_run_config``), which
re-exports every name here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from azsl_flower.common.modes import REGULARISER_ANSWERS, REGULARISERS

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "ENUMS",
    "OWNER_KEYS",
    "TEACHER_KEYS",
    "Scenario",
    "TeacherSetting",
    "Weighting",
]


class Scenario(StrEnum):
    """What owners answer about generated features."""

    WHITEBOX = "whitebox"  # softmax, losses and input gradients
    BLACKBOX = "blackbox"  # softmax and the regulariser's value and gradient
    WEIGHTS = "weights"  # the teacher once at set-up; the service computes feedback itself
    # DFZSL (Tang et al. 2024): a cosine teacher answers logits on probe features; the
    # service recovers class directions, samples virtual features, aligns semantics
    DFZSL = "dfzsl"

    @property
    def whitebox(self) -> bool:
        """The generator gets the teacher's input gradient (directly or from its copy)."""
        return self in (Scenario.WHITEBOX, Scenario.WEIGHTS)


class TeacherSetting(StrEnum):
    """What an owner's teacher was trained on."""

    TRANSDUCTIVE = "transductive"  # seen classes and some unseen-class images
    INDUCTIVE = "inductive"  # seen classes only

    @property
    def zsl_space(self) -> str:
        """ZSL T1's label space: unseen classes for an inductive teacher, else all classes."""
        return "unseen" if self is TeacherSetting.INDUCTIVE else "all"


class Weighting(StrEnum):
    """How the owners' answers about one generated sample combine (``ensemble-weighting``)."""

    COVERAGE = "coverage"
    UNIFORM = "uniform"
    CONFIDENCE = "confidence"
    JOINT = "joint"


# The single source of truth for run-config keys (pyproject's [tool.flwr.app.config]
# mirrors it; tests keep them equal).
DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data-dir": "",
    "feature-file": "res101.mat",
    "semantics": "att",
    "scenario": "whitebox",
    "teacher": "transductive",
    "regulariser": "kl",
    "alpha": 10.0,
    "noise-dim": 20,
    "rounds": 30,
    "steps-per-round": 10,
    "batch-size": 256,
    "classes-per-batch": 32,
    "lr-generator": 1e-3,
    "feature-step": 0.3,
    "pool-epochs": 3,
    "lr-student": 1e-3,
    "student-epochs": 30,
    # eq4: the paper's student only; ce+kd: also a candidate "student-kd" (cross-entropy on
    # the verified labels + kd-temperature-scaled KD on the teachers' soft labels, plus
    # student-gaussian-samples per class drawn from released class Gaussians, if any)
    "student-loss": "eq4",
    "kd-temperature": 4.0,
    "student-gaussian-samples": 0,
    # which model the run delivers (results.json "delivered", saved as delivered.pt): main
    # (the method's own: classifier C when inductive, else the student, as before this key),
    # auto (service/deliver.py: a fixed rule on what was released, never on test scores;
    # measured on Caltech split=val in black-box modes only, so not yet the default: on
    # digits white-box its NCM on the naive fit is below student-kd), or a candidate's name
    "deliver": "main",
    "teacher-epochs": 40,
    "lr-teacher": 1e-3,
    "samples-per-class": 400,
    # val: xlsa17's validation classes (train_loc seen, val_loc unseen) to choose settings on
    "split": "test",
    # false: the student learns from every generated sample (Table 4 "without verification")
    "verification": True,
    # calibrated stacking (Chao et al. 2016): subtracted from the seen classes' logits when
    # a model predicts over all classes (GZSL); choose it on split=val
    "calibration": 0.0,
    # the calibration values a split=val run also scores (same evaluation round trip)
    "calibration-grid": "0,1,2,3,4,5,6,8,10,12,15,20,25,30,40,50",
    "seed": 0,
    "device": "auto",
    "output-dir": "outputs",
    "cache-dir": "",
    "poll-interval": 0.05,
    "timeout": 600.0,
    "encryption": "aes-256-gcm",
    "service-key": "",
    "owner-keys": "",
    "max-retries": 2,
    "fault-tamper": 0.0,
    "fault-replay": 0.0,
    "partition": "iid",
    "dirichlet-beta": 0.5,
    "owner-classes": "",
    "ensemble-weighting": "coverage",
    # response modes the service asks owners for (an owner refuses more than its node
    # config allows): teacher answer logits | probs | topk:K | label; regulariser answer
    # gradient | statistics | value | none (blackbox without gradient: outputs only;
    # statistics: the class statistics once at set-up, R and its gradient computed here)
    # auto: the least the run needs (logits for ensemble-weighting=joint, else probs)
    "teacher-answer": "auto",
    "regulariser-answer": "gradient",
    "quorum": 0.5,
    "checkpoint-dir": "",
    "checkpoint-every": 1,
    "resume": "auto",
    # experiment presets (configs/experiment/, azsl_flower/experiments.py) and TensorBoard
    "experiment": "",
    "tensorboard": True,
    "tensorboard-dir": "",
    # scenario=dfzsl (azsl_flower/service/dfzsl/): how class directions are found
    # (blackbox: matched to the owners' logits on probes; head: read from a released head)
    "dfzsl-directions": "blackbox",
    "dfzsl-probes": 2048,  # probe features per owner for direction recovery (one round trip)
    # concentration of the virtual features: DFZSL's angle rule or the dimension-aware one
    "dfzsl-kappa": "dimension",
    "dfzsl-kappa-factor": 1.0,  # multiplies the chosen kappa (DFZSL's per-dataset factor)
    "dfzsl-samples": 200,  # virtual features per seen class sent to verification
    # semantics -> virtual direction map (ridge on seen classes), or none (ablation)
    "dfzsl-alignment": "ridge",
    "dfzsl-ridge": 10.0,  # the ridge map's L2 weight
    # unseen-class features: vMF around the aligned direction, or a conditional VAE
    "dfzsl-generator": "vmf",
    # AZSL scenarios (whitebox, blackbox): before the generator rounds, fit the generator to
    # DFZSL's virtual features (service/warm_start.py; the dfzsl-* keys above apply to them)
    "warm-start": "none",
    "warm-start-epochs": 20,  # epochs of fitting the generator to the virtual features
    # also fit it to DFZSL's unseen-class features (vMF around the aligned directions)
    "warm-start-unseen": True,
    # the service's method (strategies/methods.py METHODS, or a plug-in package.module:Class,
    # imported by the service only); auto: scenario dfzsl runs dfzsl, warm-start=dfzsl the
    # hybrid, anything else azsl
    "method": "auto",
}
# Each option list is written once. Regularisers and regulariser answers live in
# common/modes.py; the others here, and the code above common/ reads them from here
# (wire/crypto.py's cipher table is checked against "encryption"; owner/partition.py,
# owner/data.py, owner/policy_values.py), because common/ never imports wire/, owner/ or
# service/.
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("digits", "xlsa17"),
    "semantics": ("att", "text", "onehot"),
    "scenario": tuple(Scenario),
    "teacher": tuple(TeacherSetting),
    "regulariser": REGULARISERS,
    "encryption": ("aes-256-gcm", "chacha20-poly1305", "none"),
    "partition": ("iid", "class-disjoint", "dirichlet", "explicit"),
    "ensemble-weighting": tuple(Weighting),
    "resume": ("auto", "never"),
    "split": ("test", "val"),
    "dfzsl-directions": ("blackbox", "head"),
    "dfzsl-kappa": ("dfzsl", "dimension"),
    "dfzsl-alignment": ("ridge", "none"),
    "dfzsl-generator": ("vmf", "cvae"),
    "warm-start": ("none", "dfzsl"),
    "regulariser-answer": REGULARISER_ANSWERS,
    "student-loss": ("eq4", "ce+kd"),
    "deliver": (
        "main",
        "auto",
        "student",
        "classifier",
        "student-kd",
        "lda-released",
        "ncm-released",
        "ncm-generated",
    ),
}

# What an owner's teacher depends on (with its data's fingerprint): its cache key.
TEACHER_KEYS = (
    "dataset",
    "data-dir",
    "feature-file",
    "teacher",
    "teacher-epochs",
    "lr-teacher",
    "seed",
    "partition",  # with the data fingerprint: different partitions never share a teacher
    "dirichlet-beta",
    "owner-classes",
)
# What an owner needs to rebuild its state: sent with every request.
OWNER_KEYS = (
    *TEACHER_KEYS,
    "split",
    "regulariser",
    "alpha",
    "scenario",
    "teacher-answer",
    "regulariser-answer",
    "device",
    "cache-dir",
)

ENUMS: dict[str, type[StrEnum]] = {
    "scenario": Scenario,
    "teacher": TeacherSetting,
    "ensemble-weighting": Weighting,
}
