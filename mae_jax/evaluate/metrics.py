"""Downstream metrics over a whole split, in float64 numpy (no sklearn at runtime).

Every metric here is computed once over all the scores of a split. Never
average a metric over batches: the per-batch AUC of the reference code is not
the AUC of the split (see ../../shared/REFERENCE.md). Collect the scores of the
split (host numpy) and call these functions once.

Conventions
  labels: [N] (or [N, 1]) with values in {0, 1} (bool, int or float); 1 = signal
          (top, or whichever class the head's single logit scores).
  scores: [N] (or [N, 1]) float, larger = more signal-like; NaN is an error,
          +-inf is allowed (ranks are well defined).

Functions
  roc_auc(labels, scores)                     exact Mann-Whitney AUC, ties = 1/2
  roc_curve(labels, scores)                   (fpr, tpr, thresholds) as sklearn
                                               with drop_intermediate=False
  background_rejection(labels, scores, eff)   1 / FPR at TPR = eff
  accuracy(labels, scores, threshold=None, *, logits=False)
  bootstrap(metric_fn, labels, scores, n=200, seed=0, stratify=False)
  hanley_mcneil_std(auc, n_pos, n_neg)        analytic AUC std (cross-check)
  regression_metrics(true, pred)              mae, resolution, bias, r2, ...
  classification_report(labels, scores, ...)  acc, auc, rejections + bootstrap stds
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "roc_auc", "roc_curve", "background_rejection", "accuracy", "bootstrap",
    "hanley_mcneil_std", "regression_metrics", "classification_report",
]


# ----------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------

def _as_1d(x, name: str) -> np.ndarray:
  """[N] or [N, 1] -> float64 [N]; anything else is an error."""
  a = np.asarray(x)
  if a.ndim == 2 and a.shape[1] == 1:
    a = a[:, 0]
  if a.ndim != 1:
    raise ValueError(f"{name} must have shape [N] or [N, 1], got {a.shape}")
  if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
    raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
  return a.astype(np.float64)


def _check_binary(labels, scores, *, need_both: bool = True):
  y = _as_1d(labels, "labels")
  s = _as_1d(scores, "scores")
  if y.shape != s.shape:
    raise ValueError(f"labels and scores must have the same length, got {y.shape} vs {s.shape}")
  if y.size == 0:
    raise ValueError("empty labels/scores")
  if not np.all((y == 0) | (y == 1)):
    bad = np.unique(y[(y != 0) & (y != 1)])[:5]
    raise ValueError(f"labels must be 0/1 (binary, not one-hot), found values like {bad}")
  if np.isnan(s).any():
    raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN values")
  if need_both:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
      raise ValueError(f"only one class present ({y.size} samples, {n_pos} positive): "
                       "the ROC / AUC is undefined")
  return y.astype(bool), s


def _average_ranks(s: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given their average rank (as scipy.stats.rankdata)."""
  order = np.argsort(s, kind="mergesort")
  sorted_s = s[order]
  # start of each run of equal values
  new = np.empty(s.size, bool)
  new[0] = True
  np.not_equal(sorted_s[1:], sorted_s[:-1], out=new[1:])
  starts = np.flatnonzero(new)
  ends = np.append(starts[1:], s.size)  # exclusive
  avg = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
  ranks_sorted = np.repeat(avg, ends - starts)
  ranks = np.empty(s.size, np.float64)
  ranks[order] = ranks_sorted
  return ranks


# ----------------------------------------------------------------------------
# ROC
# ----------------------------------------------------------------------------

def roc_auc(labels, scores) -> float:
  """Exact ROC AUC over the whole split: Mann-Whitney U / (n_pos * n_neg).

  Ties (within and across classes) get average ranks, i.e. a tied
  (signal, background) pair counts 1/2 -- identical to sklearn's
  `roc_auc_score` (trapezoidal area of the full ROC).
  """
  y, s = _check_binary(labels, scores)
  n_pos = float(y.sum())
  n_neg = float(y.size) - n_pos
  ranks = _average_ranks(s)
  u = ranks[y].sum() - n_pos * (n_pos + 1.0) / 2.0
  return float(u / (n_pos * n_neg))


def _roc_counts(y: np.ndarray, s: np.ndarray):
  """(fps, tps, thresholds) at each distinct score, descending; no (0, 0) point."""
  order = np.argsort(-s, kind="mergesort")
  s_sorted = s[order]
  y_sorted = y[order].astype(np.float64)
  distinct = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])  # not np.diff: inf - inf is NaN
  last = np.r_[distinct, y_sorted.size - 1]  # last index of each tie group
  tps = np.cumsum(y_sorted)[last]
  fps = (last + 1.0) - tps
  return fps, tps, s_sorted[last]


def roc_curve(labels, scores):
  """(fpr, tpr, thresholds), one point per distinct score plus the (0, 0) start.

  Same points as `sklearn.metrics.roc_curve(..., drop_intermediate=False)`:
  thresholds are the distinct scores in decreasing order, preceded by +inf;
  point i is the rate of `scores >= thresholds[i]`.
  """
  y, s = _check_binary(labels, scores)
  fps, tps, thr = _roc_counts(y, s)
  fps = np.r_[0.0, fps]
  tps = np.r_[0.0, tps]
  thr = np.r_[np.inf, thr]
  return fps / fps[-1], tps / tps[-1], thr


def _fpr_at_tpr(fpr: np.ndarray, tpr: np.ndarray, signal_eff: float, interpolation: str) -> float:
  i = int(np.searchsorted(tpr, signal_eff, side="left"))  # first tpr >= eff (tpr is sorted)
  i = min(i, tpr.size - 1)
  if interpolation == "step" or tpr[i] == signal_eff or i == 0:
    return float(fpr[i])
  t0, t1 = tpr[i - 1], tpr[i]
  f0, f1 = fpr[i - 1], fpr[i]
  return float(f0 + (signal_eff - t0) * (f1 - f0) / (t1 - t0))


def background_rejection(labels, scores, signal_eff: float, *,
                         interpolation: str = "linear") -> float:
  """Background rejection 1 / FPR at the working point where TPR = `signal_eff`.

  interpolation:
    "linear" (default): FPR is linearly interpolated in TPR between the two
      adjacent ROC points that bracket `signal_eff` (the last point below it and
      the first point at or above it). This is the ROC of a randomised cut
      between the two thresholds -- and across a tie group it is exactly the
      expected rate -- so it does not depend on how tied scores are ordered.
    "step": FPR of the first ROC point whose TPR >= `signal_eff`, i.e. the
      smallest real cut `scores >= t` that keeps at least that signal fraction
      (conservative: never a lower FPR than "linear").
  Returns +inf if the FPR at that working point is 0.
  """
  if not 0.0 < float(signal_eff) <= 1.0:
    raise ValueError(f"signal_eff must be in (0, 1], got {signal_eff}")
  if interpolation not in ("linear", "step"):
    raise ValueError(f"interpolation must be 'linear' or 'step', got {interpolation!r}")
  fpr, tpr, _ = roc_curve(labels, scores)
  f = _fpr_at_tpr(fpr, tpr, float(signal_eff), interpolation)
  return float("inf") if f <= 0.0 else 1.0 / f


# ----------------------------------------------------------------------------
# accuracy
# ----------------------------------------------------------------------------

def accuracy(labels, scores, threshold: float | None = None, *, logits: bool = False) -> float:
  """Fraction of correct predictions, predicted class 1 iff `scores >= threshold`.

  logits=False (default): `scores` are probabilities (sigmoid outputs) and must
    lie in [0, 1]; threshold defaults to 0.5.
  logits=True: `scores` are raw logits; threshold defaults to 0.0
    (sigmoid(0) = 0.5, so both conventions give the same predictions).
  Passing logits without `logits=True` is an error whenever any score is
  outside [0, 1].
  """
  y, s = _check_binary(labels, scores, need_both=False)
  if threshold is None:
    threshold = 0.0 if logits else 0.5
  if not logits and (np.any(s < 0.0) or np.any(s > 1.0)):
    raise ValueError("scores outside [0, 1]: these look like logits; "
                     "call accuracy(..., logits=True) (threshold 0)")
  return float(np.mean((s >= threshold) == y))


# ----------------------------------------------------------------------------
# uncertainties
# ----------------------------------------------------------------------------

def _bootstrap_indices(rng, y: np.ndarray | None, n_samples: int, stratify: bool):
  if not stratify:
    return rng.integers(0, n_samples, n_samples)
  parts = []
  for cls in (False, True):
    idx = np.flatnonzero(y == cls)
    parts.append(idx[rng.integers(0, idx.size, idx.size)])
  return np.concatenate(parts)


def bootstrap(metric_fn: Callable, labels, scores, n: int = 200, seed: int = 0, *,
              stratify: bool = False):
  """(metric_fn(labels, scores), bootstrap std) with a fixed seed.

  Draws `n` resamples of the N (label, score) pairs with replacement
  (`numpy.random.default_rng(seed)`), evaluates `metric_fn` on each and
  returns the full-sample value and the std (ddof=1) over resamples.
  stratify=True resamples signal and background separately, keeping their
  counts fixed (labels must then be 0/1); that is the variance the
  Hanley-McNeil formula describes and guarantees both classes in every
  resample. Works for any pair of equal-length arrays, e.g.
  `bootstrap(lambda t, p: regression_metrics(t, p)["resolution"], true, pred)`.
  If any resampled value is non-finite (e.g. an infinite rejection) the std is NaN.
  """
  a = np.asarray(labels)
  b = np.asarray(scores)
  if a.shape[0] != b.shape[0]:
    raise ValueError(f"labels and scores must have the same length, got {a.shape} vs {b.shape}")
  if n < 2:
    raise ValueError(f"need at least 2 bootstrap resamples, got {n}")
  y = None
  if stratify:
    y, _ = _check_binary(a, b)
  value = float(metric_fn(a, b))
  rng = np.random.default_rng(seed)
  vals = np.empty(n, np.float64)
  for i in range(n):
    idx = _bootstrap_indices(rng, y, a.shape[0], stratify)
    vals[i] = metric_fn(a[idx], b[idx])
  std = float(np.std(vals, ddof=1)) if np.all(np.isfinite(vals)) else float("nan")
  return value, std


def hanley_mcneil_std(auc: float, n_pos: int, n_neg: int) -> float:
  """Analytic AUC standard error of Hanley & McNeil (1982), for cross-checks."""
  a = float(auc)
  q1 = a / (2.0 - a)
  q2 = 2.0 * a * a / (1.0 + a)
  var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
  return float(np.sqrt(max(var, 0.0)))


# ----------------------------------------------------------------------------
# regression
# ----------------------------------------------------------------------------

def regression_metrics(true, pred) -> dict:
  """Metrics of a scalar regression (jet mass, pT), float64.

  r = (pred - true) / true is the relative residual (true must be non-zero).
    mae:        mean |pred - true|                 (absolute units)
    rmse:       sqrt(mean (pred - true)^2)         (absolute units)
    bias:       mean r                             (relative)
    resolution: std r (ddof=0)                     (relative)
    bias_abs:   mean (pred - true)                 (absolute units)
    r2:         1 - SS_res / SS_tot as sklearn's r2_score (NaN if true is constant)
    n:          number of samples
  """
  t = _as_1d(true, "true")
  p = _as_1d(pred, "pred")
  if t.shape != p.shape:
    raise ValueError(f"true and pred must have the same length, got {t.shape} vs {p.shape}")
  if t.size == 0:
    raise ValueError("empty true/pred")
  if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
    raise ValueError("true/pred contain NaN or inf")
  if np.any(t == 0):
    raise ValueError(f"{int(np.sum(t == 0))} true values are 0: the relative resolution is undefined")
  d = p - t
  r = d / t
  ss_tot = np.sum((t - t.mean()) ** 2)
  r2 = 1.0 - np.sum(d ** 2) / ss_tot if ss_tot > 0 else float("nan")
  return {"mae": float(np.mean(np.abs(d))), "rmse": float(np.sqrt(np.mean(d ** 2))),
          "bias": float(np.mean(r)), "resolution": float(np.std(r)),
          "bias_abs": float(np.mean(d)), "r2": float(r2), "n": int(t.size)}


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------

def classification_report(labels, scores, *, logits: bool = False, n_bootstrap: int = 200,
                          seed: int = 0, signal_effs=(0.5, 0.3),
                          interpolation: str = "linear") -> dict:
  """Binary classification summary over a whole split, with bootstrap stds.

  Keys: "accuracy", "auc", "rejection_50", "rejection_30" (1/FPR at 50% / 30%
  signal efficiency, see `background_rejection`), each with a "<key>_std"
  from a stratified bootstrap (`n_bootstrap` resamples, fixed `seed`; the
  same resamples for every metric), plus "n", "n_signal". `logits` as in
  `accuracy` (AUC and rejections do not depend on it).
  """
  y, s = _check_binary(labels, scores)

  def compute(yy, ss):
    fpr, tpr, _ = roc_curve(yy, ss)
    out = {"accuracy": accuracy(yy, ss, logits=logits), "auc": roc_auc(yy, ss)}
    for eff in signal_effs:
      f = _fpr_at_tpr(fpr, tpr, float(eff), interpolation)
      out[f"rejection_{int(round(100 * eff))}"] = float("inf") if f <= 0 else 1.0 / f
    return out

  report = compute(y, s)
  rng = np.random.default_rng(seed)
  samples = {k: [] for k in report}
  for _ in range(n_bootstrap):
    idx = _bootstrap_indices(rng, y, y.size, True)
    for k, v in compute(y[idx], s[idx]).items():
      samples[k].append(v)
  for k in list(report):
    vals = np.asarray(samples[k], np.float64)
    ok = n_bootstrap >= 2 and np.all(np.isfinite(vals))
    report[f"{k}_std"] = float(np.std(vals, ddof=1)) if ok else float("nan")
  report["n"] = int(y.size)
  report["n_signal"] = int(y.sum())
  return report
