"""combine_over_owners: answers averaged only over owners whose teacher covers the class."""

from __future__ import annotations

import numpy as np

from azsl_flower.service import combine_over_owners


def test_combine_over_owners():
    # 3 owners, 4 classes: class 0 only owner 0, class 1 owners 1 and 2, class 3 nobody
    coverage = np.array(
        [[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]],
        dtype=bool,
    )
    y = np.array([0, 1, 2, 3, 1])
    rng = np.random.default_rng(0)
    per_owner = [rng.standard_normal((y.size, 3)).astype(np.float32) for _ in range(3)]
    out = combine_over_owners(per_owner, coverage, y)
    assert out.shape == (y.size, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], per_owner[0][0])  # one owner: its answer exactly
    for i in (1, 4):  # two owners: their mean, the uncovering owner 0 does not dilute it
        np.testing.assert_allclose(out[i], (per_owner[1][i] + per_owner[2][i]) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[2], sum(p[2] for p in per_owner) / 3, rtol=1e-6)
    np.testing.assert_array_equal(out[3], np.zeros(3))  # nobody covers class 3


def test_combine_over_owners_single_owner_is_identity_on_covered():
    coverage = np.array([[1, 1, 0]], dtype=bool)
    y = np.array([1, 0, 2, 1])
    ans = np.arange(8, dtype=np.float32).reshape(4, 2) + 1
    out = combine_over_owners([ans], coverage, y)
    np.testing.assert_array_equal(out[[0, 1, 3]], ans[[0, 1, 3]])
    np.testing.assert_array_equal(out[2], [0, 0])


def test_combine_over_owners_one_dimensional_answers():
    coverage = np.array([[1, 0], [1, 1]], dtype=bool)
    y = np.array([0, 1])
    out = combine_over_owners([np.array([2.0, 5.0]), np.array([4.0, 7.0])], coverage, y)
    np.testing.assert_allclose(out, [3.0, 7.0])
