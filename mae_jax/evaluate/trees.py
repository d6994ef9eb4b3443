"""Gradient-boosted trees on tabular jet features, hyper-parameters chosen on validation.

The control a physicist fits in five minutes: scikit-learn's
`HistGradientBoostingClassifier` on the observables (`baselines.observables`), with
learning rate x number of iterations x leaves per tree taken from a small grid by the
validation AUC (the test split plays no part in the choice). Seeded, so a rerun gives
the same trees.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

# small on purpose: 2 x 2 x 2 x 2 fits, each seconds on 10^4 jets. min_samples_leaf 5 next
# to scikit-learn's default 20: with ~100 labelled jets, 20 leaves the trees nearly empty
GRID = {"learning_rate": (0.05, 0.1), "max_iter": (100, 300), "max_leaf_nodes": (15, 31),
        "min_samples_leaf": (5, 20)}


def parse_grid(text: str) -> dict:
  """'learning_rate=0.05,0.1;max_iter=100' -> {"learning_rate": (0.05, 0.1), "max_iter":
  (100,)}; fields not named keep GRID's values; '' -> GRID."""
  grid = dict(GRID)
  for item in (t for t in text.split(";") if t.strip()):
    key, sep, values = item.partition("=")
    key = key.strip()
    if not sep or key not in GRID or not values.strip():
      raise ValueError(f"trees grid {item!r}: expected FIELD=V1,V2 with FIELD one of "
                       f"{list(GRID)}")
    cast = float if key == "learning_rate" else int
    try:
      grid[key] = tuple(cast(v) for v in values.split(",") if v.strip())
    except ValueError:
      raise ValueError(f"trees grid {item!r}: {key} takes {cast.__name__} values") from None
  return grid


def grid_points(grid=None):
  """The grid's points as dicts, in a fixed order (the first wins ties)."""
  grid = GRID if grid is None else grid
  keys = list(grid)
  return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def default_threads() -> int:
  """OpenMP threads for the trees: half the cores. All of them, on a machine also running
  JAX or other jobs, oversubscribes it (measured here on 2 loaded cores: 300 iterations on
  2,000 jets 113 s with 2 threads, 4 s with 1)."""
  return max(1, (os.cpu_count() or 1) // 2)


def fit_selected(x, y, xv, yv, seed=0, grid=None, threads=None):
  """Fits one classifier per grid point on (x, y); returns (the one with the best
  validation AUC, its hyper-parameters, [(hyper-parameters, validation AUC)] per point)."""
  from threadpoolctl import threadpool_limits
  with threadpool_limits(limits=threads or default_threads(), user_api="openmp"):
    return _fit_selected(x, y, xv, yv, seed, grid)


def _fit_selected(x, y, xv, yv, seed, grid):
  from sklearn.ensemble import HistGradientBoostingClassifier

  from mae_jax.evaluate import metrics
  x, xv = np.asarray(x, np.float64), np.asarray(xv, np.float64)
  y, yv = np.asarray(y).astype(np.int64), np.asarray(yv).astype(np.int64)
  for name, labels in (("train", y), ("validation", yv)):
    if len(np.unique(labels)) < 2:
      raise ValueError(f"trees: the {name} labels hold one class only "
                       f"({len(labels)} jets, {int(labels.sum())} positive)")
  best, scores = None, []
  for point in grid_points(grid):
    # early stopping off: the grid, not an internal split, chooses the size
    model = HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **point)
    model.fit(x, y)
    auc = metrics.roc_auc(yv, score(model, xv))
    scores.append((point, auc))
    if best is None or auc > best[1]:
      best = (model, auc, point)
  return best[0], best[2], scores


def score(model, x):
  """Decision scores (log-odds of class 1) of a fitted classifier."""
  return np.asarray(model.decision_function(np.asarray(x, np.float64)), np.float64)
