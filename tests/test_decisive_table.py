"""benchmarks/decisive_table.py: the headline tables merged from every finished stage under a
protocol root (seeds and sizes from different runs), comparisons as the verdict makes them."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import decisive_table  # noqa: E402
from mae_jax.evaluate import metrics  # noqa: E402
from mae_jax.protocol import stages as stages_lib  # noqa: E402


def finished(root, seed, size, stage, y, quality, rng):
  """A finished stage: test scores separating y with `quality`, and its final metrics."""
  workdir = stages_lib.run_dir(str(root), seed, size, stage)
  os.makedirs(workdir)
  score = quality * y + rng.normal(size=y.size)
  np.savez(os.path.join(workdir, "test_scores.npz"), label=y, score=score)
  with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
    json.dump({"test/auc": metrics.roc_auc(y, score), "test/auc_std": 0.01}, f)
  return metrics.roc_auc(y, score)


def test_tables_merge_seeds_and_sizes_and_call_each_comparison(tmp_path, capsys):
  rng = np.random.default_rng(0)
  y = np.repeat([0, 1], 1000)
  aucs = {}
  quality = {"probe": 2.0, "probe_random": 0.5, "finetune": 2.1, "scratch": 1.9,
             "observables_gbt": 3.0}
  for seed in (0, 1):  # seed 1 ran the 100-label size only, without scratch
    for stage, q in quality.items():
      if seed == 1 and stage == "scratch":
        continue
      aucs[seed, stage] = finished(tmp_path, seed, 100, stage, y, q, rng)
  aucs[0, "resnet@all"] = finished(tmp_path, 0, None, "resnet", y, 2.5, rng)
  decisive_table.main([str(tmp_path), "--seeds", "0,1", "--sizes", "100,all"])
  out = capsys.readouterr().out
  rows = {l.split(" | ")[0].strip("| "): l.strip("|").split(" | ")[1:] for l in out.splitlines()
          if l.startswith("| ") and not l.startswith("| stage") and not l.startswith("| comp")}
  probe = [aucs[s, "probe"] for s in (0, 1)]
  assert rows["probe"][0].strip() == (f"{np.mean(probe):.4f} ± {np.std(probe, ddof=1):.4f} "
                                      "(2 seeds)")
  assert rows["scratch"][0].strip() == f"{aucs[0, 'scratch']:.4f} ± 0.0100"  # one seed
  assert rows["resnet"] == ["–", f"{aucs[0, 'resnet@all']:.4f} ± 0.0100 "]
  assert "probe − probe_random: +" in rows["what pretraining put in the frozen features"][0]
  assert "(above, 2 seeds)" in rows["what pretraining put in the frozen features"][0]
  goal = rows["best pretrained − strongest control (goal ≥ +3σ)"]
  assert "finetune − observables_gbt: -" in goal[0] and "(below, 2 seeds)" in goal[0]
  assert rows["finetune vs the same model from scratch"][0].endswith(")")  # seed 0 only
  assert "2 seeds" not in rows["finetune vs the same model from scratch"][0]


def test_versus_pairs_each_stage_of_two_roots_on_the_same_jets(tmp_path, capsys):
  """--versus: OTHER − ROOT per stage both ran, paired on the same test jets; a stage only
  one root ran gets no row."""
  rng = np.random.default_rng(1)
  y = np.repeat([0, 1], 1000)
  base, other = tmp_path / "tiny", tmp_path / "small"
  score = {}
  for root, q in ((base, 1.0), (other, 3.0)):
    for stage in ("finetune", "observables_gbt"):
      finished(root, 0, 100, stage, y, q if stage == "finetune" else 2.0, rng)
    workdir = stages_lib.run_dir(str(root), 0, 100, "finetune")
    score[root] = np.load(os.path.join(workdir, "test_scores.npz"))["score"]
  finished(base, 0, 100, "scratch", y, 1.0, rng)
  decisive_table.main([str(base), "--sizes", "100", "--versus", str(other)])
  out = capsys.readouterr().out
  table = out[out.index(f"| stage: {other} − {base} |"):].splitlines()
  rows = {l.split(" | ")[0].strip("| "): l.strip("|").split(" | ")[1] for l in table[2:]}
  assert set(rows) == {"finetune", "observables_gbt"}  # scratch: only the base root ran it
  # the same control's scores under both roots: no spread, no σ
  np.savez(os.path.join(stages_lib.run_dir(str(other), 0, 100, "observables_gbt"),
                        "test_scores.npz"),
           **np.load(os.path.join(stages_lib.run_dir(str(base), 0, 100, "observables_gbt"),
                                  "test_scores.npz")))
  decisive_table.main([str(base), "--sizes", "100", "--versus", str(other)])
  out = capsys.readouterr().out
  assert "| observables_gbt | +0.0000 (a tie) |" in out
  from mae_jax.protocol import verdict
  diff, sigma = verdict.paired_auc_difference(y, score[other], score[base], seed=0)
  assert rows["finetune"].strip() == f"{diff:+.4f} = {diff / sigma:+.1f}σ (above)"
  assert diff > 0.05


@pytest.mark.parametrize("args,message", [
    (["ROOT", "--versus", "/no/such/other"], "/no/such/other is not a directory"),
    (["/no/such/root"], "/no/such/root is not a directory"),
    (["ROOT", "--sizes", "100,x"], "--sizes '100,x': integers"),
    (["ROOT"], "no finished classification stage under"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
  with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
    decisive_table.main([str(tmp_path) if a == "ROOT" else a for a in args])
