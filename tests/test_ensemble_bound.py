"""The simulation-only ensemble diagnostic agrees with the run's own teacher figures."""

from __future__ import annotations

import torch

from azsl_flower.common.config import parse_run_config
from azsl_flower.common.metrics import ClassCounts, zsl_gzsl
from azsl_flower.owner.evaluation import evaluate_model
from azsl_flower.owner.state import owner_state
from simulations.bench.ensemble_bound import ensemble_figures


def test_one_owner_is_its_teacher_and_disjoint_owners_lose_little(tmp_path):
    raw = {"partition": "class-disjoint", "teacher-epochs": 10, "cache-dir": str(tmp_path)}
    cfg = parse_run_config(raw)
    st = owner_state(cfg.owner_settings(), 0, 1)
    own = evaluate_model(None, st.data, st.data.unseen_classes, torch.device("cpu"), st.oracle)
    counts = ClassCounts(*(own[k] for k in ClassCounts.__dataclass_fields__))
    assert ensemble_figures(raw, 1) == zsl_gzsl(counts, "all")
    two = ensemble_figures(raw, 2)  # each teacher knows half the digits; together most
    assert 0.5 < two["h"] <= 1.0
