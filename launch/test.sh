#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then runs pytest on CPU with 8 fake devices
# (tests/conftest.py). Extra arguments go to pytest, e.g. `bash launch/test.sh -k trainer`.
# Tests marked `slow` (pyproject.toml) are left out unless MAE_JAX_SLOW=1: the whole suite
# then takes about twice as long; run it before a release or after touching what they cover.
# Two pytest workers, one test file each at a time (most tests are single-threaded compiles;
# 1.34x faster than one worker on the 2-core machine); MAE_JAX_TEST_WORKERS=0 runs in-process.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export JAX_PLATFORMS=cpu
workers="${MAE_JAX_TEST_WORKERS:-2}"
parallel=(); [ "$workers" = 0 ] || parallel=(-n "$workers" --dist loadfile)
select=(-m "not slow"); [ "${MAE_JAX_SLOW:-0}" = 1 ] && select=()
exec python -m pytest -q -p no:cacheprovider "${parallel[@]}" "${select[@]}" "$@" tests
