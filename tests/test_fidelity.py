"""Fidelity in physics: decoded jet mass against a numpy formula, identity and scaling."""

import numpy as np
import pytest

from data_fixtures import sparse_images
from mae_jax.evaluate import baselines, fidelity

E2E = ["track_pt", "track_d0", "track_dz", "ecal", "hcal", "bpix1", "bpix2", "bpix3"]


def _mass_by_hand(pixels, size, pixel_size=baselines.PIXEL_SIZE):
  """Invariant mass of massless particles (E_T, row, col): explicit four-vector sum."""
  p = np.zeros(4)
  for et, r, c in pixels:
    eta, phi = (r - (size - 1) / 2) * pixel_size, (c - (size - 1) / 2) * pixel_size
    p += et * np.array([np.cosh(eta), np.cos(phi), np.sin(phi), np.sinh(eta)])
  return np.sqrt(p[0] ** 2 - p[1] ** 2 - p[2] ** 2 - p[3] ** 2)


def test_decoded_mass_against_numpy_formula():
  size = 25
  orig = np.zeros((1, size, size, 8), np.float32)
  orig[0, 3, 4, 3], orig[0, 20, 18, 4], orig[0, 12, 12, 3] = 40.0, 25.0, 10.0
  dec = orig.copy()
  dec[0, 20, 18, 4] = 20.0  # the decoder lost 5 GeV of HCAL E_T, and ECAL moved a pixel
  dec[0, 12, 12, 3], dec[0, 12, 13, 3] = 0.0, 10.0
  q = fidelity.jet_quantities(dec, E2E)
  m_dec = _mass_by_hand([(40.0, 3, 4), (20.0, 20, 18), (10.0, 12, 13)], size)
  m_orig = _mass_by_hand([(40.0, 3, 4), (25.0, 20, 18), (10.0, 12, 12)], size)
  np.testing.assert_allclose(q["mass"], [m_dec], rtol=1e-12)
  f = fidelity.fidelity(orig, dec, E2E)
  np.testing.assert_allclose(f["mass"]["response"], m_dec / m_orig, rtol=1e-12)
  np.testing.assert_allclose(f["pt"]["response"], 70.0 / 75.0, rtol=1e-12)
  np.testing.assert_allclose(f["energy_hcal"]["response"], 0.8, rtol=1e-12)
  assert f["energy_track_pt"]["n"] == 0 and f["energy_track_pt"]["n_excluded"] == 1
  assert np.isnan(f["energy_track_pt"]["response"])


def test_identity_and_scaling():
  x = sparse_images(5, h=25, w=25, c=8, seed=2, frac=0.05)
  x[4] = 0.0  # an empty jet: excluded everywhere, not a NaN in the statistics
  same = fidelity.fidelity(x, x.copy(), E2E)
  for k, s in same.items():
    assert s["response"] == pytest.approx(1.0, abs=1e-12), k
    assert s["resolution"] == pytest.approx(0.0, abs=1e-12) and s["half_width_68"] < 1e-12
    assert s["n"] == 4 and s["n_excluded"] == 1
  scaled = fidelity.fidelity(x, 1.1 * x, E2E)
  for k in ("mass", "pt", "energy_ecal", "energy_track_d0"):
    assert scaled[k]["response"] == pytest.approx(1.1, rel=1e-6), k
    assert scaled[k]["resolution"] < 1e-6
  for k in ("tau21", "tau32"):  # ratios of τ: invariant under a global scale
    assert scaled[k]["response"] == pytest.approx(1.0, rel=1e-6), k


def test_response_resolution_by_formula():
  rng = np.random.default_rng(0)
  orig = rng.uniform(50, 150, 1000)
  r = rng.normal(1.05, 0.1, 1000)
  s = fidelity.response_resolution(np.append(orig, 0.0), np.append(orig * r, 3.0))
  assert s["n"] == 1000 and s["n_excluded"] == 1
  np.testing.assert_allclose([s["response"], s["resolution"]], [r.mean(), r.std()], rtol=1e-9)
  # Gaussian: the 68% half-width estimates σ (statistical tolerance for 1000 draws)
  assert s["half_width_68"] == pytest.approx(0.1, rel=0.1)
  with pytest.raises(ValueError, match="matching"):
    fidelity.response_resolution(orig, orig[:3])
  with pytest.raises(ValueError, match="do not match"):
    fidelity.fidelity(np.zeros((1, 5, 5, 2)), np.zeros((1, 5, 5, 3)))
