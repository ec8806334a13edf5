"""Text semantics from the offline sentence encoder reproduce the shared Caltech-101 vectors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from azsl_flower.common.semantics import clean_class_name, load_class_side

pytest.importorskip("sentence_transformers", reason="install the text extra: .[text]")


def test_text_semantics_match_caltech_att(caltech_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = load_class_side("xlsa17", str(caltech_dir), semantics="text")
    att = scipy.io.loadmat(str(caltech_dir / "att_splits.mat"))["att"].T.astype(np.float32)
    att /= np.linalg.norm(att, axis=1, keepdims=True)
    cos = (text.semantics * att).sum(1)
    # att_splits.mat holds the same encoder's embedding of "a photo of a {name}."
    assert text.semantics.shape == (100, 384)
    assert cos.min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(text.semantics, axis=1), 1.0, rtol=1e-5)


def test_clean_class_name():
    assert clean_class_name("001.Black_footed_Albatross") == "black footed albatross"
    assert clean_class_name("giant+panda") == "giant panda"
