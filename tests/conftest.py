"""Test set-up: JAX on CPU with 8 fake devices, so sharding is tested without accelerators.

One persistent compilation cache per test session (inherited by the subprocesses that the
reliability, multi-process and CLI tests start): the same tiny train step is compiled by many
tests and processes, and a cache hit replaces a multi-second XLA:CPU compile. It starts empty,
so no result depends on an earlier run; MAE_JAX_TEST_NO_CACHE=1 turns it off.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("MAE_JAX_TEST_NO_CACHE") != "1" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="mae_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  # JAX caches only compiles over 1 s by default; the tiny eval steps take a few tenths
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
