"""The `compression` stage's path from decoded model outputs to physical images
(evaluate/compression.py) and the stage itself (protocol/controls.py:compression).

References: the raw images of the HDF5 file the dataset was converted from (the originals
after the normalisation round trip, 1e-5), the explicit four-vector mass formula of
test_fidelity (decoded jets, 1e-9 relative), and a perfect decoder (response 1, resolution 0
exactly through the same code path)."""

import json
from types import SimpleNamespace

import h5py
import numpy as np

from mae_jax import experiment, protocol
from mae_jax.evaluate import baselines, compression, fidelity, trees
from mae_jax.protocol import controls
from helpers import converted_dataset, load_config
from test_fidelity import _mass_by_hand


def _sparse_pipe(data):
  config = load_config(arg="variant=tiny,tokens=sparse")
  return experiment.make_pipeline(config, data, train=False)


def _jet_mass(image):
  """Every channel of these 3-channel test jets is calorimeter E_T (unknown layout)."""
  et = image.astype(np.float64).sum(-1)
  rows, cols = np.nonzero(et)
  return _mass_by_hand([(et[r, c], r, c) for r, c in zip(rows, cols)], image.shape[0])


def test_perfect_and_lossy_decoders_through_the_stage_path(tmp_path):
  data = converted_dataset(tmp_path)
  with h5py.File(tmp_path / "small.h5") as f:
    raw = f["test_jet"][:]
  pipe = _sparse_pipe(data)
  orig, dec, nbytes = compression.decode_split(pipe, "test", compression.exact_codec(5), 5, 8)
  np.testing.assert_allclose(orig, raw, rtol=1e-5, atol=1e-5)  # log1p round trip, float32
  np.testing.assert_array_equal(dec, orig)
  assert nbytes.shape == (16,)
  rows = compression.rate_distortion(orig, {"perfect": (nbytes, dec)}, baselines=False)
  assert rows[0]["mass_response"] == 1.0 and rows[0]["mass_resolution"] == 0.0
  assert rows[0]["pt_response"] == 1.0 and rows[0]["pt_resolution"] == 0.0

  # a decoder that loses each jet's first occupied patch: the scattered image must be the
  # original without that patch, and its mass the four-vector sum of what is left
  exact = compression.exact_codec(5)

  def lossy(batch):
    pred, b = exact(batch)
    pred = pred.copy()
    pred[:, 0] = 0.0
    return pred, b
  orig2, dec2, _ = compression.decode_split(_sparse_pipe(data), "test", lossy, 5, 8, max_jets=5)
  assert len(orig2) == 5
  want = raw[:5].copy()
  for i in range(5):
    first = np.flatnonzero(np.any(want[i].reshape(5, 5, 5, 5, 3) != 0, axis=(1, 3, 4)))[0]
    r, c = divmod(int(first), 5)
    want[i, 5 * r:5 * r + 5, 5 * c:5 * c + 5] = 0.0
  np.testing.assert_allclose(dec2, want, rtol=1e-5, atol=1e-5)
  q = fidelity.jet_quantities(dec2)
  np.testing.assert_allclose(q["mass"], [_jet_mass(x) for x in dec2], rtol=1e-9)


def _raw_observables(path, split):
  with h5py.File(path) as f:
    x, y = f[f"{split}_jet"][:], f[f"{split}_meta"][:, 0]
  return baselines.observables(x)[0], y.astype(np.int64)


def test_tree_auc_of_decoded_jets_perfect_and_lossy(tmp_path):
  """Trees fitted on the originals' observables (train), scored on the test jets' observables
  from the originals and from each decoded set, batch by batch: the perfect decoder's and
  every lossless record's AUC equal the originals' exactly (difference 0, 0 sigma); a lossy
  record (top-16 pixels) changes the scores, and a decoder that loses the top-left quadrant
  (where the label-1 jets' second prong is) loses the AUC. The accumulated rows equal the
  one-call `rate_distortion` on the concatenated images."""
  data = converted_dataset(tmp_path)
  model = trees.fit_selected(*_raw_observables(tmp_path / "small.h5", "train"),
                             *_raw_observables(tmp_path / "small.h5", "validation"), 0,
                             {"learning_rate": [0.1], "max_iter": [20], "max_leaf_nodes": [7],
                              "min_samples_leaf": [2]})[0]
  acc = compression.RateDistortion(observables=True)
  origs, decs, sizes = [], [], []
  for orig, dec, nbytes, labels in compression.iter_decoded(
      _sparse_pipe(data), "test", compression.exact_codec(5), 5, 8, max_jets=13):
    no_prong = dec.copy()
    no_prong[:, :10, :10] = 0.0
    acc.add(orig, {"perfect": (nbytes, dec), "no prong": (nbytes, no_prong)}, labels)
    origs.append(orig), decs.append(dec), sizes.append(nbytes)
  assert len(acc.labels) == 13 and set(acc.labels.tolist()) == {0, 1}
  with h5py.File(tmp_path / "small.h5") as f:
    np.testing.assert_array_equal(acc.labels, f["test_meta"][:13, 0])
  feats = acc.features
  assert feats[compression.ORIGINAL].shape == (13, len(acc.feature_names))
  aucs = compression.tree_auc({n: trees.score(model, x) for n, x in feats.items()}, acc.labels)
  orig_auc = aucs[compression.ORIGINAL]["auc"]
  assert orig_auc > 0.9  # the toy task is easy
  lost = aucs["no prong"]
  assert lost["auc"] < orig_auc - 0.2 and lost["diff"] == lost["auc"] - orig_auc
  # here every jet without its prong gets the same score: AUC 0.5 in every resample, a
  # difference with no spread, which has no sigma
  assert lost["diff_sigma"] == (lost["diff"] / lost["diff_std"] if lost["diff_std"] else None)
  rows = acc.rows()
  for r in rows:
    if r["lossless"] or r["name"] == "perfect":
      a = aucs[r["name"]]
      assert a["auc"] == orig_auc and a["diff"] == 0.0 and a["diff_sigma"] == 0.0, r["name"]
  top16 = "sparse float16 delta top-16 + zlib"
  assert not np.array_equal(trees.score(model, feats[top16]),
                            trees.score(model, feats[compression.ORIGINAL]))
  assert aucs[top16]["diff_std"] >= 0
  whole = compression.rate_distortion(np.concatenate(origs), {"perfect": (
      np.concatenate(sizes), np.concatenate(decs))})
  rows = [r for r in rows if r["name"] != "no prong"]
  assert [r["name"] for r in whole] == [r["name"] for r in rows]
  for a, b in zip(whole, rows):
    for k, v in a.items():
      assert v == b[k] if isinstance(v, (str, bool)) else np.isclose(v, b[k], rtol=1e-12), k


def test_compression_stage_writes_the_rate_distortion_table(tmp_path):
  data = converted_dataset(tmp_path)
  root = tmp_path / "proto"
  protocol.main(["--data", data, "--root", str(root), "--seeds", "0", "--tokens", "sparse",
                 "--stages", "compression", "--steps", "pretrain=3",
                 "--config.batch_size=8", "--compression.model.latents=4",
                 "--compression-jets", "10", "--trees-grid",
                 "learning_rate=0.1;max_iter=10,20;max_leaf_nodes=7;min_samples_leaf=2"])
  final = json.load(open(root / "seed0" / "compression" / "final_metrics.json"))
  assert final["latents"] == 4 and final["latent_dim"] == 8 and final["latent_bytes"] == 64
  assert final["occupancy_bytes"] == 4  # ceil(25 patches / 8)
  assert final["test/examples"] == 10 and final["compression_jets"] == 10
  names = [r["name"] for r in final["rate_distortion"]]
  assert names[0].startswith("compressive MAE, z 4×8 float16")
  mae = final["rate_distortion"][0]
  assert mae["bytes_per_jet"] == 68 and np.isfinite(mae["mass_resolution"])
  lossless = [r for r in final["rate_distortion"] if r["lossless"]]
  assert lossless and all(r["mass_resolution"] < 1e-6 for r in lossless)
  # the observable trees: fitted on the 48 train jets, chosen on validation; every lossless
  # row scores the originals' AUC exactly
  t = final["trees"]
  assert t["train_examples"] == 48 and t["test_jets"] == 10
  assert t["selected_by"] == "validation AUC over the grid"
  assert all(r["tree_auc"] == t["original"]["auc"] and r["tree_auc_diff"] == 0.0
             for r in lossless)
  assert np.isfinite(mae["tree_auc"]) and mae["tree_auc_diff_std"] >= 0
  choice = json.load(open(root / "cache" / "trees_observables_seed0.json"))
  assert choice["selected"] == t["selected"] and len(choice["grid"]) == 2
  report = open(root / "report.md").read()
  assert "### Rate–distortion" in report and "| **compressive MAE, z 4×8" in report
  assert "sparse float32 + zlib" in report and (root / "rate_distortion.png").exists()
  assert "| tree AUC | ΔAUC (σ) |" in report and "on the original test jets" in report

  # a second budget sharing the cache fits the cached choice only (launch/compression.sh)
  args = protocol.parse_args(["--data", data, "--root", str(tmp_path / "other"), "--trees-grid",
                              "learning_rate=0.1;max_iter=10,20;max_leaf_nodes=7;"
                              "min_samples_leaf=2"])[0]
  job = SimpleNamespace(args=args, cache=str(root / "cache"), seed=0)
  model, info = controls._observable_trees(job)
  assert info["selected"] == t["selected"] and "cached" in info["selected_by"]


def _final(k, d, mass, pt, diff, baselines_rows=()):
  def row(name, nbytes, lossless, mass, pt, diff):
    return {"name": name, "bytes_per_jet": nbytes, "lossless": lossless,
            "mass_response": 1.0, "mass_resolution": mass, "mass_half_width_68": mass / 2,
            "pt_response": 1.0, "pt_resolution": pt, "pt_half_width_68": pt / 2,
            "tree_auc": 0.95 + diff, "tree_auc_std": 0.003, "tree_auc_diff": diff,
            "tree_auc_diff_std": 0.001 if diff else 0.0,
            "tree_auc_diff_sigma": diff / 0.001 if diff else 0.0}
  rows = [row(f"compressive MAE, z {k}×{d} float16 + occupancy bitmap", 2 * k * d + 79, False,
              mass, pt, diff)] + [row(*b) for b in baselines_rows]
  return {"rate_distortion": rows, "latents": k, "latent_dim": d, "latent_bytes": 2 * k * d,
          "occupancy_bytes": 79, "test/examples": 1000.0, "compression_jets": 1000,
          "trees": {"original": {"auc": 0.95, "auc_std": 0.003}, "train_examples": 3600,
                    "selected_by": "validation AUC over the grid"}}


def test_budgets_merge_into_one_table_and_figure(tmp_path):
  """benchmarks/compression_budgets.py on synthetic final metrics of three budgets, given
  as a protocol root, a stage workdir and a file, out of order: MAE rows by latent bytes,
  then the first run's baselines by bytes; what each misses of the goal; the smallest
  budget meeting it; the figure."""
  import runpy
  from pathlib import Path
  base = [("sparse float32 delta + zlib", 1447.0, True, 0.0, 0.0, 0.0),
          ("sparse float16 delta top-32 + zlib", 126.0, False, 0.13, 0.17, -0.02)]
  finals = {(4, 8): _final(4, 8, 0.30, 0.10, -0.05, base),
            (16, 8): _final(16, 8, 0.04, 0.015, -0.003),
            (32, 16): _final(32, 16, 0.02, 0.01, -0.001)}
  paths = {}
  for (k, d), final in finals.items():
    wd = tmp_path / f"k{k}d{d}" / "seed0" / "compression"
    wd.mkdir(parents=True)
    (wd / "final_metrics.json").write_text(json.dumps(final))
    paths[k] = wd
  runs = [str(paths[16] / "final_metrics.json"), str(paths[32]), str(tmp_path / "k4d8")]
  script = runpy.run_path(str(Path(__file__).parent.parent / "benchmarks" /
                              "compression_budgets.py"))
  md, png = script["main"](["--out", str(tmp_path / "merged"), *runs])
  text = open(md).read()
  lines = [line for line in text.splitlines() if line.startswith("| ")]
  names = [line.split(" | ")[0][2:] for line in lines[1:]]
  assert names == ["**compressive MAE, z 4×8 float16 + occupancy bitmap**",
                   "**compressive MAE, z 16×8 float16 + occupancy bitmap**",
                   "**compressive MAE, z 32×16 float16 + occupancy bitmap**",
                   "sparse float16 delta top-32 + zlib", "sparse float32 delta + zlib"]
  cells = {n: line.split(" | ") for n, line in zip(names, lines[1:])}
  assert cells[names[0]][1] == "143 (64)" and cells[names[2]][1] == "1,103 (1,024)"
  assert "mass 0.3 > 0.05 (×6.0); pT 0.1 > 0.02 (×5.0); ΔAUC -0.0500" in lines[1]
  assert lines[2].endswith("| meets it |") and "1,024 B > 256" in lines[3]
  assert "0.9000 ± 0.0030 | -0.0500 (-50.0σ)" in lines[1]
  assert "1,447 B > 256" in lines[5]  # the lossless record meets every fidelity criterion
  assert "- compressive MAE: meets the goal: compressive MAE, z 16×8" in text
  assert "- storage baseline: none meets the goal; smallest that meets its fidelity criteria " \
         "at any size: sparse float32 delta + zlib (1,447 bytes per jet)" in text
  assert "AUC 0.9500 ± 0.0030" in text and open(png, "rb").read(4) == b"\x89PNG"
