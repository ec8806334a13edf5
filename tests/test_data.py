"""Data loaders: the real xlsa17 files, the embedded digits default, owner splits, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from azsl_flower.common.semantics import (
    SEVEN_SEGMENT,
    DataError,
    clean_class_name,
    load_class_side,
)
from azsl_flower.owner import data
from azsl_flower.owner.data import (
    DIGITS_UNSEEN,
    DIGITS_VAL,
    load_owner_data,
    read_xlsa17,
)

# ---------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caltech_table(caltech_dir):
    return read_xlsa17(caltech_dir, feature_file="effnetlite0.mat")


def test_caltech_features_and_labels(caltech_table, caltech_dir):
    t = caltech_table
    assert t.features.shape == (8242, 1280)  # stored d x N on disk; read as N x d
    assert t.features.dtype == np.float32
    assert np.isfinite(t.features).all()
    raw = scipy.io.loadmat(str(caltech_dir / "effnetlite0.mat"), variable_names=["labels"])
    assert t.labels.tolist() == (raw["labels"].ravel() - 1).tolist()  # 1-based -> 0-based
    assert t.labels.min() == 0 and t.labels.max() == 99
    assert np.unique(t.labels).size == 100


def test_caltech_names_and_semantics(caltech_table):
    t = caltech_table
    assert len(t.names) == 100
    assert all(isinstance(n, str) and n and "[" not in n for n in t.names)
    assert len(set(t.names)) == 100
    assert t.att.shape == (100, 384)  # rows are classes


def test_caltech_splits_are_zero_based_and_consistent(caltech_table, caltech_dir):
    t = caltech_table
    raw = scipy.io.loadmat(str(caltech_dir / "att_splits.mat"))
    for key in data.SPLIT_KEYS:
        assert key in t.splits
        assert t.splits[key].tolist() == (raw[key].ravel() - 1).tolist()
        assert t.splits[key].min() >= 0 and t.splits[key].max() < t.labels.size
    s = t.splits
    seen = np.unique(t.labels[s["trainval_loc"]])
    unseen = np.unique(t.labels[s["test_unseen_loc"]])
    assert np.intersect1d(seen, unseen).size == 0
    assert seen.size + unseen.size == 100
    assert np.intersect1d(s["trainval_loc"], s["test_seen_loc"]).size == 0
    assert np.intersect1d(s["tunseen_train_loc"], s["tunseen_test_loc"]).size == 0
    # the 0-based locations pick samples of the right classes
    assert set(np.unique(t.labels[s["test_seen_loc"]])) <= set(seen)
    assert set(np.unique(t.labels[s["tunseen_train_loc"]])) == set(unseen)


def test_caltech_owner_transductive_split(caltech_dir, fresh_table_cache):
    od = load_owner_data("xlsa17", str(caltech_dir), "effnetlite0.mat", "transductive")
    assert od.num_classes == 100 and od.dim == 1280
    assert set(np.unique(od.train_y)) == set(od.seen_classes) | set(od.unseen_classes)
    assert set(np.unique(od.test_unseen_y)) == set(od.unseen_classes)


@pytest.mark.parametrize(
    ("name", "attrs", "classes"),
    [("AWA1", 85, 50), ("AWA2", 85, 50), ("APY", 64, 32), ("CUB", 312, 200), ("SUN", 102, 717)],
)
def test_real_xlsa17_class_side(xlsa17_root, name, attrs, classes):
    folder = xlsa17_root / name
    if not (folder / "att_splits.mat").is_file():
        pytest.skip(f"{folder}/att_splits.mat not present")
    cs = load_class_side("xlsa17", str(folder))  # no features file there: never opened
    assert cs.semantics.shape == (classes, attrs)
    assert cs.num_classes == classes == len(cs.names)
    assert all(isinstance(n, str) and n for n in cs.names)
    np.testing.assert_allclose(np.linalg.norm(cs.semantics, axis=1), 1.0, rtol=1e-5)
    # rows are the attribute columns of 'att' (A x C on disk), just rescaled
    att = scipy.io.loadmat(str(folder / "att_splits.mat"))["att"].T.astype(np.float64)
    ref = att / np.linalg.norm(att, axis=1, keepdims=True)
    np.testing.assert_allclose(cs.semantics, ref, atol=1e-5)


def test_real_xlsa17_onehot_semantics(xlsa17_root):
    folder = xlsa17_root / "APY"
    if not (folder / "att_splits.mat").is_file():
        pytest.skip(f"{folder}/att_splits.mat not present")
    cs = load_class_side("xlsa17", str(folder), semantics="onehot")
    np.testing.assert_array_equal(cs.semantics, np.eye(cs.num_classes, dtype=np.float32))


# ---------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------


def test_digits_class_side_is_seven_segment():
    cs = load_class_side("digits")
    assert cs.semantics.shape == (10, 7)
    assert cs.names[0] == "zero" and cs.names[9] == "nine"
    np.testing.assert_allclose(np.linalg.norm(cs.semantics, axis=1), 1.0, rtol=1e-6)
    ref = SEVEN_SEGMENT / np.linalg.norm(SEVEN_SEGMENT, axis=1, keepdims=True)
    np.testing.assert_allclose(cs.semantics, ref, atol=1e-6)
    # "8" lights all seven segments; "1" only the two right-hand ones
    np.testing.assert_allclose(cs.semantics[8], np.full(7, 1 / np.sqrt(7)), atol=1e-6)
    assert np.count_nonzero(cs.semantics[1]) == 2


def _idx(x):
    return set(x[:, 0].astype(np.int64).tolist())


@pytest.mark.parametrize("teacher", ["transductive", "inductive"])
def test_digits_owner_seen_unseen(teacher, fresh_table_cache):
    od = load_owner_data("digits", teacher=teacher)
    assert tuple(od.unseen_classes.tolist()) == DIGITS_UNSEEN
    assert np.intersect1d(od.seen_classes, od.unseen_classes).size == 0
    assert sorted(set(od.seen_classes) | set(od.unseen_classes)) == list(range(10))
    assert od.num_classes == 10 and od.dim == 64
    assert set(np.unique(od.test_seen_y)) == set(od.seen_classes)
    assert set(np.unique(od.test_unseen_y)) == set(DIGITS_UNSEEN)
    has_unseen = np.isin(od.train_y, DIGITS_UNSEEN).any()
    assert has_unseen == (teacher == "transductive")
    expected_cov = range(10) if teacher == "transductive" else od.seen_classes
    assert od.covered_classes.tolist() == list(expected_cov)


def test_digits_owner_splits_disjoint(indexed_digits):
    t = indexed_digits
    tr = load_owner_data("digits", teacher="transductive")
    ind = load_owner_data("digits", teacher="inductive")
    for od in (tr, ind):
        train = _idx(od.train_x)
        assert not train & _idx(od.test_seen_x)
        assert not train & _idx(od.test_unseen_x)
        assert not _idx(od.test_seen_x) & _idx(od.test_unseen_x)
        # labels travel with their rows
        assert (t.labels[od.train_x[:, 0].astype(int)] == od.train_y).all()
    unseen_all = set(t.splits["test_unseen_loc"].tolist())
    assert _idx(ind.test_unseen_x) == unseen_all  # inductive: every unseen image is test
    # transductive: unseen images are split between teacher training and test
    tr_unseen_train = {i for i in _idx(tr.train_x) if t.labels[i] in DIGITS_UNSEEN}
    assert tr_unseen_train and tr_unseen_train | _idx(tr.test_unseen_x) == unseen_all
    assert _idx(ind.train_x) == set(t.splits["trainval_loc"].tolist())
    assert _idx(ind.train_x) < _idx(tr.train_x)


@pytest.mark.parametrize("teacher", ["transductive", "inductive"])
def test_partitions_are_a_disjoint_cover(indexed_digits, teacher):
    whole = load_owner_data("digits", teacher=teacher)
    a = load_owner_data("digits", teacher=teacher, partition_id=0, num_partitions=2)
    b = load_owner_data("digits", teacher=teacher, partition_id=1, num_partitions=2)
    for split in ("train_x", "test_seen_x", "test_unseen_x"):
        ia, ib = _idx(getattr(a, split)), _idx(getattr(b, split))
        assert ia and ib
        assert not ia & ib
        assert ia | ib == _idx(getattr(whole, split))
        assert abs(len(ia) - len(ib)) <= 1  # dealt round-robin
    assert a.fingerprint != b.fingerprint != whole.fingerprint
    # partitions keep the global label space and class split
    assert a.num_classes == whole.num_classes
    np.testing.assert_array_equal(a.unseen_classes, whole.unseen_classes)


def test_owner_data_is_deterministic(fresh_table_cache):
    a = load_owner_data("digits", partition_id=1, num_partitions=3)
    data._TABLE_CACHE.clear()
    b = load_owner_data("digits", partition_id=1, num_partitions=3)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize(("pid", "num"), [(2, 2), (-1, 2), (0, 0)])
def test_bad_partition_id(pid, num):
    with pytest.raises(DataError, match="partition"):
        load_owner_data("digits", partition_id=pid, num_partitions=num)


def test_clean_class_name():
    assert clean_class_name("001.Black_footed_Albatross") == "black footed albatross"
    assert clean_class_name("grizzly+bear") == "grizzly bear"


# ---------------------------------------------------------------------------------------
# Synthetic xlsa17 folders
# ---------------------------------------------------------------------------------------


def test_read_synthetic_xlsa17(tmp_path, write_xlsa17):
    w = write_xlsa17(tmp_path / "ds")
    t = read_xlsa17(tmp_path / "ds")
    np.testing.assert_array_equal(t.features, w["x"])  # d x N on disk -> N x d
    np.testing.assert_array_equal(t.labels, w["y"])  # 1-based -> 0-based
    for key, loc in w["loc"].items():
        np.testing.assert_array_equal(t.splits[key], loc)
    np.testing.assert_allclose(t.att, w["att"].T)
    assert t.names == [f"{c:03d}.class_{c}" for c in range(5)]
    assert "tunseen_train_loc" not in t.splits


def test_read_synthetic_xlsa17_n_by_d(tmp_path, write_xlsa17):
    rng = np.random.default_rng(1)
    x = rng.random((50, 4)).astype(np.float32)
    write_xlsa17(tmp_path / "ds", features=x)  # N x d accepted too
    np.testing.assert_array_equal(read_xlsa17(tmp_path / "ds").features, x)


def test_transductive_fallback_without_tunseen(tmp_path, write_xlsa17, fresh_table_cache):
    per_class = 10
    w = write_xlsa17(tmp_path / "ds", num_classes=5, seen=3, per_class=per_class)
    folder = str(tmp_path / "ds")
    tr = load_owner_data("xlsa17", folder, teacher="transductive")
    ind = load_owner_data("xlsa17", folder, teacher="inductive")
    unseen_loc = set(w["loc"]["test_unseen_loc"].tolist())
    tr_train, tr_test = _idx(tr.train_x), _idx(tr.test_unseen_x)
    unseen_in_train = tr_train & unseen_loc
    assert not unseen_in_train & tr_test
    assert unseen_in_train | tr_test == unseen_loc
    for c in (3, 4):  # 80/20 split of each unseen class
        n_train = sum(1 for i in unseen_in_train if w["y"][i] == c)
        n_test = int((tr.test_unseen_y == c).sum())
        assert n_train == round(0.8 * per_class)
        assert n_test == per_class - round(0.8 * per_class)
    assert tr_train - unseen_in_train == set(w["loc"]["trainval_loc"].tolist())
    assert _idx(ind.test_unseen_x) == unseen_loc
    assert tr.covered_classes.tolist() == [0, 1, 2, 3, 4]
    assert ind.covered_classes.tolist() == [0, 1, 2]


def test_transductive_uses_tunseen_keys_when_present(tmp_path, write_xlsa17, fresh_table_cache):
    w = write_xlsa17(tmp_path / "ds", tunseen=True, per_class=10)
    tr = load_owner_data("xlsa17", str(tmp_path / "ds"), teacher="transductive")
    assert _idx(tr.test_unseen_x) == set(w["loc"]["tunseen_test_loc"].tolist())
    expected = set(w["loc"]["trainval_loc"].tolist()) | set(w["loc"]["tunseen_train_loc"].tolist())
    assert _idx(tr.train_x) == expected


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


def test_missing_dir(tmp_path, fresh_table_cache):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist"):
        read_xlsa17(missing)
    with pytest.raises(DataError, match="att_splits"):
        load_class_side("xlsa17", str(missing))
    with pytest.raises(DataError):
        load_owner_data("xlsa17", str(missing))


def test_missing_att_splits(tmp_path, write_xlsa17):
    write_xlsa17(tmp_path / "ds")
    (tmp_path / "ds" / "att_splits.mat").unlink()
    with pytest.raises(DataError, match=r"att_splits file not found.*data-dir"):
        read_xlsa17(tmp_path / "ds")
    with pytest.raises(DataError, match="att_splits file not found"):
        load_class_side("xlsa17", str(tmp_path / "ds"))


def test_missing_features_file(tmp_path, write_xlsa17):
    write_xlsa17(tmp_path / "ds")
    with pytest.raises(DataError, match=r"features file not found.*other\.mat"):
        read_xlsa17(tmp_path / "ds", feature_file="other.mat")


@pytest.mark.parametrize("key", ["att", "allclasses_names", "trainval_loc", "test_unseen_loc"])
def test_att_splits_lacking_key(tmp_path, write_xlsa17, key):
    write_xlsa17(tmp_path / "ds", drop_att_keys=(key,))
    with pytest.raises(DataError, match=rf"lacks the key\(s\) \['{key}'\]"):
        read_xlsa17(tmp_path / "ds")


def test_features_file_lacking_key(tmp_path, write_xlsa17):
    write_xlsa17(tmp_path / "ds")
    scipy.io.savemat(str(tmp_path / "ds" / "res101.mat"), {"features": np.zeros((4, 50))})
    with pytest.raises(DataError, match=r"lacks the key\(s\) \['labels'\].*has \['features'\]"):
        read_xlsa17(tmp_path / "ds")


def test_corrupt_mat_random_bytes(tmp_path, write_xlsa17):
    write_xlsa17(tmp_path / "ds")
    junk = np.random.default_rng(0).integers(1, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "ds" / "att_splits.mat").write_bytes(junk)
    with pytest.raises(DataError, match="valid MATLAB"):
        read_xlsa17(tmp_path / "ds")
    with pytest.raises(DataError, match="valid MATLAB"):
        load_class_side("xlsa17", str(tmp_path / "ds"))


def test_corrupt_mat_truncated(tmp_path, write_xlsa17):
    write_xlsa17(tmp_path / "ds", per_class=40)
    path = tmp_path / "ds" / "res101.mat"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=str(path.name)):
        read_xlsa17(tmp_path / "ds")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features(tmp_path, write_xlsa17, bad):
    x = np.random.default_rng(0).random((4, 50)).astype(np.float32)
    x[2, 7] = bad
    write_xlsa17(tmp_path / "ds", features=x)
    with pytest.raises(DataError, match="1 NaN/inf"):
        read_xlsa17(tmp_path / "ds")


def test_non_finite_attributes(tmp_path, write_xlsa17):
    att = np.ones((6, 5), dtype=np.float32)
    att[0, 0] = np.nan
    write_xlsa17(tmp_path / "ds", att_keys={"att": att})
    with pytest.raises(DataError, match="NaN"):
        load_class_side("xlsa17", str(tmp_path / "ds"))


@pytest.mark.parametrize("bad_label", [0, 6])  # 5 classes: valid 1-based labels are 1..5
def test_labels_outside_class_list(tmp_path, write_xlsa17, bad_label):
    labels = (np.repeat(np.arange(5), 10) + 1).reshape(-1, 1)
    labels[3, 0] = bad_label
    write_xlsa17(tmp_path / "ds", labels=labels)
    with pytest.raises(DataError, match=r"1-based class indices 1\.\.5"):
        read_xlsa17(tmp_path / "ds")


def test_split_index_out_of_range(tmp_path, write_xlsa17):
    write_xlsa17(tmp_path / "ds", att_keys={"test_seen_loc": np.array([[1], [51]])})
    with pytest.raises(DataError, match="test_seen_loc"):
        read_xlsa17(tmp_path / "ds")


def test_att_shape_mismatch(tmp_path, write_xlsa17):
    write_xlsa17(tmp_path / "ds", att_keys={"att": np.ones((6, 4), dtype=np.float32)})
    with pytest.raises(DataError, match="5 class names"):
        load_class_side("xlsa17", str(tmp_path / "ds"))


def test_features_labels_count_mismatch(tmp_path, write_xlsa17):
    write_xlsa17(tmp_path / "ds", features=np.ones((4, 49), dtype=np.float32))
    with pytest.raises(DataError, match="49"):
        read_xlsa17(tmp_path / "ds")


def test_split_sharing_classes_is_rejected(tmp_path, write_xlsa17, fresh_table_cache):
    # test_unseen_loc holding a seen-class sample makes the split not zero-shot
    loc = np.concatenate([np.arange(30, 50), [0]]) + 1
    write_xlsa17(tmp_path / "ds", att_keys={"test_unseen_loc": loc.reshape(-1, 1)})
    with pytest.raises(DataError, match="not ZSL"):
        load_owner_data("xlsa17", str(tmp_path / "ds"))


def test_unknown_values(fresh_table_cache):
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_class_side("mnist")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_owner_data("mnist")
    with pytest.raises(DataError, match="unknown semantics 'glove'"):
        load_class_side("digits", semantics="glove")
    with pytest.raises(DataError, match="unknown teacher setting 'oracle'"):
        load_owner_data("digits", teacher="oracle")
    with pytest.raises(DataError, match="needs data-dir"):
        load_class_side("xlsa17")
    with pytest.raises(DataError, match="needs data-dir"):
        load_owner_data("xlsa17")


# ---------------------------------------------------------------------------------------
# split=val: xlsa17's validation classes, for choosing settings without test classes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", ["transductive", "inductive"])
def test_validation_split_never_touches_test_classes(indexed_digits, teacher):
    t = indexed_digits
    od = load_owner_data("digits", teacher=teacher, split="val")
    val_classes = set(np.unique(t.labels[t.splits["val_loc"]]).tolist())
    train_classes = set(np.unique(t.labels[t.splits["train_loc"]]).tolist())
    assert set(od.unseen_classes.tolist()) == val_classes == set(DIGITS_VAL)
    assert set(od.seen_classes.tolist()) == train_classes
    rows = _idx(od.train_x) | _idx(od.test_seen_x) | _idx(od.test_unseen_x)
    assert not rows & set(t.splits["test_unseen_loc"].tolist())  # no test-class image
    assert not rows & set(t.splits["test_seen_loc"].tolist())  # nor a seen test image
    assert not _idx(od.train_x) & (_idx(od.test_seen_x) | _idx(od.test_unseen_x))
    assert set(np.unique(od.test_seen_y).tolist()) == train_classes
    assert set(np.unique(od.test_unseen_y).tolist()) == val_classes
    assert np.isin(od.train_y, DIGITS_VAL).any() == (teacher == "transductive")
    assert od.fingerprint != load_owner_data("digits", teacher=teacher).fingerprint


def test_validation_split_of_caltech(caltech_dir, fresh_table_cache):
    od = load_owner_data("xlsa17", str(caltech_dir), "effnetlite0.mat", "inductive", split="val")
    assert od.seen_classes.size == 40 and od.unseen_classes.size == 10
    test = load_owner_data("xlsa17", str(caltech_dir), "effnetlite0.mat", "inductive")
    assert not np.intersect1d(od.unseen_classes, test.unseen_classes).size


def test_validation_split_needs_val_loc(tmp_path, write_xlsa17, fresh_table_cache):
    w = write_xlsa17(tmp_path / "ds")
    with pytest.raises(DataError, match=r"split=val needs \['train_loc', 'val_loc'\]"):
        load_owner_data("xlsa17", str(w["dir"]), split="val")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_owner_data("digits", split="dev")
