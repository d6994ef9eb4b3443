#!/usr/bin/env bash
# Sourced by the other launch scripts: makes .venv if missing and installs mae_jax with its
# pinned dependencies (re-installs only when pyproject.toml or the accelerator changed). Set
# MAE_JAX_VENV to use another virtualenv, PYTHON to pick the interpreter (3.11 or 3.12).
# MAE_JAX_ACCELERATOR=cuda12|tpu|cpu picks jax's build (the .[cuda12] / .[tpu] extras); the
# default, auto, takes cuda12 where nvidia-smi lists a GPU, tpu on a TPU VM (/dev/accel*,
# /dev/vfio/N), else cpu.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAE_JAX_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), sys.version' || {
    echo "mae_jax needs Python 3.11 or 3.12; set PYTHON=/path/to/python3.11" >&2; exit 1; }
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
ACCEL="${MAE_JAX_ACCELERATOR:-auto}"
if [ "$ACCEL" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    ACCEL=cuda12
  elif compgen -G '/dev/accel[0-9]*' >/dev/null || compgen -G '/dev/vfio/[0-9]*' >/dev/null; then
    ACCEL=tpu
  else
    ACCEL=cpu
  fi
fi
case "$ACCEL" in
  cpu) EXTRAS="test,generate" ;;
  cuda12|tpu) EXTRAS="test,generate,$ACCEL" ;;
  *) echo "MAE_JAX_ACCELERATOR=$ACCEL: choose cuda12, tpu, cpu or auto" >&2; exit 1 ;;
esac
export MAE_JAX_ACCELERATOR="$ACCEL"
STAMP="$VENV/.mae_jax_installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
[ "$ACCEL" = cpu ] || WANT="$WANT-$ACCEL"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing mae_jax[$EXTRAS] and pinned dependencies into $VENV (a few minutes the first time)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# glibc malloc: one arena, no mmap, no trimming, so XLA:CPU reuses its step temporaries
# instead of page-faulting them every step (25% faster on CPU; mae_jax/cpu_env.py).
# Set MAE_JAX_MALLOC_TUNING=0 to keep glibc's defaults.
if [ "${MAE_JAX_MALLOC_TUNING:-1}" != "0" ]; then
  export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"
  export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}"
  export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-100000000000}"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$ROOT"
