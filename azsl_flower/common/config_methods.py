"""The run-config rules of the keys that belong to one method or its delivery: DFZSL's,
the warm start's, the delivered model's and the method's own form (``parse_run_config`` in
:mod:`azsl_flower.common.config` calls :func:`check_method_keys` after its general rules).
"""

from __future__ import annotations

import math
import re
from typing import Any

from azsl_flower.common.config_values import ConfigError
from azsl_flower.common.regularisers import REGISTRY

__all__ = ["MAX_DFZSL_SAMPLES", "MAX_WARM_START_EPOCHS", "check_method_keys"]

MAX_DFZSL_SAMPLES = 100_000  # virtual features per class: more is memory, not accuracy
MAX_WARM_START_EPOCHS = 10_000


def check_method_keys(merged: dict[str, Any]) -> None:
    """The delivered model, DFZSL's ranges, the warm start, the method's form (this order)."""
    _check_delivery(merged)
    _check_dfzsl(merged)
    _check_warm_start(merged)
    _check_method(merged["method"])


def _check_delivery(merged: dict[str, Any]) -> None:
    """The student candidates and the delivered model: each named model must be one this
    run's settings train (the run checks again at delivery, e.g. statistics no owner sent)."""
    loss, deliver = merged["student-loss"], merged["deliver"]
    if not math.isfinite(merged["kd-temperature"]):
        raise ConfigError(f"run-config kd-temperature={merged['kd-temperature']!r}: must be finite")
    if merged["student-gaussian-samples"] > MAX_DFZSL_SAMPLES:
        raise ConfigError(
            f"run-config student-gaussian-samples={merged['student-gaussian-samples']!r}: at "
            f"most {MAX_DFZSL_SAMPLES} per class"
        )
    if merged["student-gaussian-samples"] and loss != "ce+kd":
        raise ConfigError(
            "run-config student-gaussian-samples>0 adds samples to the student-kd candidate: "
            "set student-loss=ce+kd (the Eq. 4 student learns soft labels only)"
        )
    if deliver == "student-kd" and loss != "ce+kd":
        raise ConfigError("run-config deliver=student-kd needs student-loss=ce+kd, which trains it")
    if deliver == "classifier" and merged["teacher"] != "inductive":
        raise ConfigError(
            "run-config deliver=classifier: classifier C is trained with teacher=inductive only"
        )
    answer = merged["regulariser-answer"]
    revealing = answer in ("gradient", "statistics") or merged["scenario"] == "weights"
    released = revealing and REGISTRY[merged["regulariser"]].has_statistics
    if deliver in ("lda-released", "ncm-released") and not released:
        raise ConfigError(
            f"run-config deliver={deliver}: this run releases no class statistics (regulariser="
            f"{merged['regulariser']}, regulariser-answer={answer}); "
            "use deliver=main, auto or ncm-generated"
        )


def _check_dfzsl(merged: dict[str, Any]) -> None:
    """The dfzsl keys' ranges: kappa factor finite > 0, sample counts bounded, ridge >= 0."""
    factor = merged["dfzsl-kappa-factor"]
    if not math.isfinite(factor):
        raise ConfigError(
            f"run-config dfzsl-kappa-factor={factor!r}: a finite number > 0 multiplying the "
            "vMF concentration kappa (1.0: the rule's own kappa)"
        )
    for key in ("dfzsl-samples", "dfzsl-probes"):
        if merged[key] > MAX_DFZSL_SAMPLES:
            raise ConfigError(
                f"run-config {key}={merged[key]!r}: at most {MAX_DFZSL_SAMPLES} (it is a count "
                "of virtual features per class or of probes per owner)"
            )
    if merged["dfzsl-alignment"] == "none" and merged["dfzsl-generator"] == "vmf":
        raise ConfigError(
            "dfzsl-alignment=none leaves unseen classes without a direction to sample around: "
            "use dfzsl-generator=cvae with it (the ablation conditions the generator on raw "
            "semantics)"
        )
    ridge = merged["dfzsl-ridge"]
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ConfigError(f"run-config dfzsl-ridge={ridge!r}: a finite number >= 0")


def _check_warm_start(merged: dict[str, Any]) -> None:
    """warm-start=dfzsl only where AZSL's generator asks remote owners for feedback."""
    if merged["warm-start"] != "none" and merged["scenario"] not in ("whitebox", "blackbox"):
        raise ConfigError(
            f"run-config warm-start={merged['warm-start']!r} starts AZSL's generator from "
            f"DFZSL's virtual features; scenario={merged['scenario']!r} has no such generator "
            "(use scenario=whitebox or blackbox, or warm-start=none)"
        )
    if merged["warm-start-epochs"] > MAX_WARM_START_EPOCHS:
        raise ConfigError(
            f"run-config warm-start-epochs={merged['warm-start-epochs']!r}: at most "
            f"{MAX_WARM_START_EPOCHS} (epochs of fitting the generator to the virtual features)"
        )


def _check_method(value: str) -> None:
    """``method``'s form only: the service resolves the name (strategies/methods.py), so the
    library never imports the service's side."""
    if not re.fullmatch(r"auto|[a-z][a-z0-9_-]*|[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        raise ConfigError(
            f"run-config method={value!r}: auto, a registered method's name (e.g. azsl, dfzsl, "
            "hybrid) or a plug-in as package.module:Class"
        )
