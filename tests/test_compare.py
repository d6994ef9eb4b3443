"""The hybrid comparison command writes one table with every model's row."""

import json

import pytest

from mae_jax import compare
from mae_jax.errors import UsageError
from mae_jax.data import convert
from helpers import write_small_e2e


@pytest.mark.slow
def test_compare_two_models_table(tmp_path):
  write_small_e2e(tmp_path / "small.h5", n=(32, 16, 16))
  convert.convert([str(tmp_path / "small.h5")], str(tmp_path / "tfds"))
  rows = compare.main(["--data", str(tmp_path / "tfds"), "--root", str(tmp_path / "cmp"),
                       "--models", "mae,depthwise_mae", "--steps", "pretrain=2,probe=2,finetune=2",
                       "--stages", "pretrain,probe,finetune,probe_random",  # scratch: protocol test
                       "--speed-batch", "8", "--config.batch_size=16", "--config.task.bootstrap=5"])
  table = (tmp_path / "cmp" / "comparison.md").read_text()
  assert "| mae |" in table and "| depthwise_mae |" in table
  assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0
  assert all(r["gflop"] > 0 and r["ips"] > 0 and 0 <= r["lp_auc"][0] <= 1 for r in rows)
  # the random-encoder control ran for every model; scratch was not asked for: n/a
  assert "| LP AUC, random encoder | FT acc | FT AUC | scratch AUC |" in table
  assert all(0 <= r["lp_random_auc"][0] <= 1 and r["scratch_auc"] == [] for r in rows)
  assert all(line.endswith("| n/a |") for line in table.splitlines()
             if line.startswith("| mae |") or line.startswith("| depthwise_mae |"))
  # the table reads the test split's reconstruction; compare measures only that split
  res = json.loads((tmp_path / "cmp" / "mae" / "results.json").read_text())
  assert set(res["per_seed"][0]["recon"]) == {"test"}
  assert rows[0]["recon"][0] == res["per_seed"][0]["recon"]["test"]["mse_masked"]
  # 25x25x3 images here: different embeddings, parameter counts close but not equal
  assert rows[0]["params"] != rows[1]["params"]
  assert abs(rows[1]["params"] / rows[0]["params"] - 1) < 0.1


def test_compare_refuses_what_the_table_cannot_show(tmp_path):
  import pytest
  base = ["--data", str(tmp_path), "--root", str(tmp_path / "cmp")]
  with pytest.raises(UsageError, match="lacks test, which the table shows"):
    compare.main(base + ["--recon-splits", "train"])
  with pytest.raises(UsageError, match=r"lacks \['finetune'\]"):
    compare.main(base + ["--stages", "pretrain,probe"])
