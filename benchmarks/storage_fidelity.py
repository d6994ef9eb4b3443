"""Rate-distortion table of the storage baselines on a converted dataset (not a test).

Reads a split's raw (un-normalised) images with the project's reader, encodes each jet
with every baseline of `mae_jax.evaluate.storage`, decodes it, and scores the decoded
jets with `mae_jax.evaluate.fidelity` (jet mass, pT, τ21, τ32)::

    python benchmarks/storage_fidelity.py --data_dir DIR [--split test] [--max_jets 2000]

Prints one markdown table: baseline, mean bytes per jet, lossless, and for each quantity
the response (mean decoded/original) and resolution (std of the ratio; the 68% half-width
in brackets). The converted TFRecord's own bytes per jet and the dense float32 image are
printed above it as references.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mae_jax.evaluate import fidelity, storage

QUANTITIES = ("mass", "pt", "tau21", "tau32")


def read_images(data_dir, split, max_jets, batch=250):
  """Yields (raw images [b, H, W, C] float32, channel names) batches of a split."""
  from mae_jax.data import pipeline as pipeline_lib
  pipe = pipeline_lib.Pipeline(data_dir, "none")
  names = pipe.meta.get("channel_names")
  _, it = pipe.eval_iter(split, batch, batch)
  seen = 0
  for b in it:
    x = np.asarray(b["image"])[np.asarray(b["valid"]) > 0][:max_jets - seen]
    seen += len(x)
    if len(x):
      yield x, names
    if seen >= max_jets:
      break


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--split", default="test")
  p.add_argument("--max_jets", type=int, default=2000)
  p.add_argument("--top_k", default="16,32,64,128", help="comma-separated k of the top-k rows")
  args = p.parse_args()
  top_k = tuple(int(k) for k in args.top_k.split(",") if k)
  t0 = time.time()
  orig = {q: [] for q in QUANTITIES}
  rows = {}  # name -> (bytes list, lossless, {q: decoded values})
  shape = None
  for x, names in read_images(args.data_dir, args.split, args.max_jets):
    shape = x.shape[1:]
    q0 = fidelity.jet_quantities(x, names)
    for q in QUANTITIES:
      orig[q].append(q0[q])
    for s in storage.baselines(x, top_k=top_k):
      qd = fidelity.jet_quantities(s.decoded, names)
      nbytes, _, vals = rows.setdefault(s.name, ([], s.lossless, {q: [] for q in QUANTITIES}))
      nbytes.append(s.bytes_per_jet)
      for q in QUANTITIES:
        vals[q].append(qd[q])
  if shape is None:
    raise SystemExit(f"no jets in split {args.split!r} of {args.data_dir}")
  orig = {q: np.concatenate(v) for q, v in orig.items()}
  try:
    from mae_jax.protocol.measure import stored_bytes_per_jet
    print(f"converted TFRecord: {stored_bytes_per_jet(args.data_dir):,.0f} bytes/jet")
  except (ImportError, OSError, KeyError) as e:
    print(f"converted TFRecord size unavailable: {e}")
  print(f"dense float32 image {shape}: {4 * int(np.prod(shape)):,} bytes/jet; "
        f"{len(orig['mass'])} jets of split {args.split!r}; codecs {storage.CODECS}")
  head = " | ".join(f"{q} response | {q} resolution (68%)" for q in QUANTITIES)
  print(f"| baseline | bytes/jet | lossless | {head} |")
  print("|---|---|---|" + "---|---|" * len(QUANTITIES))
  for name, (nbytes, lossless, vals) in rows.items():
    cells = []
    for q in QUANTITIES:
      s = fidelity.response_resolution(orig[q], np.concatenate(vals[q]))
      cells.append(f"{s['response']:.4f} | {s['resolution']:.2e} ({s['half_width_68']:.2e})")
    print(f"| {name} | {np.concatenate(nbytes).mean():,.0f} | {'yes' if lossless else 'no'} | "
          + " | ".join(cells) + " |")
  print(f"({time.time() - t0:.1f} s)")


if __name__ == "__main__":
  main()
