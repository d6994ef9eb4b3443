"""`pip install .` (not editable) gives commands that run from any directory: the wheel is
built, installed into a fresh virtualenv and used from a directory outside the checkout,
convert -> protocol (a few steps) -> export. About a minute; CI runs it (`-m wheel` alone).

The fresh virtualenv sees the test environment's dependencies through a .pth file that
names its site-packages directory (a plain path line: the .pth files inside that directory,
among them the editable install of mae_jax, are not processed), so nothing is downloaded
and the mae_jax it imports is the installed wheel's.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

from helpers import ROOT, write_small_e2e

pytestmark = pytest.mark.wheel


def _run(args, cwd, env, timeout=300):
  r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """A fresh virtualenv with the wheel built from this checkout installed."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = _mkdir(tmp / "src")  # a copy: building in the checkout would leave build/ behind
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  for name in ("mae_jax", "configs"):
    shutil.copytree(os.path.join(ROOT, name), src / name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
  r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-index", "-q", "-w", str(tmp / "dist"), str(src)], tmp, env)
  assert r.returncode == 0, r.stderr[-3000:]
  wheel, = (tmp / "dist").glob("mae_jax-*.whl")
  venv = tmp / "venv"
  r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
  assert r.returncode == 0, r.stderr[-3000:]
  python = venv / "bin" / "python"
  purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                 tmp, env).stdout.strip()
  with open(os.path.join(purelib, "test_env_site_packages.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  r = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
            "--no-index", str(wheel)], tmp, env)
  assert r.returncode == 0, r.stderr[-3000:]
  work = _mkdir(tmp / "elsewhere")  # outside the checkout: no configs/ here
  return venv, work, env


def _mkdir(path):
  path.mkdir(parents=True, exist_ok=True)
  return path


def test_installed_wheel_runs_outside_the_checkout(venv):
  venv, work, env = venv
  bin_ = venv / "bin"
  r = _run([str(bin_ / "python"), "-c", "import mae_jax, mae_jax.configs; "
            "print(mae_jax.__file__); print(mae_jax.configs.__file__)"], work, env)
  assert r.returncode == 0, r.stderr[-3000:]
  for line in r.stdout.split():
    assert line.startswith(str(venv)), line  # the wheel's copy, not the checkout's
  r = _run([str(bin_ / "python"), "-c", "import configs"], work, env)
  assert r.returncode != 0  # no top-level `configs` package in site-packages

  # configs by short name (scratch imports finetune through the package) and by path
  for name in ("pretrain", "scratch"):
    r = _run([str(bin_ / "mae-jax-train"), "--config", f"{name}:variant=tiny",
              "--print_config"], work, env)
    assert r.returncode == 0 and f"stage: {name}" in r.stdout, r.stderr[-3000:]
  r = _run([str(bin_ / "mae-jax-train"), "--config", "configs/pretrain.py:variant=tiny",
            "--print_config"], work, env)
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "no such config file 'configs/pretrain.py'" in r.stderr
  assert "pretrain:variant=tiny" in r.stderr

  write_small_e2e(work / "jets.h5", n=(32, 16, 16))
  r = _run([str(bin_ / "mae-jax-convert"), "--input", "jets.h5", "--output", "data"], work, env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout)["splits"]["train"]["num_examples"] == 32

  r = _run([str(bin_ / "mae-jax-protocol"), "--data", "data", "--root", "runs",
            "--stages", "pretrain,probe", "--steps", "pretrain=2,probe=2",
            "--recon-splits", "test", "--config.batch_size=8", "--config.task.bootstrap=5"],
           work, env, timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert (work / "runs" / "report.md").exists()
  probe = json.load(open(work / "runs" / "seed0" / "probe" / "final_metrics.json"))
  assert 0.0 <= probe["test/auc"] <= 1.0

  r = _run([str(bin_ / "mae-jax-export"), "--workdir", "runs/seed0/pretrain", "--format", "npz",
            "--output", "encoder.npz"], work, env)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  arrays = np.load(work / "encoder.npz")
  # the npz also holds the fixed sin-cos position embedding, which is not a parameter
  assert 0 < out["encoder_params"] <= sum(arrays[k].size for k in arrays.files)
