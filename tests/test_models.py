"""Device choice: a missing GPU falls back to the CPU (CI has none); a wrong one is refused."""

from __future__ import annotations

import pytest
import torch

from azsl_flower.common.models import cuda_problem, resolve_device


def test_without_a_gpu_everything_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert resolve_device(name) == torch.device("cpu")
    assert "cuda is unavailable" in cuda_problem("cuda")


def test_with_gpus_an_index_out_of_range_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert cuda_problem("cuda:1") is None
    with pytest.raises(ValueError, match=r"device cuda:2: only 2 GPU\(s\) visible"):
        resolve_device("cuda:2")


def test_unknown_device_names_say_what_to_use():
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose auto, cpu, cuda"):
        resolve_device("tpu")
