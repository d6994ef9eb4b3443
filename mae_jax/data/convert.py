r"""Convert public E2E jet-image files (HDF5 / parquet) into a TFDS dataset.

  python -m mae_jax.data.convert --input FILE [FILE ...] --output DIR \
      [--format auto] [--nan-policy reject|drop] [--bad-indices SPEC] \
      [--holdout V,T] [--chunk-size 256] [--writer-buffer-mb 256] [--overwrite] [--verify] \
      [--engine plain|beam] [--beam_pipeline_options "direct_num_workers=2,..."]
  python -m mae_jax.data.convert verify DIR

Two engines write the same dataset (same records, counts, statistics and
sha256; `mae_jax.data.records`): `plain`, this process (the default), and
`beam`, an Apache Beam pipeline (`mae_jax.data.beam_convert`) on the local
DirectRunner or on Dataflow / Spark / Flink through `--beam_pipeline_options`.

Output contract (read by `mae_jax.data.pipeline`): `DIR` is a TFDS builder
directory (TFRecord shards + `dataset_info.json` + `features.json`) readable
with `tfds.builder_from_directory(DIR)`; records are kept in input order
(`disable_shuffling=True`). Features per record:
  image    float32 `(H, W, C)` channels-last, zlib-encoded tensor
  label    int64 scalar (-1 when unlabelled)
  targets  float32 `(K,)` regression targets (only present when K > 0)
  index    int64 row index in the source file's array (for single-split formats
           with `--holdout` this is the row in the whole array)
  source   int64 index into the list of input files

`DIR/mae_jax_meta.json` holds provenance, per-split counts / checksums and
per-channel statistics of the train split; see `docs/data.md`. Checking a
dataset against it is `mae_jax.data.verify`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Sequence

if __name__ == "__main__":  # before TensorFlow loads: quiet unless -v (data/tf_quiet.py)
  from mae_jax.data import tf_quiet as _tf_quiet
  _tf_quiet.quiet_tensorflow(sys.argv[1:])

import numpy as np
import tensorflow_datasets as tfds

from mae_jax import errors, workdir_lock
from mae_jax.data import meta as meta_lib
from mae_jax.data import pipeline, schemas, splits
from mae_jax.data.builder import BUILDER_NAME, BUILDER_VERSION, MaeJaxConverted, writer_buffer
from mae_jax.data.records import Plan, parse_bad_indices  # noqa: F401  (public API)
from mae_jax.data.splits import DEFAULT_HOLDOUT, SPLIT_FORMATS, default_holdout  # noqa: F401
from mae_jax.data.verify import verify  # noqa: F401  (public API: convert.verify)
from mae_jax.errors import (USER_ERRORS, DataFormatError, PathExistsError, UsageError,
                            VerificationError)

log = logging.getLogger(__name__)

ENGINES = ("plain", "beam")
IMAGE_ENCODINGS = ("zlib", "sparse")


def _version() -> str:
  try:
    import mae_jax

    v = getattr(mae_jax, "__version__", None)
    if v:
      return str(v)
  except Exception:  # pragma: no cover
    pass
  try:
    from importlib.metadata import version

    return version("mae_jax")
  except Exception:  # pragma: no cover
    return "unknown"


# Public API.


def _plan_for(inputs, format, nan_policy, bad_indices, holdout, chunk_size,
              image_encoding="zlib", split_seed=0) -> Plan:
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  inputs = [os.path.abspath(os.fspath(p)) for p in inputs]
  if not inputs:
    raise UsageError("no input files given")
  if nan_policy not in ("reject", "drop"):
    raise UsageError(f"nan_policy must be 'reject' or 'drop', got {nan_policy!r}")
  if int(chunk_size) < 1:
    raise UsageError(f"chunk_size must be >= 1, got {chunk_size}")
  if image_encoding not in IMAGE_ENCODINGS:
    raise UsageError(f"image_encoding={image_encoding!r}; choose one of {IMAGE_ENCODINGS}")
  layouts = [schemas.inspect_file(p, format=format, holdout=holdout) for p in inputs]
  schemas.check_compatible(layouts)
  rows = splits.apply_holdout(layouts, schemas.parse_holdout(holdout), split_seed) \
      if holdout is not None else {}
  present = [s for s in schemas.SPLITS if any(s in lay.splits for lay in layouts)]
  bad = parse_bad_indices(bad_indices)
  unknown = sorted(set(bad) - set(present) - {"*"})
  if unknown:
    raise UsageError(f"bad indices name split(s) {unknown} not in the converted splits {present}")
  label_names = next((lay.label_names for lay in layouts if lay.label_names), None)
  return Plan(
      layouts=layouts,
      split_names=present,
      image_shape=tuple(layouts[0].image_shape),
      channel_names=list(layouts[0].channel_names),
      target_names=list(layouts[0].target_names),
      label_names=label_names,
      nan_policy=nan_policy,
      bad=bad,
      chunk_size=int(chunk_size),
      stats_split="train" if "train" in present else present[0],
      image_encoding=image_encoding,
      rows=rows,
  )


_CREATOR = "creator.json"  # in OUTPUT.partial-*: the conversion writing it (host, pid)


def _remove_stale_partials(output: str) -> None:
  """Removes the OUTPUT.partial-* directories of conversions that died (SIGKILL, node failure),
  one warning line each; a directory that a live conversion, or one on another host, may be
  writing is left alone (with a line saying so)."""
  for d in sorted(glob.glob(glob.escape(output) + ".partial-*")):
    try:
      with open(os.path.join(d, _CREATOR)) as f:
        creator = json.load(f)
    except (OSError, ValueError):
      creator = None
    reason = workdir_lock.dead_reason(creator) if creator else None
    if reason:
      shutil.rmtree(d, ignore_errors=True)
      log.warning("removed %s, left by an interrupted conversion (%s): %s", d,
                  workdir_lock.describe(creator), reason)
    else:
      log.warning("leaving %s: %s; remove it by hand if no conversion is writing it", d,
                  f"a conversion may still be writing it ({workdir_lock.describe(creator)})"
                  if creator else "it has no record of the conversion that made it")


def convert(
    inputs: Sequence[str] | str,
    output: str,
    format: str = "auto",
    nan_policy: str = "reject",
    bad_indices=None,
    holdout=None,
    chunk_size: int = 256,
    overwrite: bool = False,
    writer_buffer_mb: int | None = 256,
    engine: str = "plain",
    beam_options=None,
    image_encoding: str = "zlib",
    split_seed: int = 0,
) -> dict:
  """Convert `inputs` into a TFDS dataset at `output`; return the metadata.

  The dataset is built under a temporary sibling `OUTPUT.partial-XXXX` and
  moved into place with one `os.rename` at the very end, so `output`
  never exists in an incomplete state. The partial directory records its
  creator (host, pid), so that a rerun removes those of dead conversions
  (SIGKILL) with a warning. A full disk, quota or read-only filesystem is a
  one-line `DiskFullError`. `writer_buffer_mb` caps the TFDS
  writer's in-memory record buffer (records spill to temporary bucket files
  beyond it); `None` keeps TFDS's 1 GB default. `engine="beam"` builds it
  with an Apache Beam pipeline instead (`beam_options`: Beam flags as
  "k=v,k=v", a list of `--k=v`, or `PipelineOptions`; default the in-process
  DirectRunner); the records and the metadata are the same either way.
  `image_encoding="sparse"` stores each image as its non-zero pixels
  (`mae_jax.data.sparse_image`, ~5x faster to decode for jets); readers see
  the same dense images. `holdout=(V, T)` draws validation / test rows of
  single-split files by a permutation seeded with `split_seed`, stratified by
  label (`mae_jax.data.splits`); a split holding one class of a labelled
  dataset is a one-line `DataFormatError`.
  """
  if engine not in ENGINES:
    raise UsageError(f"engine={engine!r}; choose one of {ENGINES}")
  pipeline.hide_accelerators_from_tf()
  output = os.path.abspath(os.fspath(output))
  _remove_stale_partials(output)
  if os.path.exists(output) and not overwrite:
    raise PathExistsError(
        f"output {output} already exists (use --overwrite / overwrite=True to replace it)")
  plan = _plan_for(inputs, format, nan_policy, bad_indices, holdout, chunk_size, image_encoding,
                   split_seed)
  parent = os.path.dirname(output)
  try:
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=os.path.basename(output) + ".partial-", dir=parent)
  except OSError as e:
    _raise_if_disk_full(e, output)
    raise
  try:
    with open(os.path.join(partial, _CREATOR), "w") as f:
      json.dump(workdir_lock.identity(), f)
    if engine == "beam":
      from mae_jax.data import beam_convert  # apache-beam is an extra: imported only here

      version_dir = beam_convert.build(plan, partial, beam_options)
    else:
      builder = MaeJaxConverted(plan=plan, data_dir=partial, file_format="tfrecord")
      dl_config = tfds.download.DownloadConfig(try_download_gcs=False)
      with writer_buffer(None if writer_buffer_mb is None else int(writer_buffer_mb) << 20):
        builder.download_and_prepare(download_dir=os.path.join(partial, "downloads"),
                                     download_config=dl_config)
      version_dir = os.fspath(builder.data_path)
    meta = {
        "format": plan.layouts[0].format,
        "inputs": [lay.path for lay in plan.layouts],
        "image_shape": list(plan.image_shape),
        "channel_names": plan.channel_names,
        "target_names": plan.target_names,
        "label_names": plan.label_names,
        "num_targets": len(plan.target_names),
        "nan_policy": plan.nan_policy,
        "holdout": list(schemas.parse_holdout(holdout)) if holdout is not None else None,
        "split_seed": int(split_seed) if holdout is not None else None,
        "split_method": splits.METHOD if holdout is not None else None,
        "splits": {s: plan.results[s] for s in plan.split_names},
        "channel_stats_split": plan.stats_split,
        "channel_stats": plan.channel_stats,
        "sha256_definition": (
            "sha256 over records in order of: image float32 little-endian C-order (H,W,C) bytes, "
            "label int64 little-endian, targets float32 little-endian (if K>0)"
        ),
        "log1p_definition": meta_lib.FORMULAS["log1p"] + ", per pixel",
        "tfds_builder": {"name": BUILDER_NAME, "version": BUILDER_VERSION,
                         "file_format": "tfrecord"},
        "engine": engine,
        "image_encoding": plan.image_encoding,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mae_jax_version": _version(),
    }
    if meta["label_names"] is None:
      del meta["label_names"]
    # Drawn hold-outs were checked in `splits.apply_holdout` (an error); a file's own splits
    # are the user's choice: a line here, and the protocol checks before it trains.
    for split, res in meta["splits"].items():
      counts = {k: v for k, v in res.get("label_counts", {}).items() if k != "-1" and v}
      if split != "train" and len(counts) == 1:
        log.warning("split %r holds only label %s (%s): its AUC is undefined; is the input "
                    "sorted by class? Shuffle it or choose other hold-outs", split,
                    next(iter(counts)), counts)
    with open(os.path.join(version_dir, meta_lib.META_FILE), "w") as f:
      json.dump(meta, f, indent=1)
    old = os.path.join(partial, "old")
    if os.path.exists(output):  # overwrite=True: the old one goes where a rerun removes it
      os.rename(output, old)
    try:
      os.rename(version_dir, output)
    except OSError:
      if os.path.exists(old):  # keep the old dataset
        os.rename(old, output)
      raise
  except Exception as e:
    _raise_if_disk_full(e, output)
    raise
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return meta


def _raise_if_disk_full(e: Exception, output: str) -> None:
  full = errors.disk_full_error(e, output, "the partial conversion is removed and nothing was "
                                "written to the output")
  if full is not None:
    raise full from e


# CLI.


def _convert_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m mae_jax.data.convert",
      description="Convert E2E jet-image files to a TFDS (TFRecord) dataset. "
      "Use 'python -m mae_jax.data.convert verify DIR' to check a converted dataset.",
  )
  p.add_argument("--input", "-i", nargs="+", required=True,
                 help="input HDF5/parquet file(s), concatenated in order")
  p.add_argument("--output", "-o", required=True, help="output dataset directory (must not exist)")
  p.add_argument("--format", default="auto", choices=("auto",) + schemas.FORMATS)
  p.add_argument("--nan-policy", default="reject", choices=("reject", "drop"))
  p.add_argument("--bad-indices", default=None,
                 help="JSON {split: [idx]} or text file of 'split:index' lines")
  p.add_argument("--holdout", default="auto",
                 help="VAL,TEST fractions for single-split formats (a permutation seeded "
                 "by --split-seed, stratified by label); default: {DEFAULT_HOLDOUT[0]},{DEFAULT_HOLDOUT[1]} for single-split "
                 "formats (so evaluation has held-out jets), none for files with splits; "
                 "0 keeps every row in train")
  p.add_argument("--split-seed", type=int, default=0,
                 help="seed of the --holdout permutation (recorded in the metadata)")
  p.add_argument("--chunk-size", type=int, default=256, help="images read per chunk")
  p.add_argument("--writer-buffer-mb", type=int, default=256,
                 help="TFDS writer in-memory buffer cap (MB)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
  p.add_argument("--verify", action="store_true", help="run verify on the output after converting")
  p.add_argument("-v", "--verbose", action="store_true",
                 help="also TensorFlow's and TFDS's log lines and progress bars")
  p.add_argument("--image-encoding", choices=IMAGE_ENCODINGS, default="zlib",
                 help="zlib: dense tensor, zlib-compressed (default); sparse: the non-zero pixels "
                 "(faster to decode; the same images read back)")
  p.add_argument("--engine", choices=ENGINES, default=None,
                 help="plain: this process (default); beam: an Apache Beam pipeline (pip install "
                 ".[beam]); the dataset is the same")
  p.add_argument("--beam_pipeline_options", "--beam-pipeline-options", default=None,
                 help="Beam flags as 'k=v,k=v' (implies --engine beam), e.g. "
                 "'direct_num_workers=2,direct_running_mode=multi_processing' or "
                 "'runner=FlinkRunner,flink_master=HOST:8081'")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  from mae_jax.data import tf_quiet
  loud = tf_quiet.verbose(argv)
  argv = [a for a in argv if a not in tf_quiet.VERBOSE_FLAGS]
  # quiet by default: results, warnings and errors; -v adds TFDS's INFO lines and progress bars
  logging.basicConfig(level=logging.INFO if loud else logging.WARNING,
                      format="%(levelname)s %(name)s: %(message)s")
  if not loud:
    tfds.disable_progress_bar()
  if argv and argv[0] == "verify":
    p = argparse.ArgumentParser(prog="python -m mae_jax.data.convert verify")
    p.add_argument("dir")
    a = p.parse_args(argv[1:])
    try:
      res = verify(a.dir)
    except (VerificationError, FileNotFoundError) as e:
      print(f"VERIFY FAILED: {e}", file=sys.stderr)
      return 1
    print(json.dumps({s: {"num_examples": r["num_examples"], "sha256": r["sha256"]}
                      for s, r in res.items()}))
    print(f"OK: {a.dir}")
    return 0
  a = _convert_parser().parse_args(argv)
  try:
    a.holdout = default_holdout(a.holdout, a.input, a.format)
    # TFDS prints progress messages to stdout; keep stdout for the JSON summary (and drop
    # them unless -v).
    with contextlib.redirect_stdout(sys.stderr if loud else open(os.devnull, "w")):
      meta = convert(
          a.input, a.output, format=a.format, nan_policy=a.nan_policy, bad_indices=a.bad_indices,
          holdout=a.holdout, chunk_size=a.chunk_size, overwrite=a.overwrite,
          writer_buffer_mb=a.writer_buffer_mb,
          engine=a.engine or ("beam" if a.beam_pipeline_options is not None else "plain"),
          beam_options=a.beam_pipeline_options, image_encoding=a.image_encoding,
          split_seed=a.split_seed,
      )
  except USER_ERRORS as e:
    return errors.exit_status(e, "ERROR")
  summary = {s: {k: v for k, v in m.items() if k != "dropped_indices"}
             for s, m in meta["splits"].items()}
  print(json.dumps({"output": os.path.abspath(a.output), "format": meta["format"],
                    "splits": summary}, indent=1))
  if a.verify:
    try:
      verify(a.output)
    except VerificationError as e:
      print(f"VERIFY FAILED: {e}", file=sys.stderr)
      return 1
    print(f"verified: {a.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
