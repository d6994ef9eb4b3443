#!/usr/bin/env bash
# Sourced by the other launch scripts: makes .venv if missing and installs mae_jax with its
# pinned dependencies (re-installs only when pyproject.toml changed). Set MAE_JAX_VENV to use
# another virtualenv, PYTHON to pick the interpreter (3.11 or 3.12).
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
STAMP="$VENV/.mae_jax_installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing mae_jax and pinned dependencies into $VENV (a few minutes the first time)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT[test,generate]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$ROOT"
