"""launch/gpu_check.sh and the accelerator choice of launch/setup_env.sh, on a machine without
a GPU (fake nvidia-smi / fake virtualenv: nothing is installed or trained), and bench's peaks."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT
from mae_jax import bench

SCRIPT = os.path.join(ROOT, "launch", "gpu_check.sh")


def fake_bin(tmp_path, gpu=True):
  """A bin folder with `python` (this interpreter) and, with `gpu`, an nvidia-smi listing one."""
  b = tmp_path / "bin"
  b.mkdir(exist_ok=True)
  py = b / "python"  # a wrapper, not a symlink: a symlinked venv python loses its packages
  py.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} "$@"\n')
  py.chmod(0o755)
  if gpu:
    smi = b / "nvidia-smi"
    smi.write_text('#!/usr/bin/env bash\n[ "$1" = -L ] && echo "GPU 0: NVIDIA H100 80GB HBM3 '
                   '(UUID: GPU-0)" || echo "NVIDIA H100 80GB HBM3, 81559 MiB, 570.00"\n')
    smi.chmod(0o755)
  return b


def run(tmp_path, path, **env):
  e = dict(os.environ, PATH=path, OUT=str(tmp_path / "out"), **env)
  e.pop("JAX_PLATFORMS", None)
  return subprocess.run(["bash", SCRIPT], env=e, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_no_gpu_is_one_line_and_exit_3(tmp_path):
  r = run(tmp_path, f"{fake_bin(tmp_path, gpu=False)}:/usr/bin:/bin")
  assert r.returncode == 3
  assert r.stderr.strip() == "gpu_check: no GPU on this machine (nvidia-smi lists none); nothing checked"
  assert not (tmp_path / "out").exists()  # stopped before installing or writing anything


def test_gpu_listed_but_jax_without_cuda_exits_3(tmp_path):
  # nvidia-smi sees a GPU but this jax is the CPU build: one line saying what to install.
  r = run(tmp_path, f"{fake_bin(tmp_path)}:/usr/bin:/bin", MAE_JAX_SETUP="0")
  assert r.returncode == 3, r.stdout + r.stderr
  assert "gpu_check: JAX sees no GPU (" in r.stdout, r.stdout
  assert "MAE_JAX_ACCELERATOR=cuda12" in r.stdout
  assert "NVIDIA H100 80GB HBM3" in (tmp_path / "out" / "gpu_check.log").read_text()


def accelerator_chosen(tmp_path, path, **env):
  """MAE_JAX_ACCELERATOR as setup_env.sh leaves it, in a fake virtualenv stamped as installed
  for that accelerator (so nothing is installed)."""
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True, exist_ok=True)
  (venv / "bin" / "python").touch(mode=0o755)
  digest = hashlib.sha256(open(os.path.join(ROOT, "pyproject.toml"), "rb").read()).hexdigest()[:16]
  want = env.pop("STAMP", "cpu")
  (venv / ".mae_jax_installed").write_text(digest + ("" if want == "cpu" else f"-{want}") + "\n")
  e = dict(os.environ, PATH=path, MAE_JAX_VENV=str(venv), **env)
  e.pop("MAE_JAX_ACCELERATOR", None) if "MAE_JAX_ACCELERATOR" not in env else None
  return subprocess.run(["bash", "-c", f"source {ROOT}/launch/setup_env.sh && "
                         "echo $MAE_JAX_ACCELERATOR"], env=e, capture_output=True, text=True,
                        timeout=60)


def test_setup_env_picks_the_accelerator(tmp_path):
  with_gpu = f"{fake_bin(tmp_path)}:/usr/bin:/bin"
  r = accelerator_chosen(tmp_path, with_gpu, STAMP="cuda12")
  assert r.returncode == 0 and r.stdout.strip() == "cuda12", r.stderr
  r = accelerator_chosen(tmp_path, with_gpu, MAE_JAX_ACCELERATOR="cpu")
  assert r.returncode == 0 and r.stdout.strip() == "cpu", r.stderr
  r = accelerator_chosen(tmp_path, with_gpu, MAE_JAX_ACCELERATOR="rocm")
  assert r.returncode == 1 and "MAE_JAX_ACCELERATOR=rocm: choose cuda12, tpu, cpu or auto" in r.stderr


def test_peak_table():
  assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == (989.0, "H100")
  assert bench.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == (756.0, "H100 PCIe")
  assert bench.peak_tflops("NVIDIA H200", "float32") == (494.7, "H200")
  assert bench.peak_tflops("cpu", "bfloat16") == (None, None)
