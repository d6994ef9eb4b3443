"""The reconstruction figure (evaluate/plots.py): readable panels, axes and colour scales."""

import numpy as np
from matplotlib.colors import LogNorm, Normalize

from mae_jax.evaluate import plots


def _jets():
  rng = np.random.default_rng(0)
  b, h, w, c, p = 4, 60, 60, 5, 5
  images = np.zeros((b, h, w, c), np.float32)
  # a bright pixel above (larger row = larger η) and right of the centre, plus faint ones
  images[:, 40, 35, 0] = 50.0
  images[:, 30, 30, 1] = 2.0
  images[:, rng.integers(10, 50, 20), rng.integers(10, 50, 20), 1] = 0.01
  images[:, 28, 31, 2] = -0.3  # a signed channel (d0)
  images[:, 33, 29, 2] = 0.2
  images[:, 31, 31, 4] = 1e-3  # the faintest channel: left out with max_channels=3
  patch_mask = np.zeros((b, (h // p) * (w // p)), np.float32)
  patch_mask[:, 5] = 1.0
  labels = np.array([0, 1, 0, 1])
  return images, images * 0.5, images * 0.9, patch_mask, labels, p


def test_reconstruction_figure_is_readable():
  images, masked, recon, patch_mask, labels, p = _jets()
  names = ["ecal", "hcal", "track_d0", "track_dz", "bpix1"]
  fig = plots.reconstruction_figure(images, masked, recon, patch_mask, labels, names,
                                    ["QCD", "top"], p, "normalised (log1p)", per_class=1)
  panels = [ax for ax in fig.axes if ax.images]
  bars = [ax for ax in fig.axes if not ax.images]
  # 3 brightest channels (ecal, hcal, d0; not the empty dz nor the faint bpix1) x 2 jets x 3 views
  assert len(panels) == 3 * 2 * 3 and len(bars) == len(panels)  # a colour bar on every panel
  assert all(b.get_ylabel().endswith("normalised (log1p)") for b in bars)
  ylabels = {ax.get_ylabel() for ax in panels}
  assert {"ecal: Δη", "hcal: Δη", "track_d0: Δη"} <= ylabels and not any("bpix1" in y for y in ylabels)
  for ax in panels:
    lo, hi = ax.get_ylim()
    assert lo < hi  # η increases upward
    im = ax.images[0]
    if ax.get_ylabel().startswith("track_d0") or "track_d0" in im.colorbar.ax.get_ylabel():
      assert type(im.norm) is Normalize and im.norm.vmin == -im.norm.vmax  # signed: symmetric
    else:
      assert isinstance(im.norm, LogNorm)  # sparse energies: log scale
  # the bright ecal pixel at row 40, column 35 sits at η = (40 - 29.5) * 0.0174 > 0 and
  # φ > 0: drawn up and right of the centre (row 0 at the bottom, origin="lower")
  ax = next(a for a in panels if a.get_ylabel() == "ecal: Δη")
  assert ax.images[0].origin == "lower"
  x0, x1, y0, y1 = ax.images[0].get_extent()
  # the window is rows/columns 0..54 of 60: edges at (0 - 29.5 - 0.5) and (55 - 29.5 - 0.5)
  # pixels, so row 40 is drawn at y0 + 40.5 pixels = +0.18 (above the centre)
  np.testing.assert_allclose([x0, x1, y0, y1], np.array([-30, 25, -30, 25]) * 0.0174)
  assert y0 + 40.5 * 0.0174 > 0
  assert {"QCD jet: original", "top jet: reconstruction"} <= {a.get_title() for a in panels}
