r"""Conversion throughput of the two engines, and decode throughput of the converted format.

  python benchmarks/convert_engines.py --input data_cache/boosted_top_10000.h5 \
      --workdir /tmp/mae_engines [--engines plain,beam1,beam2] [--decode]

Each engine converts the whole file into WORKDIR/ENGINE (timed in this process, TensorFlow
already imported) and the metadata of every run is checked to be the same as the first's
(counts, statistics, sha256). Engines: `plain` (one process), `beamN` (Beam DirectRunner
with N workers: N=1 runs in this process, N>1 in N worker processes), `sparse` (one process,
`--image-encoding sparse`). `--decode` times one thread reading each converted dataset back
(TFRecord parse + image decode to a dense float32 tensor: the input pipeline's decode step),
and the Beam path's sequential pass (read the input in order + sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time

import h5py


def options(engine: str):
  if engine == "plain":
    return {}
  if engine == "sparse":  # the one-process engine writing --image-encoding sparse
    return {"image_encoding": "sparse"}
  n = int(engine[len("beam"):] or 1)
  opts = f"direct_num_workers={n}" + (",direct_running_mode=multi_processing" if n > 1 else "")
  return {"engine": "beam", "beam_options": opts}


def cpu_seconds() -> float:
  """User + system CPU seconds of this process and its finished children (Beam's workers):
  images per CPU-second is the per-core rate even on a machine shared with other jobs."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def same_meta(a: dict, b: dict) -> bool:
  drop = ("created", "engine", "image_encoding")
  return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def decode_rate(data_dir: str, split: str = "train") -> tuple[float, float]:
  """(images/s, images per CPU-second) of one thread parsing + decoding records."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  b = tfds.builder_from_directory(data_dir)
  opts = tf.data.Options()
  opts.threading.private_threadpool_size = 1
  ds = b.as_dataset(split=split, read_config=tfds.ReadConfig(try_autocache=False, options=opts))
  n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
  for _ in ds:
    n += 1
  return n / (time.perf_counter() - t0), n / (cpu_seconds() - c0)


def sha_rate(path: str, key: str = "train_jet", chunk: int = 256) -> tuple[float, float]:
  """Images/s of reading the input in order and hashing it (the Beam path's sequential task)."""
  sha, n, t0, c0 = hashlib.sha256(), 0, time.perf_counter(), cpu_seconds()
  with h5py.File(path, "r") as f:
    ds = f[key]
    for a in range(0, ds.shape[0], chunk):
      x = ds[a:a + chunk]
      for i in range(x.shape[0]):
        sha.update(x[i].tobytes())
      n += x.shape[0]
  return n / (time.perf_counter() - t0), n / (cpu_seconds() - c0)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--input", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--engines", default="plain,beam1,beam2")
  p.add_argument("--decode", action="store_true")
  args = p.parse_args()
  from mae_jax.data import convert
  os.makedirs(args.workdir, exist_ok=True)
  with h5py.File(args.input, "r") as f:
    n = sum(f[k].shape[0] for k in f if k.endswith("_jet"))
  first = None
  for engine in args.engines.split(","):
    out = os.path.join(args.workdir, engine)
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    meta = convert.convert([args.input], out, **options(engine))
    dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    first = first or meta
    print(f"RESULT engine={engine} images={n} seconds={dt:.1f} images_per_s={n / dt:.1f} "
          f"cpu_seconds={cpu:.1f} images_per_cpu_s={n / cpu:.1f} "
          f"same_meta_as_first={same_meta(first, meta)}", flush=True)
  if args.decode:
    for engine in args.engines.split(","):
      out = os.path.join(args.workdir, engine)
      size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)) / n
      print(f"RESULT decode {engine} (1 thread, {size / 1e3:.1f} KB/image) images_per_s=%.0f "
            "images_per_cpu_s=%.0f" % decode_rate(out), flush=True)
    print("RESULT input read + sha256 images_per_s=%.0f images_per_cpu_s=%.0f"
          % sha_rate(args.input), flush=True)
  print(json.dumps({"input": args.input, "images": n}))


if __name__ == "__main__":
  main()
