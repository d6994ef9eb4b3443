#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then runs pytest on CPU with 8 fake devices
# (tests/conftest.py). Extra arguments go to pytest, e.g. `bash launch/test.sh -k trainer`.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export JAX_PLATFORMS=cpu
exec python -m pytest -q -p no:cacheprovider "$@" tests
