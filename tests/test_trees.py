"""Gradient-boosted trees on observables (evaluate/trees.py): a nonlinear rule, choice on validation."""

import numpy as np
import pytest

from mae_jax.evaluate import trees

GRID = {"learning_rate": (0.03, 0.3), "max_iter": (10, 30), "max_leaf_nodes": (7,)}


def xor_data(n, seed):
  """Labels from a rule no linear model can learn: the sign of x0 * x1 (plus a noise column)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3))
  return x, (x[:, 0] * x[:, 1] > 0).astype(np.int64)


def test_trees_recover_a_nonlinear_rule_and_choose_on_validation():
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  x, y = xor_data(600, 0)
  xv, yv = xor_data(400, 1)
  xt, yt = xor_data(400, 2)
  model, chosen, grid = trees.fit_selected(x, y, xv, yv, seed=0, grid=GRID)
  # a linear model is at chance on this rule, the trees are not
  linear = roc_auc_score(yt, LogisticRegression().fit(x, y).decision_function(xt))
  assert abs(linear - 0.5) < 0.1, linear
  assert roc_auc_score(yt, trees.score(model, xt)) > 0.95
  # every grid point was tried, and the choice is the argmax of the validation AUCs
  # (recomputed here with scikit-learn's roc_auc_score, to 1e-12)
  assert [p for p, _ in grid] == trees.grid_points(GRID) and len(grid) == 4
  from sklearn.ensemble import HistGradientBoostingClassifier
  from threadpoolctl import threadpool_limits
  for point, auc in grid:
    with threadpool_limits(limits=1, user_api="openmp"):  # one thread: see trees.default_threads
      ref = HistGradientBoostingClassifier(random_state=0, early_stopping=False, **point).fit(x, y)
    assert abs(auc - roc_auc_score(yv, ref.decision_function(xv))) < 1e-12, point
  assert chosen == max(grid, key=lambda g: g[1])[0]
  # seeded: the same fit twice gives the same scores
  again, _, _ = trees.fit_selected(x, y, xv, yv, seed=0, grid=GRID)
  np.testing.assert_array_equal(trees.score(again, xt), trees.score(model, xt))


def test_trees_refuse_one_class_validation():
  x, y = xor_data(50, 0)
  with pytest.raises(ValueError, match="validation labels hold one class only"):
    trees.fit_selected(x, y, x, np.zeros_like(y), grid=GRID)


def test_grid_from_the_command_line():
  assert trees.parse_grid("") == trees.GRID
  g = trees.parse_grid("learning_rate=0.2;max_iter=5,10")
  assert g == {**trees.GRID, "learning_rate": (0.2,), "max_iter": (5, 10)}
  assert len(trees.grid_points(g)) == (1 * 2 * len(trees.GRID["max_leaf_nodes"])
                                       * len(trees.GRID["min_samples_leaf"]))
  with pytest.raises(ValueError, match="'depth=3'.*one of"):
    trees.parse_grid("depth=3")
  with pytest.raises(ValueError, match="max_iter takes int"):
    trees.parse_grid("max_iter=0.5")
