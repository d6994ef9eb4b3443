"""Conversion as an Apache Beam pipeline: the same dataset as the one-process path, on workers.

  python -m mae_jax.data.convert --input F.h5 --output DIR --engine beam \
      --beam_pipeline_options "direct_num_workers=2,direct_running_mode=multi_processing"

TFDS builds the dataset from a Beam `PTransform` per split (its native Beam
support): the split's rows are cut into work items of whole statistics groups
(`records.GROUP_ROWS`), each worker reads its rows with the same chunked
readers, drops the same rows and emits `(position, record)` pairs; TFDS's
`BeamWriter` (shuffling disabled) sorts them by position into ordered shards.
Beside the records each worker emits its groups' float64 partial sums, and one
task per split computes the split's sha256 by reading it in order (sha256 is
sequential by definition). The driver then folds the partials in (source,
group) order, exactly as the one-process path does, so `mae_jax_meta.json`
has the same counts, statistics and checksums (`records` explains why).

Runners: the DirectRunner here (`direct_num_workers`, `direct_running_mode`);
Spark, Flink or Dataflow with their usual flags (`runner=...`). Every worker
must be able to open the input files and write into the output's parent
directory under the same paths (a shared filesystem), and the workers need
mae_jax installed (`pip install .[beam]`, or `--setup_file` on Dataflow).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re

import apache_beam as beam
import numpy as np
import tensorflow_datasets as tfds
from apache_beam.options.pipeline_options import PipelineOptions

from mae_jax.data import convert as convert_lib
from mae_jax.data import records, splits
from mae_jax.data.records import GROUP_ROWS, Plan
from mae_jax.errors import DataFormatError, UsageError


def pipeline_options(spec) -> PipelineOptions:
  """Beam options from "k=v,k=v" (the `tfds build --beam_pipeline_options` syntax), a list of
  `--k=v` flags, `PipelineOptions`, or None (the DirectRunner in this process)."""
  if isinstance(spec, PipelineOptions):
    return spec
  if spec is None:
    flags = []
  elif isinstance(spec, str):
    flags = ["--" + kv.strip().lstrip("-") for kv in spec.split(",") if kv.strip()]
  else:
    flags = [str(f) for f in spec]
  bad = [f for f in flags if "=" not in f and not f.startswith("--no")]
  if bad:
    raise UsageError(f"beam pipeline options: expected k=v entries, got {bad}")
  return PipelineOptions(flags)


def work_items(plan: Plan, split: str) -> list[tuple[int, int, int]]:
  """(source, start, stop) ranges of positions in a file's split (`splits.positions`: 0 is its
  first row) of whole statistics groups, about `chunk_size` rows."""
  rows = -(-max(plan.chunk_size, GROUP_ROWS) // GROUP_ROWS) * GROUP_ROWS
  out = []
  for source, _ in plan.inputs_for(split):
    n = splits.num_rows(plan, split, source)
    out += [(source, a, min(a + rows, n)) for a in range(0, n, rows)]
  return out


def _positions(plan: Plan, split: str) -> dict[int, int]:
  """Record key of each source's first row: records sort by (source, position)."""
  out, base = {}, 0
  for source, _ in plan.inputs_for(split):
    out[source] = base
    base += splits.num_rows(plan, split, source)
  return out


class _ConvertRange(beam.DoFn):
  """One work item: its records (main output) and its summary (tag 'stats')."""

  def __init__(self, plan: Plan, split: str):
    self.plan, self.split = plan, split
    self.base = _positions(plan, split)

  def process(self, item):
    plan, split = self.plan, self.split
    source, a, b = item
    k = len(plan.target_names)
    acc = records.SplitAccumulator(plan.image_shape[2], k, channel_stats=split == plan.stats_split,
                                   sha=False, keep_groups=True)
    summary = {"dropped": [], "nonfinite_images": [], "nonfinite_targets": [], "bad": 0}
    for chunk in splits.split_chunks(plan, split, source, lo=a, hi=b):
      kept = records.filter_chunk(plan, split, source, chunk)
      pos = splits.positions(plan, split, source, kept.index)
      summary["dropped"] += kept.dropped.tolist()
      summary["nonfinite_images"] += kept.nonfinite_images.tolist()
      summary["nonfinite_targets"] += kept.nonfinite_targets.tolist()
      summary["bad"] += kept.num_bad_indices
      acc.update(kept.images, kept.labels, kept.targets, rows=pos)
      for i in range(kept.images.shape[0]):
        rec = {"image": kept.images[i], "label": np.int64(kept.labels[i]),
               "index": np.int64(kept.index[i]), "source": np.int64(source)}
        if k:
          rec["targets"] = kept.targets[i]
        yield self.base[source] + int(pos[i]), rec
    acc.finish()
    summary.update(n=acc.n, label_counts=acc.label_counts,
                   groups={name: np.stack([g[name] for g in acc.groups])
                           for name in (acc.groups[0] if acc.groups else {})})
    yield beam.pvalue.TaggedOutput("stats", (source, a, summary))


def _hash_split(split: str, plan: Plan) -> dict:
  """The split's sha256 over its kept records in order (one sequential reader)."""
  sha, n = hashlib.sha256(), 0
  for source, _ in plan.inputs_for(split):
    for chunk in splits.split_chunks(plan, split, source):
      kept = records.filter_chunk(plan, split, source, chunk)
      records.update_sha(sha, kept.images, kept.labels, kept.targets)
      n += kept.images.shape[0]
  return {"sha256": sha.hexdigest(), "n": n}


def _write(obj, path: str) -> None:
  """Idempotent (a retried bundle writes the same bytes) and atomic."""
  with open(path + ".tmp", "wb") as f:
    pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
  os.replace(path + ".tmp", path)


class _SplitTransform(beam.PTransform):
  """The records of one split; the summaries and the sha256 go to `workdir` on the side."""

  def __init__(self, plan: Plan, split: str, workdir: str):
    super().__init__()
    self.plan, self.split, self.workdir = plan, split, workdir

  def expand(self, pipeline):
    plan, split = self.plan, self.split
    out = (pipeline
           | "WorkItems" >> beam.Create(work_items(plan, split))
           | "Spread" >> beam.Reshuffle()  # one item per worker, not the whole Create bundle
           | "Convert" >> beam.ParDo(_ConvertRange(plan, split)).with_outputs("stats", main="recs"))
    _ = (out.stats
         | "CollectStats" >> beam.combiners.ToList()
         | "WriteStats" >> beam.Map(_write, os.path.join(self.workdir, f"{split}.stats.pkl")))
    _ = (pipeline
         | "Split" >> beam.Create([split])
         | "Sha256" >> beam.Map(_hash_split, plan)
         | "WriteSha256" >> beam.Map(_write, os.path.join(self.workdir, f"{split}.sha256.pkl")))
    return out.recs


class MaeJaxConvertedBeam(convert_lib.MaeJaxConverted, skip_registration=True):
  """The same builder (name, version, features), its splits generated by Beam."""

  name = convert_lib.BUILDER_NAME  # TFDS would name a subclass after the class

  def __init__(self, *, workdir: str, **kwargs):
    self._workdir = workdir
    super().__init__(**kwargs)

  def _generate_examples(self, split):
    return _SplitTransform(self._plan, split, self._workdir)


def _load(path: str):
  with open(path, "rb") as f:
    return pickle.load(f)


def collect(plan: Plan, workdir: str) -> None:
  """Folds the workers' summaries into `plan.results` / `plan.channel_stats` in the order the
  one-process path does; raises the same NonFiniteError under nan_policy='reject'."""
  c, k = plan.image_shape[2], len(plan.target_names)
  for split in plan.split_names:
    items = sorted(_load(os.path.join(workdir, f"{split}.stats.pkl")), key=lambda t: t[:2])
    for source, layout in plan.inputs_for(split):
      found = {what: [i for s, _, m in items if s == source for i in m[f"nonfinite_{what}"]]
               for what in ("images", "targets")}
      if plan.nan_policy == "reject" and (found["images"] or found["targets"]):
        raise records.nonfinite_error(layout, split, found)
    acc = records.SplitAccumulator(c, k, channel_stats=split == plan.stats_split, sha=False)
    dropped, n_nonfinite, n_bad = [], 0, 0
    for source, _, m in items:
      acc.add_counts(m["n"], m["label_counts"])
      groups = m["groups"]
      for j in range(len(groups.get("image_sum", ()))):
        acc.fold({name: arr[j] for name, arr in groups.items()})
      dropped += [[source, i] for i in m["dropped"]]
      n_nonfinite += len(set(m["nonfinite_images"]) | set(m["nonfinite_targets"]))
      n_bad += m["bad"]
    sha = _load(os.path.join(workdir, f"{split}.sha256.pkl"))
    if sha["n"] != acc.n:  # both read the same rows with the same drops
      raise RuntimeError(f"split '{split}': the sha256 task saw {sha['n']} records, the "
                         f"workers {acc.n}")
    plan.results[split] = dict(acc.split_meta(), sha256=sha["sha256"],
                               num_input=plan.num_input(split), num_dropped=len(dropped),
                               num_dropped_nonfinite=n_nonfinite, num_dropped_bad_indices=n_bad,
                               dropped_indices=dropped)
    if split == plan.stats_split:
      plan.channel_stats = acc.channel_stats()


def build(plan: Plan, partial: str, options=None) -> str:
  """Runs the pipeline into `partial`; returns the dataset's version directory."""
  workdir = os.path.join(partial, "beam_summaries")
  os.makedirs(workdir)
  builder = MaeJaxConvertedBeam(plan=plan, workdir=workdir, data_dir=partial,
                                file_format="tfrecord")
  config = tfds.download.DownloadConfig(try_download_gcs=False,
                                        beam_options=pipeline_options(options))
  try:
    builder.download_and_prepare(download_dir=os.path.join(partial, "downloads"),
                                 download_config=config)
  except ValueError as e:  # TFDS refuses an empty split inside the pipeline: say it as plain does
    empty = re.search(r"examples is 0 for split (\w+)", str(e))
    if empty:
      raise DataFormatError(f"split '{empty.group(1)}': no examples left after dropping "
                            "its rows") from e
    raise
  collect(plan, workdir)
  return os.fspath(builder.data_path)
