"""Peak-memory and throughput benchmark of `mae_jax.data.convert` (not a test).

Writes an e2e_split HDF5 file of sparse random 125x125x8 float32 images (about
3% non-zero pixels, like real jets) of `--gb` gigabytes, converts it in a
child process run under `/usr/bin/time -v` and prints images/s and the peak
resident set size:

  python benchmarks/convert_memory.py --gb 2.5 --workdir /tmp/mae_bench
  python benchmarks/convert_memory.py --gb 2.5 --workdir /tmp/mae_bench --chunk-size 64

The input file is reused if it already exists with the requested size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

H, W, C = 125, 125, 8


def write_input(path: str, n: int, seed: int = 0, block: int = 256) -> None:
  import h5py

  rng = np.random.default_rng(seed)
  with h5py.File(path, "w") as f:
    ds = f.create_dataset("train_jet", shape=(n, H, W, C), dtype=np.float32, chunks=(1, H, W, C))
    meta = np.zeros((n, 3), np.float32)
    meta[:, 0] = rng.integers(0, 2, n)
    meta[:, 1:] = rng.normal(100, 20, (n, 2))
    f.create_dataset("train_meta", data=meta)
    for a in range(0, n, block):
      b = min(n, a + block)
      x = np.zeros((b - a, H, W, C), np.float32)
      m = rng.random(x.shape, dtype=np.float32) < 0.03
      x[m] = rng.exponential(2.0, int(m.sum())).astype(np.float32)
      ds[a:b] = x


CHILD = r"""
import json, sys, time
t0 = time.time()
from mae_jax.data import convert as C
t1 = time.time()
meta = C.convert([sys.argv[1]], sys.argv[2], chunk_size=int(sys.argv[3]),
                 writer_buffer_mb=int(sys.argv[4]))
t2 = time.time()
n = sum(s["num_examples"] for s in meta["splits"].values())
print("BENCH " + json.dumps({"import_s": t1 - t0, "convert_s": t2 - t1, "images": n}))
"""


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--gb", type=float, default=2.5, help="raw input size in GB (float32 images)")
  p.add_argument("--workdir", default="/tmp/mae_bench")
  p.add_argument("--chunk-size", type=int, default=256)
  p.add_argument("--writer-buffer-mb", type=int, default=256)
  p.add_argument("--keep", action="store_true", help="keep the converted output")
  a = p.parse_args()
  os.makedirs(a.workdir, exist_ok=True)
  n = int(a.gb * 1e9 / (H * W * C * 4))
  src = os.path.join(a.workdir, f"e2e_sparse_{n}.h5")
  if not os.path.exists(src):
    t = time.time()
    write_input(src, n)
    print(f"wrote {src}: {n} images, {os.path.getsize(src) / 1e9:.2f} GB "
          f"in {time.time() - t:.0f} s")
  out = os.path.join(a.workdir, "out")
  shutil.rmtree(out, ignore_errors=True)
  cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, src, out, str(a.chunk_size),
         str(a.writer_buffer_mb)]
  print("running:", " ".join(cmd[:4]), "<child>", *cmd[5:])
  r = subprocess.run(cmd, capture_output=True, text=True)
  if r.returncode != 0:
    print(r.stdout[-3000:], r.stderr[-3000:])
    raise SystemExit(r.returncode)
  bench = json.loads(re.search(r"^BENCH (.*)$", r.stdout, re.M).group(1))
  rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
  wall = re.search(r"Elapsed \(wall clock\) time .*: (.*)", r.stderr).group(1)
  out_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
  res = {
      "images": bench["images"],
      "input_gb": round(os.path.getsize(src) / 1e9, 3),
      "output_gb": round(out_bytes / 1e9, 3),
      "chunk_size": a.chunk_size,
      "writer_buffer_mb": a.writer_buffer_mb,
      "convert_s": round(bench["convert_s"], 1),
      "import_s": round(bench["import_s"], 1),
      "images_per_s": round(bench["images"] / bench["convert_s"], 1),
      "peak_rss_mb": round(rss_kb / 1024, 1),
      "wall_clock": wall.strip(),
  }
  print(json.dumps(res, indent=1))
  if not a.keep:
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
  main()
