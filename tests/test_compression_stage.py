"""The `compression` stage's path from decoded model outputs to physical images
(evaluate/compression.py) and the stage itself (protocol/controls.py:compression).

References: the raw images of the HDF5 file the dataset was converted from (the originals
after the normalisation round trip, 1e-5), the explicit four-vector mass formula of
test_fidelity (decoded jets, 1e-9 relative), and a perfect decoder (response 1, resolution 0
exactly through the same code path)."""

import json

import h5py
import numpy as np

from mae_jax import experiment, protocol
from mae_jax.evaluate import compression, fidelity
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


def test_compression_stage_writes_the_rate_distortion_table(tmp_path):
  data = converted_dataset(tmp_path)
  root = tmp_path / "proto"
  protocol.main(["--data", data, "--root", str(root), "--seeds", "0", "--tokens", "sparse",
                 "--stages", "compression", "--steps", "pretrain=3",
                 "--config.batch_size=8", "--compression.model.latents=4"])
  final = json.load(open(root / "seed0" / "compression" / "final_metrics.json"))
  assert final["latents"] == 4 and final["latent_dim"] == 8 and final["latent_bytes"] == 64
  assert final["occupancy_bytes"] == 4  # ceil(25 patches / 8)
  assert final["test/examples"] == 16
  names = [r["name"] for r in final["rate_distortion"]]
  assert names[0].startswith("compressive MAE, z 4×8 float16")
  mae = final["rate_distortion"][0]
  assert mae["bytes_per_jet"] == 68 and np.isfinite(mae["mass_resolution"])
  lossless = [r for r in final["rate_distortion"] if r["lossless"]]
  assert lossless and all(r["mass_resolution"] < 1e-6 for r in lossless)
  report = open(root / "report.md").read()
  assert "### Rate–distortion" in report and "| **compressive MAE, z 4×8" in report
  assert "sparse float32 + zlib" in report and (root / "rate_distortion.png").exists()
