"""benchmarks/budget_table.py: rows sorted by steps, each compared with the row above on the
same validation jets; other jets or a missing lever are one clear error."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import budget_table  # noqa: E402
from mae_jax.evaluate import metrics  # noqa: E402


def sweep(root, steps, y, quality, pool="pool_a", seed=0):
  """A levers.py --out directory whose pred_zeros scores separate y with `quality`."""
  rng = np.random.default_rng(seed)
  os.makedirs(root / "pred_zeros" / "seed0" / "pretrain")
  with open(root / "pred_zeros" / "seed0" / "pretrain" / "config.json", "w") as f:
    json.dump({"data": {"dir": f"data_cache/{pool}"}}, f)
  with open(root / "levers.json", "w") as f:
    json.dump({"steps": steps, "levers": {"pred_zeros": {"pretrain_seconds": 10.0 * steps}}}, f)
  scores = {f"pred_zeros/{k}": quality * y + rng.normal(size=y.size)
            for k in ("probe_100", "probe_1000", "obs_encoder_trees")}
  scores.update({f"random encoder/{k}": rng.normal(size=y.size)
                 for k in ("probe_100", "probe_1000", "obs_encoder_trees")})
  np.savez(root / "scores.npz", y=y, **scores)
  return scores


def test_rows_sorted_by_steps_and_compared_with_the_row_above(tmp_path, capsys):
  y = (np.arange(2000) % 2).astype(np.int64)
  big = sweep(tmp_path / "b", 1500, y, 2.0, seed=1)
  sweep(tmp_path / "a", 500, y, 0.5, seed=2)
  budget_table.main(["--lever", "pred_zeros", str(tmp_path / "b"), str(tmp_path / "a")])
  out = capsys.readouterr().out
  rows = [l for l in out.splitlines() if l.startswith("| ") and "steps" not in l]
  assert [r.split("|")[1].strip() for r in rows] == ["0 (random encoder)", "500", "1500"]
  assert f"{metrics.roc_auc(y, big['pred_zeros/probe_100']):.4f} (+" in rows[2]
  assert "σ)" in rows[2] and "σ" not in rows[1] and "pool_a" in rows[2]


def test_other_jets_or_a_missing_lever_are_clear_errors(tmp_path):
  y = (np.arange(200) % 2).astype(np.int64)
  sweep(tmp_path / "a", 500, y, 1.0)
  sweep(tmp_path / "b", 1500, y[::-1].copy(), 1.0)
  with pytest.raises(SystemExit, match="other validation jets"):
    budget_table.main([str(tmp_path / "a"), str(tmp_path / "b")])
  with pytest.raises(SystemExit, match="no lever 'codes'"):
    budget_table.main(["--lever", "codes", str(tmp_path / "a")])
