"""Interval functions against scipy's own."""

import numpy as np
import pytest
from scipy import stats

from stamp_st.errors import StampInputError
from stamp_st.evaluation.splits import given_split, leave_one_slide_out
from stamp_st.evaluation.stats import bootstrap_interval, t_interval


def test_t_interval_matches_scipy():
    v = np.array([0.61, 0.72, 0.55, 0.68, 0.70])
    iv = t_interval(v)
    lo, hi = stats.t.interval(0.95, df=len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert iv.mean == pytest.approx(v.mean())
    assert iv.low == pytest.approx(lo) and iv.high == pytest.approx(hi)
    assert iv.n == 5 and iv.method == "t"


def test_t_interval_drops_nan_and_single_value():
    iv = t_interval([0.5, float("nan")])
    assert iv.n == 1 and iv.method == "single" and np.isnan(iv.low)
    assert t_interval([]).format().startswith("n/a (undefined")  # n/a always says why


def test_bootstrap_matches_scipy_percentile():
    rng = np.random.default_rng(1)
    v = rng.normal(0.4, 0.1, size=200)
    iv = bootstrap_interval(v, n_boot=4000, seed=0)
    ref = stats.bootstrap((v,), np.mean, n_resamples=4000, method="percentile", random_state=0)
    assert iv.low == pytest.approx(ref.confidence_interval.low, abs=0.005)
    assert iv.high == pytest.approx(ref.confidence_interval.high, abs=0.005)
    assert iv.low < v.mean() < iv.high


def test_splits_hold_out_whole_slides():
    s = np.array(["a", "a", "b", "c", "b"])
    folds = leave_one_slide_out(s)
    assert [f.name for f in folds] == ["a", "b", "c"]
    for f in folds:
        assert set(s[f.test_idx]) == {f.name} and f.name not in set(s[f.train_idx])
        assert len(f.train_idx) + len(f.test_idx) == len(s)
    (g,) = given_split(s, ["c"])
    assert g.test_idx.tolist() == [3]
    with pytest.raises(StampInputError):
        given_split(s, ["z"])
    with pytest.raises(StampInputError):
        leave_one_slide_out(["a", "a"])
