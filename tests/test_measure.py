"""protocol/measure.py: the observables cache is reused only when it holds today's features."""

import numpy as np

from mae_jax.data import pipeline as pipeline_lib
from mae_jax.evaluate import baselines
from mae_jax.protocol import measure
from tests import helpers


def test_observables_cache_is_reused_when_current_and_recomputed_when_stale(tmp_path):
  data = helpers.converted_dataset(tmp_path, n=(8, 4, 4))
  cache = tmp_path / "cache"
  fresh = measure.observable_table(data, "test", str(cache))
  # independent reference: the observables of the split's raw images, in record order
  pipe = pipeline_lib.Pipeline(data, "none")
  images = np.concatenate([b["image"][b["valid"] > 0] for b in pipe.eval_iter("test", 4, 4)[1]])
  want, names = baselines.observables(images, pipe.meta.get("channel_names"))
  assert fresh["names"] == names and len(names) > 5
  np.testing.assert_allclose(fresh["x"], want, rtol=1e-12, atol=0)

  path = cache / "observables_test.npz"
  # a current cache is reused as it is: a marker value written into it comes back
  marked = fresh["x"].copy()
  marked[0, 0] = -123.0
  extra = {} if fresh["t"] is None else {"t": fresh["t"]}  # this dataset has regression targets
  np.savez(path, x=marked, y=fresh["y"], names=np.array(names), **extra)
  assert measure.observable_table(data, "test", str(cache))["x"][0, 0] == -123.0

  # a cache written before N-subjettiness (its five columns missing) is recomputed, not reused
  np.savez(path, x=marked[:, :-5], y=fresh["y"], names=np.array(names[:-5]), **extra)
  again = measure.observable_table(data, "test", str(cache))
  assert again["names"] == names and again["x"].shape == want.shape
  np.testing.assert_allclose(again["x"], want, rtol=1e-12, atol=0)
  assert list(np.load(path)["names"]) == names  # and rewritten
