"""The tf.data pipeline: labelled subsets (class-balanced, seeded, nested)."""

import numpy as np
import pytest

from mae_jax.data import pipeline as pipeline_lib
from helpers import converted_dataset


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
  return pipeline_lib.Pipeline(converted_dataset(tmp_path_factory.mktemp("data")), "none")


def test_labelled_subsets_are_balanced_seeded_and_nested(pipe):
  labels = pipe.labels("train")
  assert len(labels) == 48 and set(labels) == {0, 1}
  small, large = (pipe.labelled_subset("train", n, seed=3) for n in (8, 20))
  assert set(small) <= set(large)  # nested
  assert np.bincount(labels[small]).tolist() == [4, 4]
  assert np.bincount(labels[large]).tolist() == [10, 10]
  assert list(pipe.labelled_subset("train", 8, seed=3)) == list(small)  # seeded
  assert list(pipe.labelled_subset("train", 8, seed=4)) != list(small)


def test_training_reads_only_the_subset(pipe):
  subset = pipe.labelled_subset("train", 8, seed=0)
  _, it = pipe.eval_iter("train", 48, 48)
  images = next(it)["image"]
  want = {images[i].tobytes() for i in subset}
  batches = pipe.train_iter("train", 4, seed=0, subset=subset)
  seen = {img.tobytes() for _ in range(6) for img in next(batches)["image"]}
  assert seen == want  # 24 draws from 8 jets: every one of them, and nothing else


def test_a_labelled_set_larger_than_a_class_is_an_error(pipe):
  with pytest.raises(ValueError, match=r"needs 25 examples of class 0 in split 'train'"):
    pipe.labelled_subset("train", 50, seed=0)
