"""Tests for mae_jax.simulation (Pythia 8 + FastJet jet-image generation).

The generation tests are skipped, with a reason, only when `pythia8mc` cannot
be imported (install with `pip install -e .[generate]`). Each physics file is
generated once per module (a few hundred jets with 2 workers, ~10-20 s each on
two cores); the physics checks are computed from the written HDF5 files.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mae_jax.simulation import detector, writer

try:
  import pythia8mc  # noqa: F401

  HAVE_PYTHIA = True
except ImportError:
  HAVE_PYTHIA = False
requires_pythia = pytest.mark.skipif(
    not HAVE_PYTHIA,
    reason="pythia8mc is not importable (install the 'generate' extra: pip install -e .[generate])"
)

h5py = pytest.importorskip("h5py")

SPLITS = ("train", "validation", "test")
N_QG = 200
N_TOP = 150


def _read_all(path):
  with h5py.File(path, "r") as f:
    jets = np.concatenate([f[f"{s}_jet"][:] for s in SPLITS])
    meta = np.concatenate([f[f"{s}_meta"][:] for s in SPLITS])
  return jets, meta


@pytest.fixture(scope="module")
def qg_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("gen") / "qg.h5"
  summary = writer.generate("qcd_quark_gluon", N_QG, str(path), seed=11, workers=2, progress=False)
  return path, summary


@pytest.fixture(scope="module")
def top_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("gen") / "top.h5"
  summary = writer.generate("boosted_top", N_TOP, str(path), seed=5, workers=2, progress=False)
  return path, summary


# Image-derived observables.
def _delta_r_grid():
  c = (np.arange(detector.IMAGE_SIZE) - detector.IMAGE_SIZE // 2) * detector.PIXEL_SIZE
  return np.hypot(c[:, None], c[None, :])


def _multiplicity(jets, radius):
  """Non-zero track-pT and ECAL pixels within `radius` of the jet axis."""
  inside = _delta_r_grid() < radius
  tracks = (jets[..., 0] > 0) & inside
  ecal = (jets[..., 3] > 0) & inside
  return tracks.sum(axis=(1, 2)) + ecal.sum(axis=(1, 2))


def _girth(jets, radius):
  """pT-weighted mean ΔR from the axis of track + ECAL + HCAL within `radius`."""
  dr = _delta_r_grid()
  w = (jets[..., 0] + jets[..., 3] + jets[..., 4]) * (dr < radius)
  return (w * dr).sum(axis=(1, 2)) / np.maximum(w.sum(axis=(1, 2)), 1e-9)


# Argument validation (no Pythia needed).
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(process="ttbar"), "unknown process"),
        (dict(num=0), "num must be a positive"),
        (dict(num=-5), "num must be a positive"),
        (dict(split=(0.5, 0.1, 0.1)), "sum to 1"),
        (dict(split=(0.9, 0.1)), "3 fractions"),
        (dict(split=(1.2, -0.1, -0.1)), ">= 0"),
        (dict(workers=0), "workers"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
  args = dict(process="boosted_top", num=4, output=str(tmp_path / "x.h5"))
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    writer.generate(**args)
  assert not (tmp_path / "x.h5").exists()


def test_cli_bad_arguments(tmp_path):
  out = str(tmp_path / "x.h5")
  for extra, msg in [
      (["--process", "nope", "--num", "4"], "unknown process"),
      (["--process", "boosted_top", "--num", "0"], "num must be a positive"),
      (["--process", "boosted_top", "--num", "4", "--split", "0.5,0.5,0.5"], "sum to 1"),
      (["--process", "boosted_top", "--num", "4", "--split", "a,b,c"], "comma-separated"),
  ]:
    r = subprocess.run(
        [sys.executable, "-m", "mae_jax.simulation", "--output", out, *extra],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr


def test_assign_splits_balanced_and_deterministic():
  split_of, row_of, sizes = writer.assign_splits(1000, (0.8, 0.1, 0.1), seed=3)
  assert sizes == [800, 100, 100]
  labels = np.arange(1000) % 2 == 0
  for s in range(3):
    members = split_of == s
    assert labels[members].sum() == (~labels[members]).sum()
    assert sorted(row_of[members]) == list(range(sizes[s]))
  again = writer.assign_splits(1000, (0.8, 0.1, 0.1), seed=3)
  assert np.array_equal(again[0], split_of) and np.array_equal(again[1], row_of)


def test_make_image_channels():
  """Synthetic particles land in the expected channels and pixels."""
  rng = np.random.default_rng(0)
  # columns: px, py, pz, e, id, charge, xProd, yProd, zProd
  parts = np.array(
      [
          [50.0, 0.0, 0.0, 50.0, 211, 1, 0, 0, 0],  # charged pion on the axis
          [0.0, 20.0, 0.0, 20.0, 22, 0, 0, 0, 0],  # photon at phi = pi/2 (outside)
          [10.0, 0.0, 0.0, 10.0, 22, 0, 0, 0, 0],  # photon on the axis
          [10.0, 0.0, 0.0, 10.0, 130, 0, 0, 0, 0],  # K0L on the axis
          [10.0, 0.0, 0.0, 10.0, 13, -1, 0, 0, 0],  # muon: tracks and pixels only
      ]
  )
  img = detector.make_image(parts, 0.0, 0.0, rng)
  assert img.shape == (125, 125, 8) and img.dtype == np.float32
  c = 62
  assert img[c, c, 0] == pytest.approx(60.0, rel=0.05)  # two tracks on the axis
  assert abs(img[c, c, 1]) < 0.2 and abs(img[c, c, 2]) < 0.2  # prompt: resolution only
  assert img[c, c, 3] == pytest.approx(10.0, rel=0.2)
  assert img[60:65, 60:65, 4].sum() == pytest.approx(60.0, rel=0.5)  # pion + K0L in one tower
  assert np.allclose(img[60:65, 60:65, 4], img[60, 60, 4])  # uniform over the tower
  assert img[..., 5:].sum() == 6  # two charged particles x three layers


# Generation (needs pythia8mc).
@requires_pythia
def test_schema(qg_file):
  path, summary = qg_file
  with h5py.File(path, "r") as f:
    total = 0
    for s in SPLITS:
      jets, meta = f[f"{s}_jet"], f[f"{s}_meta"]
      assert jets.dtype == np.float32 and meta.dtype == np.float32
      assert jets.shape[1:] == (125, 125, 8) and meta.shape == (jets.shape[0], 3)
      assert jets.chunks == (1, 125, 125, 8) and jets.compression in ("gzip", "lzf")
      labels = meta[:, 0]
      assert set(np.unique(labels)) <= {0.0, 1.0}
      assert abs(int((labels == 1).sum()) - int((labels == 0).sum())) <= 1
      assert summary["counts"][s] == {"0": int((labels == 0).sum()), "1": int((labels == 1).sum())}
      total += len(meta)
    assert total == N_QG
    assert f["train_meta"].shape[0] == 160 and f["validation_meta"].shape[0] == 20
    assert list(f.attrs["channel_names"]) == detector.CHANNEL_NAMES
    assert list(f.attrs["meta_names"]) == ["label", "jet_mass", "jet_pt"]
    assert f.attrs["process"] == "qcd_quark_gluon"
    assert list(f.attrs["label_names"]) == ["quark", "gluon"]
    assert int(f.attrs["seed"]) == 11
    assert f.attrs["generator"].startswith("pythia8mc ") and " + fastjet " in f.attrs["generator"]
    assert float(f.attrs["pixel_size"]) == pytest.approx(0.0174)
    for key in ("ecal_resolution", "hcal_resolution", "d0_resolution_mm", "dz_resolution_mm"):
      assert key in f.attrs
  jets, meta = _read_all(path)
  assert np.isfinite(jets).all() and np.isfinite(meta).all()
  assert (jets[..., [0, 3, 4, 5, 6, 7]] >= 0).all()
  # (almost) every jet has tracks, calorimeter energy and pixel hits within dR < 0.4
  core = _delta_r_grid() < 0.4
  assert (jets[..., 0][:, core].sum(axis=1) > 0).mean() > 0.97
  assert (jets[..., 5][:, core].sum(axis=1) > 0).mean() > 0.97
  assert (jets[..., 3:5][:, core].sum(axis=(1, 2)) > 0).all()
  # d0/dz are smeared, so not all zero; prompt tracks have small values (mm)
  d0 = jets[..., 1][jets[..., 0] > 0]
  assert (d0 != 0).all() and np.median(np.abs(d0)) < 0.1
  # jet kinematics inside the documented window
  assert ((meta[:, 2] > 70) & (meta[:, 2] < 100)).all()
  assert summary["jets_per_second"] > 0


@requires_pythia
def test_quark_gluon_physics(qg_file):
  jets, meta = _read_all(qg_file[0])
  gluon, quark = meta[:, 0] == 1, meta[:, 0] == 0
  mult = _multiplicity(jets, 0.4)
  girth = _girth(jets, 0.4)
  assert mult[gluon].mean() > 1.15 * mult[quark].mean(), (mult[gluon].mean(), mult[quark].mean())
  g, q = girth[gluon].mean(), girth[quark].mean()
  assert g > 1.15 * q, (g, q)
  assert np.median(meta[gluon, 1]) > np.median(meta[quark, 1])  # gluon jets are heavier


@requires_pythia
def test_top_physics(top_file):
  path, _ = top_file
  jets, meta = _read_all(path)
  top, qcd = meta[:, 0] == 1, meta[:, 0] == 0
  assert abs(int(top.sum()) - int(qcd.sum())) <= 1
  m_top, m_qcd = np.median(meta[top, 1]), np.median(meta[qcd, 1])
  assert 140 < m_top < 200, m_top
  assert m_qcd < 120 and m_qcd < m_top - 50, (m_top, m_qcd)
  assert ((meta[:, 2] > 400) & (meta[:, 2] < 550)).all()
  # three-prong top jets spread wider than QCD jets
  girth = _girth(jets, 0.8)
  assert girth[top].mean() > 1.3 * girth[qcd].mean()


@requires_pythia
def test_deterministic(tmp_path):
  def run(name, workers):
    path = tmp_path / name
    writer.generate("boosted_top", 6, str(path), seed=123, workers=workers, progress=False)
    with h5py.File(path, "r") as f:
      return {k: f[k][:] for k in f}

  a, b = run("a.h5", 2), run("b.h5", 2)
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(a[k], b[k]), k
  c = run("c.h5", 1)
  assert not all(np.array_equal(a[k], c[k]) for k in a if k.endswith("_meta"))


def test_failed_worker_leaves_no_file(tmp_path, monkeypatch):
  """A worker that raises mid-run: the error propagates, neither FILE nor FILE.partial remains."""
  from mae_jax.simulation import events

  def broken(process, seed, worker, indices):
    image, meta = np.zeros((1, 125, 125, 8), np.float32), np.zeros((1, 3), np.float32)
    yield "jets", worker, (indices[:1], image, meta)
    raise RuntimeError("simulated Pythia failure")

  monkeypatch.setattr(events, "_produce", broken)
  out = tmp_path / "x.h5"
  with pytest.raises(RuntimeError, match="simulated Pythia failure"):
    writer.generate("boosted_top", 4, str(out), workers=1, progress=False)
  assert not out.exists() and not (tmp_path / "x.h5.partial").exists()
