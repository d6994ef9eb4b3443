"""Launch scripts: valid bash, and compare.sh assembles the command its header documents."""

import glob
import hashlib
import os
import subprocess

import pytest

from helpers import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh")))


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_launch_scripts_parse(script):
  r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


def fake_venv(tmp_path):
  """A virtualenv whose `python` prints its arguments, stamped as installed, so the launch
  script runs its real set-up and argument handling without training anything."""
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True, exist_ok=True)
  py = venv / "bin" / "python"
  py.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
  py.chmod(0o755)
  digest = hashlib.sha256(open(os.path.join(ROOT, "pyproject.toml"), "rb").read()).hexdigest()
  (venv / ".mae_jax_installed").write_text(digest[:16] + "\n")
  return venv


def run_compare(tmp_path, data=None, **env):
  """compare.sh under the fake virtualenv on DATA (default: an existing empty folder)."""
  if data is None:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
  e = dict(os.environ, MAE_JAX_VENV=str(fake_venv(tmp_path)), DATA=str(data), **env)
  return subprocess.run(["bash", os.path.join(ROOT, "launch", "compare.sh")], env=e,
                        capture_output=True, text=True, timeout=60)


def compare_args(tmp_path, **env):
  r = run_compare(tmp_path, **env)
  assert r.returncode == 0, r.stderr
  return r.stdout.splitlines()


def value_after(args, flag):
  return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_compare_sh_defaults_and_grid(tmp_path):
  args = compare_args(tmp_path)
  assert args[:2] == ["-m", "mae_jax.compare"]
  assert value_after(args, "--steps") == ["pretrain=200,probe=100,finetune=100"]
  assert value_after(args, "--stages") == ["pretrain,probe,finetune,probe_random"]
  assert value_after(args, "--select") == ["finetune.lr=2e-3"]
  assert value_after(args, "--seeds") == ["0,1,2"]
  # scratch in the stages: it gets the same lr grid as finetune
  args = compare_args(tmp_path, STAGES="pretrain,probe,finetune,scratch", LRS="2e-3,8e-3")
  assert value_after(args, "--select") == ["finetune.lr=2e-3,8e-3", "scratch.lr=2e-3,8e-3"]


def test_compare_sh_refuses_a_missing_dataset(tmp_path):
  r = run_compare(tmp_path, data=tmp_path / "nowhere")
  assert r.returncode == 2 and "no converted dataset at DATA=" in r.stderr


def test_compression_sh_runs_each_budget_then_merges(tmp_path):
  """compression.sh under the fake virtualenv: one protocol call per budget (its latents and
  latent_dim, its own root sharing OUT/cache), then the merge over the roots in order;
  CACHE_FROM's observables are copied; a missing dataset stops it before anything runs."""
  data, pre, old = (tmp_path / n for n in ("data", "pool", "old_cache"))
  for d in (data, pre, old):
    d.mkdir()
  (old / "observables_train.npz").write_bytes(b"x")
  out = tmp_path / "out"
  env = dict(os.environ, MAE_JAX_VENV=str(fake_venv(tmp_path)), DATA=str(data),
             PRETRAIN_DATA=str(pre), OUT=str(out), BUDGETS="4x8,32x16", STEPS="50",
             JETS="20", CACHE_FROM=str(old))
  script = os.path.join(ROOT, "launch", "compression.sh")
  r = subprocess.run(["bash", script, "--config.batch_size=16"], env=env, capture_output=True,
                     text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  args = r.stdout.splitlines()
  calls = [i for i, a in enumerate(args) if a == "mae_jax.protocol"]
  assert len(calls) == 2
  first = args[calls[0]:calls[1]]
  assert value_after(first, "--root") == [f"{out}/k4d8"]
  assert value_after(first, "--steps") == ["compression=50"]
  assert value_after(first, "--compression-jets") == ["20"]
  assert "--compression.model.latents=4" in first and "--compression.model.latent_dim=8" in first
  assert "--config.batch_size=16" in first and value_after(first, "--data") == [str(data)]
  assert "--compression.model.latents=32" in args[calls[1]:]
  merge = args.index("benchmarks/compression_budgets.py")
  assert args[merge + 1:merge + 5] == ["--out", str(out), f"{out}/k4d8", f"{out}/k32d16"]
  assert os.path.islink(out / "k4d8" / "cache")
  assert (out / "cache" / "observables_train.npz").exists()
  env["DATA"] = str(tmp_path / "nowhere")
  r = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "no converted dataset at" in r.stderr
