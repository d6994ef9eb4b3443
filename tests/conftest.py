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

# XLA's defaults on purpose: --xla_backend_optimization_level=0 made the suite faster (a hybrid
# training test 47.5 s -> 28.6 s) but gave a NaN gradient in ResNet-15's third step
# (test_stages.py::test_resnet_baseline_runs), so tests run the programs users run.

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# Cases of a module-scoped parametrised fixture, `slow` because a sibling case runs the same
# code path in the default suite (launch/test.sh leaves `slow` out; MAE_JAX_SLOW=1 keeps it).
SLOW_CASES = {
    # the sharded trainer step is family-independent: ConvMAE (conv stages + ViT) stands for all
    "test_hybrid.py::test_sharded_train_step_learns_and_matches_one_device[ConvStemMAE]",
    "test_hybrid.py::test_sharded_train_step_learns_and_matches_one_device[DepthwiseMAE]",
}


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection reads the marks
def pytest_collection_modifyitems(items):
  ids = {item.nodeid.split("tests/")[-1]: item for item in items}
  for case in SLOW_CASES:
    if case in ids:
      ids[case].add_marker(pytest.mark.slow)
    elif case.split("[")[0] in {i.split("[")[0] for i in ids}:  # a case renamed: say so
      raise pytest.UsageError(f"conftest.SLOW_CASES names {case}, which was not collected")
