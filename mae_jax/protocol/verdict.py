"""The verdict: each pretrained stage against the strongest control that ran, every
difference in units of its uncertainty, anything within 2 sigma a tie.

Uncertainty of an AUC difference between two classifiers of one seed: the std of the
difference over stratified bootstrap resamples of the *same* test jets (paired: both
classifiers scored every jet, so their shared jet-to-jet noise cancels). Over several
seeds the difference is the seeds' mean, and sigma the larger of the bootstrap's
(sqrt(sum s_i^2) / n) and the seeds' standard error (std / sqrt(n)).
"""

from __future__ import annotations

import os

import numpy as np

from mae_jax.protocol import stages as stages_lib

TIE_SIGMA = 2.0


def _scores(workdir):
  path = os.path.join(workdir or "", "test_scores.npz")
  if not workdir or not os.path.exists(path):
    return None
  d = np.load(path)
  return np.asarray(d["label"]).astype(np.int64), np.asarray(d["score"], np.float64)


def paired_auc_difference(labels, score_a, score_b, n_bootstrap=200, seed=0):
  """(AUC(a) - AUC(b), bootstrap std of the difference) over stratified resamples of the
  same jets (class counts fixed, the same resample for both classifiers)."""
  from mae_jax.evaluate import metrics
  y = np.asarray(labels).astype(np.int64)
  diff = metrics.roc_auc(y, score_a) - metrics.roc_auc(y, score_b)
  rng = np.random.default_rng(seed)
  pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
  draws = []
  for _ in range(n_bootstrap):
    idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
    draws.append(metrics.roc_auc(y[idx], score_a[idx]) - metrics.roc_auc(y[idx], score_b[idx]))
  return float(diff), float(np.std(draws, ddof=1))


def compare(per_seed, a, b, size, n_bootstrap=200):
  """{"diff", "sigma", "sigma_boot", "sigma_seeds", "n_seeds", "paired", "test_jets"} of
  stage a's test AUC minus stage b's at a labelled-set size, or None if either is missing."""
  key = stages_lib.size_key(size)
  diffs, boots, paired, jets = [], [], True, 0
  for res in per_seed:
    fa, fb = (res["by_labelled"].get(key, {}).get(st) for st in (a, b))
    if not fa or not fb or fa.get("test/auc") is None or fb.get("test/auc") is None:
      continue
    sa, sb = (_scores(res.get("workdirs", {}).get(f"{st}@{key}")) for st in (a, b))
    if sa is not None and sb is not None and np.array_equal(sa[0], sb[0]):
      d, s = paired_auc_difference(sa[0], sa[1], sb[1], n_bootstrap, seed=res.get("seed", 0))
      jets = len(sa[0])
    else:  # no common test scores: the two bootstrap stds as if independent
      paired = False
      d = float(fa["test/auc"]) - float(fb["test/auc"])
      s = float(np.hypot(fa.get("test/auc_std") or 0.0, fb.get("test/auc_std") or 0.0))
    diffs.append(d)
    boots.append(s)
  if not diffs:
    return None
  n = len(diffs)
  sigma_boot = float(np.sqrt(np.sum(np.square(boots)))) / n
  sigma_seeds = float(np.std(diffs, ddof=1) / np.sqrt(n)) if n > 1 else None
  return {"diff": float(np.mean(diffs)), "sigma": max(sigma_boot, sigma_seeds or 0.0),
          "sigma_boot": sigma_boot, "sigma_seeds": sigma_seeds, "n_seeds": n,
          "paired": paired, "test_jets": jets}


def mean_auc(per_seed, stage, size):
  vals = [res["by_labelled"].get(stages_lib.size_key(size), {}).get(stage, {}).get("test/auc")
          for res in per_seed]
  vals = [v for v in vals if v is not None and np.isfinite(v)]
  return float(np.mean(vals)) if vals else None


def strongest_control(per_seed, size):
  """The classification control (Stage.control) with the highest mean test AUC that ran."""
  ran = [(mean_auc(per_seed, s.name, size), s.name) for s in stages_lib.TABLE
         if s.control and s.kind == "classify"]
  ran = [(auc, name) for auc, name in ran if auc is not None]
  return max(ran)[1] if ran else None


def call(c) -> str:
  """'above' / 'below' / 'a tie' for a comparison (within TIE_SIGMA sigma: a tie)."""
  if c["sigma"] > 0 and abs(c["diff"]) <= TIE_SIGMA * c["sigma"] or c["diff"] == 0:
    return "a tie"
  if c["sigma"] == 0:  # no uncertainty estimate (a single jet class?): say so
    return ("above" if c["diff"] > 0 else "below") + " (no uncertainty estimate)"
  return "above" if c["diff"] > 0 else "below"


def sentence(per_seed, a, b, size, what=""):
  """One line: a's AUC against b's, the difference in units of its uncertainty, the call."""
  c = compare(per_seed, a, b, size)
  if c is None:
    return None
  how = (f"paired bootstrap on the same {c['test_jets']} test jets" if c["paired"] else
         "bootstrap stds of the two AUCs combined (no common test scores)")
  if c["sigma_seeds"] is not None:
    how += f"; {c['n_seeds']} seeds' standard error {c['sigma_seeds']:.4f}"
  z = c["diff"] / c["sigma"] if c["sigma"] > 0 else float("inf") * np.sign(c["diff"] or 1)
  z_txt = f"{z:+.1f}σ" if np.isfinite(z) else "σ = 0"
  return (f"{what}{a} AUC {mean_auc(per_seed, a, size):.4f} vs {b} "
          f"{mean_auc(per_seed, b, size):.4f}: difference {c['diff']:+.4f} ± {c['sigma']:.4f} "
          f"({how}) = {z_txt}: **{call(c)}**.")


def verdict_lines(per_seed, size):
  """The verdict: every stage's `versus` comparisons (STRONGEST = the strongest control)."""
  out, strongest = [], strongest_control(per_seed, size)
  for record in stages_lib.TABLE:
    if mean_auc(per_seed, record.name, size) is None:
      continue
    for other in record.versus:
      if other == stages_lib.STRONGEST:
        if strongest is None:
          continue
        line = sentence(per_seed, record.name, strongest, size,
                        f"Against the strongest control that ran ({strongest}): ")
      else:
        line = sentence(per_seed, record.name, other, size)
      if line:
        out.append(line)
  return out
