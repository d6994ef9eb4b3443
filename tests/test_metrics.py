"""Split-level metrics against sklearn, hand-computed cases and analytic errors."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mae_jax.evaluate import metrics


def tied_scores(rng, n, levels=20):
  """Binary labels and scores on a coarse grid (many ties, within and across classes)."""
  y = rng.integers(0, 2, n)
  s = np.round(rng.normal(size=n) + 0.8 * y, 1)
  s = np.clip(s, -levels / 20, levels / 20)
  return y, s


@pytest.mark.parametrize("seed,n", [(0, 50), (1, 1000), (2, 20000)])
def test_auc_matches_sklearn_with_ties(seed, n):
  y, s = tied_scores(np.random.default_rng(seed), n)
  assert len(np.unique(s)) < n // 2 or n == 50  # ties are present
  assert abs(metrics.roc_auc(y, s) - skm.roc_auc_score(y, s)) < 1e-12
  # float labels, bool labels and [N, 1] columns are all accepted
  assert metrics.roc_auc(y.astype(bool), s[:, None]) == metrics.roc_auc(y.astype(np.float32), s)


def test_auc_is_area_under_roc_curve_and_handles_inf():
  y, s = tied_scores(np.random.default_rng(3), 500)
  fpr, tpr, _ = metrics.roc_curve(y, s)
  assert abs(np.trapezoid(tpr, fpr) - metrics.roc_auc(y, s)) < 1e-12
  s = s.astype(np.float64)
  s[:3] = np.inf
  s[3:5] = -np.inf
  finite = np.nan_to_num(s, posinf=1e300, neginf=-1e300)  # same order (sklearn rejects inf)
  assert abs(metrics.roc_auc(y, s) - skm.roc_auc_score(y, finite)) < 1e-12
  np.testing.assert_array_equal(metrics.roc_curve(y, s)[1], metrics.roc_curve(y, finite)[1])


def test_auc_hand_computed():
  # pairs (S, B): 0.9 beats 3; 0.5 ties two 0.5s (1/2 each) and beats 0.1; 0.2 beats 0.1 -> 6/9
  y = [1, 1, 0, 0, 1, 0]
  s = [0.9, 0.5, 0.5, 0.5, 0.2, 0.1]
  assert metrics.roc_auc(y, s) == pytest.approx(2 / 3, abs=1e-15)
  assert metrics.roc_auc([0, 1], [0.3, 0.3]) == 0.5
  assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_curve_matches_sklearn(seed):
  y, s = tied_scores(np.random.default_rng(seed), 2000)
  fpr, tpr, thr = metrics.roc_curve(y, s)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-15)
  np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-15)
  assert np.isinf(thr[0]) and np.isinf(sk_thr[0])
  np.testing.assert_array_equal(thr[1:], sk_thr[1:])


def test_background_rejection_hand_computed():
  # ROC points (fpr, tpr): (0,0) (0,1/3)@0.9 (2/3,2/3)@0.5 (2/3,1)@0.2 (1,1)@0.1
  y = [1, 1, 0, 0, 1, 0]
  s = [0.9, 0.5, 0.5, 0.5, 0.2, 0.1]
  # eff 0.5 lies inside the tie group at 0.5: linear -> fpr = (0.5 - 1/3) * (2/3) / (1/3) = 1/3
  assert metrics.background_rejection(y, s, 0.5) == pytest.approx(3.0, rel=1e-14)
  # step: first real cut with tpr >= 0.5 is scores >= 0.5 -> fpr 2/3
  assert metrics.background_rejection(y, s, 0.5, interpolation="step") == pytest.approx(1.5, rel=1e-14)
  assert metrics.background_rejection(y, s, 1 / 3) == np.inf  # cut at 0.9 keeps no background
  assert metrics.background_rejection(y, s, 1.0) == pytest.approx(1.5, rel=1e-14)
  # perfectly separated -> infinite rejection
  assert metrics.background_rejection([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 0.5) == np.inf


def test_background_rejection_vs_interpolated_sklearn_roc():
  rng = np.random.default_rng(5)
  y = rng.integers(0, 2, 5000)
  s = rng.normal(size=5000) + 1.5 * y  # continuous: no ties
  fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
  for eff in (0.3, 0.5, 0.7):
    i = np.searchsorted(tpr, eff)
    expect = np.interp(eff, tpr[i - 1:i + 1], fpr[i - 1:i + 1])
    assert metrics.background_rejection(y, s, eff) == pytest.approx(1 / expect, rel=1e-12)
    # linear never beats step by more than one background event
    step = metrics.background_rejection(y, s, eff, interpolation="step")
    assert step <= metrics.background_rejection(y, s, eff) + 1e-12


def test_accuracy_probabilities_and_logits():
  y = np.array([1, 0, 1, 0, 1])
  p = np.array([0.9, 0.2, 0.5, 0.7, 0.1])  # predictions 1 0 1 1 0 -> 3/5
  assert metrics.accuracy(y, p) == pytest.approx(0.6)
  logit = np.log(p / (1 - p))
  assert metrics.accuracy(y, logit, logits=True) == pytest.approx(0.6)
  assert metrics.accuracy(y, p, threshold=0.8) == pytest.approx(0.6)  # 1 0 0 0 0
  with pytest.raises(ValueError, match="look like logits"):
    metrics.accuracy(y, logit)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="only one class"):
    metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="same length"):
    metrics.roc_auc([0, 1, 1], [0.1, 0.2])
  with pytest.raises(ValueError, match="NaN"):
    metrics.roc_auc([0, 1], [0.1, np.nan])
  with pytest.raises(ValueError, match="0/1"):
    metrics.roc_auc([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError, match=r"shape \[N\]"):
    metrics.roc_auc(np.eye(2), [0.1, 0.2])  # one-hot labels
  with pytest.raises(ValueError, match=r"shape \[N\]"):
    metrics.roc_curve([0, 1], np.zeros((2, 2)))  # two-unit scores
  with pytest.raises(ValueError, match="NaN"):
    metrics.background_rejection([0, 1], [np.nan, 0.2], 0.5)
  with pytest.raises(ValueError, match="signal_eff"):
    metrics.background_rejection([0, 1], [0.1, 0.2], 0.0)
  with pytest.raises(ValueError, match="relative resolution"):
    metrics.regression_metrics([0.0, 1.0], [0.5, 1.0])
  with pytest.raises(ValueError, match="same length"):
    metrics.regression_metrics([1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match="NaN"):
    metrics.regression_metrics([1.0, 2.0], [1.0, np.nan])


def test_regression_metrics():
  rng = np.random.default_rng(0)
  true = rng.uniform(50, 250, 3000)
  pred = true * (1.02 + 0.1 * rng.normal(size=true.size))
  m = metrics.regression_metrics(true, pred[:, None])
  assert m["r2"] == pytest.approx(skm.r2_score(true, pred), abs=1e-12)
  assert m["mae"] == pytest.approx(skm.mean_absolute_error(true, pred), abs=1e-12)
  rel = (pred - true) / true
  assert m["bias"] == pytest.approx(rel.mean(), abs=1e-14)
  assert m["resolution"] == pytest.approx(rel.std(), abs=1e-14)
  assert abs(m["bias"] - 0.02) < 0.01 and abs(m["resolution"] - 0.1) < 0.01
  assert m["n"] == 3000


def test_bootstrap_std_vs_hanley_mcneil():
  """Stratified bootstrap AUC std vs the analytic Hanley-McNeil std.

  Binormal scores, 1000 + 1000 samples, AUC ~ 0.80. With 200 resamples the
  bootstrap std has ~5% sampling error and Hanley-McNeil (which assumes
  exponential score distributions) is itself approximate: tolerance is a
  factor 1.25 either way. Also checked against the spread of AUC over 200
  independent data sets (same factor).
  """
  rng = np.random.default_rng(0)
  n = 1000

  def sample():
    return np.r_[np.zeros(n), np.ones(n)], np.r_[rng.normal(size=n), rng.normal(1.2, 1.0, n)]

  y, s = sample()
  auc, std = metrics.bootstrap(metrics.roc_auc, y, s, n=200, seed=0, stratify=True)
  assert auc == metrics.roc_auc(y, s)
  hm = metrics.hanley_mcneil_std(auc, n, n)
  assert 1 / 1.25 < std / hm < 1.25, (std, hm)
  spread = np.std([metrics.roc_auc(*sample()) for _ in range(200)], ddof=1)
  assert 1 / 1.25 < std / spread < 1.25, (std, spread)
  # fixed seed -> identical result; different seed -> different std
  assert metrics.bootstrap(metrics.roc_auc, y, s, n=200, seed=0, stratify=True) == (auc, std)
  assert metrics.bootstrap(metrics.roc_auc, y, s, n=50, seed=1, stratify=True)[1] != std
  # plain (unstratified) bootstrap of a regression metric works too
  t = rng.uniform(1, 2, 500)
  val, err = metrics.bootstrap(lambda a, b: metrics.regression_metrics(a, b)["mae"], t, t + 0.1, n=20)
  assert val == pytest.approx(0.1) and err < 1e-12


def test_classification_report():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 4000)
  logit = rng.normal(size=y.size) + 1.5 * y - 0.75
  rep = metrics.classification_report(y, logit, logits=True, n_bootstrap=30, seed=0)
  assert rep["auc"] == pytest.approx(skm.roc_auc_score(y, logit), abs=1e-12)
  assert rep["accuracy"] == metrics.accuracy(y, logit, logits=True)
  assert rep["rejection_50"] == metrics.background_rejection(y, logit, 0.5)
  assert rep["rejection_30"] == metrics.background_rejection(y, logit, 0.3)
  assert rep["rejection_30"] > rep["rejection_50"] > 1
  for k in ("accuracy", "auc", "rejection_50", "rejection_30"):
    assert 0 < rep[f"{k}_std"] < 0.3 * rep[k], (k, rep)
  assert rep["n"] == 4000 and rep["n_signal"] == int(y.sum())
  probs = 1 / (1 + np.exp(-logit))
  rep_p = metrics.classification_report(y, probs, n_bootstrap=30, seed=0)
  for k in ("accuracy", "auc", "auc_std", "rejection_50"):
    assert rep_p[k] == pytest.approx(rep[k], rel=1e-9)
