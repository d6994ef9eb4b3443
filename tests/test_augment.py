"""η/φ reflections of training jets (`data.reflect`, data/augment.py) in the tf.data pipeline."""

import numpy as np
import pytest

from mae_jax.data import augment
from mae_jax.data import pipeline as pipeline_lib
from mae_jax.models.sparse import occupied_patch_ids_np
from helpers import converted_dataset, load_config

TOKENS = pipeline_lib.Tokens(patch=5, bucket=16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return converted_dataset(tmp_path_factory.mktemp("data"))


def train_batches(data, reflect, n=6, seed=0, start_step=0, batch=8, tokens=TOKENS, **kwargs):
  pipe = pipeline_lib.Pipeline(data, "none", tokens=tokens, reflect=reflect, **kwargs)
  it = pipe.train_iter("train", batch, seed=seed, start_step=start_step, shuffle_buffer=64)
  return [next(it) for _ in range(n)]


# the 8-channel E2E layout: track_d0 (channel 1) is odd under φ, track_dz (channel 2) under η
SIGN8 = {0: np.array([1, 1, -1, 1, 1, 1, 1, 1], np.float32),
         1: np.array([1, -1, 1, 1, 1, 1, 1, 1], np.float32)}


def variants(image):
  """{flipped axes: image}, written out independently of augment.py: a pixel reflection, and
  for 8-channel jets the impact parameter that axis mirrors negated (the toy 3-channel jets of
  `converted_dataset` have no signed channel); the toy jets have no mirror symmetry, so all
  four differ."""
  sign = SIGN8 if image.shape[-1] == 8 else {0: 1.0, 1: 1.0}
  out = {(): image, (0,): np.flip(image, 0) * sign[0], (1,): np.flip(image, 1) * sign[1],
         (0, 1): np.flip(image, (0, 1)) * sign[0] * sign[1]}
  assert len({v.tobytes() for v in out.values()}) == 4
  return out


def outcomes(plain, flipped):
  """The set of flipped axes seen, checking every jet of `flipped` against the same jet of
  `plain` (the same seed: the same jets in the same order, only the flips differ)."""
  seen = set()
  for a, b in zip(plain, flipped):
    np.testing.assert_array_equal(a["label"], b["label"])
    for orig, got, ids in zip(a["image"], b["image"], b["patch_ids"]):
      axes = [k for k, v in variants(orig).items() if np.array_equal(v, got)]
      assert len(axes) == 1
      seen.add(axes[0])
      # the sparse tokens are the occupied patches of the flipped image
      np.testing.assert_array_equal(ids[ids >= 0], occupied_patch_ids_np(got, TOKENS.patch))
  return seen


@pytest.mark.parametrize("mode", ["eta", "phi", "both"])
def test_training_jets_are_their_original_or_its_reflection(data, mode):
  allowed = {"eta": {(), (0,)}, "phi": {(), (1,)}, "both": {(), (0,), (1,), (0, 1)}}[mode]
  # 48 draws: every outcome occurs, no other
  assert outcomes(train_batches(data, "none"), train_batches(data, mode)) == allowed


def test_occupancy_sorted_windows_flip_the_same_jets_and_resume(data):
  tokens = pipeline_lib.Tokens(patch=5, bucket=16, sort_window=2)  # a flip keeps occupancy
  plain = train_batches(data, "none", tokens=tokens)
  flipped = train_batches(data, "both", tokens=tokens)
  assert outcomes(plain, flipped) == {(), (0,), (1,), (0, 1)}
  resumed = train_batches(data, "both", n=2, start_step=3, tokens=tokens)  # mid-window
  for x, y in zip(flipped[3:5], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_flips_are_seeded_and_resume_exactly(data):
  a, b = train_batches(data, "both"), train_batches(data, "both")
  for x, y in zip(a, b):  # same seed, same flips
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  resumed = train_batches(data, "both", n=2, start_step=3)  # batch k whatever start_step was
  for x, y in zip(a[3:5], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
  other = train_batches(data, "both", n=1, seed=1)[0]["image"]
  assert not np.array_equal(other, a[0]["image"])


def test_interleaved_processes_flip_as_one_process(data):
  one = train_batches(data, "both", n=2, batch=16, tokens=None)
  per = [train_batches(data, "both", n=2, batch=8, tokens=None, process_index=i,
                       process_count=2, host_split="interleave") for i in range(2)]
  for k in range(2):  # two processes' rows of global batch k = the one process's batch k
    got = np.concatenate([per[0][k]["image"], per[1][k]["image"]])
    np.testing.assert_array_equal(got, one[k]["image"])


def test_none_changes_nothing_and_evaluation_is_never_flipped(data):
  pipe = pipeline_lib.Pipeline(data, "none", reflect="both")
  _, it = pipe.eval_iter("train", 48, 48)
  records = {img.tobytes() for img in next(it)["image"]}
  for batch in train_batches(data, "none", tokens=None):
    assert {img.tobytes() for img in batch["image"]} <= records  # the stored jets, untouched
  for split in ("validation", "test"):
    plain = pipeline_lib.Pipeline(data, "none", tokens=TOKENS).eval_iter(split, 8, 8)[1]
    flipped = pipeline_lib.Pipeline(data, "none", tokens=TOKENS, reflect="both").eval_iter(
        split, 8, 8)[1]
    for x, y in zip(plain, flipped):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])


def test_the_config_field_reaches_the_pipeline_and_a_bad_value_is_one_line(data):
  from mae_jax import experiment
  config = load_config("finetune", data__dir=data, data__reflect="phi")
  assert experiment.make_pipeline(config).reflect == "phi"
  assert load_config("pretrain").data.reflect == "none"
  with pytest.raises(ValueError, match=r"^data.reflect='x'; choose one of none, eta, phi, both$"):
    pipeline_lib.Pipeline(data, "none", reflect="x")
  assert augment.flip_axes("both") == (0, 1) and augment.flip_axes("phi") == (1,)


def test_a_reflection_negates_the_impact_parameter_it_mirrors():
  """8-channel E2E jets: φ -> -φ negates d0 = (y p_x - x p_y)/p_T, η -> -η (z -> -z) negates dz."""
  from mae_jax.data import layouts
  rng = np.random.default_rng(0)
  image = rng.normal(size=(10, 10, 8)).astype(np.float32)
  signs = augment.odd_channels(layouts.CHANNELS_8)
  seen = set()
  for position in range(16):
    got = augment.reflect(image, "both", 0, 0, np.int64(position), signs).numpy()
    axes = [k for k, v in variants(image).items() if np.array_equal(v, got)]
    assert len(axes) == 1
    seen.add(axes[0])
  assert seen == {(), (0,), (1,), (0, 1)}


def test_a_dataset_without_channel_names_refuses_reflections(data, tmp_path):
  """Without a name per channel the signed d0/dz channels cannot be found: a reflection would
  mirror the pixels but not the impact parameters' signs, so the pipeline refuses it (one
  line naming the dataset); reflect='none' still reads the same dataset."""
  import json
  import shutil
  from mae_jax.data import meta as meta_lib
  copy = tmp_path / "nameless"
  shutil.copytree(data, copy)
  path = copy / meta_lib.META_FILE
  meta = json.loads(path.read_text())
  meta.pop("channel_names", None)
  path.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=r"^data.reflect='phi' needs a name per channel .*"
                                       r"nameless records 0 channel_names for 3 channels"):
    pipeline_lib.Pipeline(str(copy), "none", reflect="phi")
  assert pipeline_lib.Pipeline(str(copy), "none").reflect == "none"
