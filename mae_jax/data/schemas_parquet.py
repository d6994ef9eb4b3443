"""Parquet layout (`X_jets` nested lists, `y`, `m0`, `pt`): inspection and chunked reader.

The file is read row group by row group, never whole; `mae_jax.data.schemas`
dispatches here for parquet files.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from mae_jax.data.layouts import (QG_TARGETS, Chunk, Layout, SplitSpec, _as_f32_images,
                                  _default_channel_names, _err, check_label_values, holdout_ranges)


def _is_list_type(t) -> bool:
  import pyarrow as pa

  return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _list_depth_type(t):
  depth = 0
  while _is_list_type(t):
    depth += 1
    t = t.value_type
  return depth, t


def _nested_shape(col, path: str, key: str, row_offset: int) -> tuple[int, int, int]:
  """Shape [a][b][c] of every row in a 3-deep list column; all rows must agree."""
  import pyarrow as pa
  import pyarrow.compute as pc

  if isinstance(col, pa.ChunkedArray):
    col = col.combine_chunks()
  dims = []
  arr = col
  for level in range(3):
    if arr.null_count:
      bad = np.flatnonzero(np.asarray(arr.is_null()))
      raise _err(path, key,
                 f"null nested list at level {level} (first flat position {int(bad[0])})")
    lengths = np.asarray(pc.list_value_length(arr))
    if lengths.size == 0:
      dims.append(0)
    else:
      u = np.unique(lengths)
      if u.size != 1:
        first_bad = int(np.flatnonzero(lengths != lengths[0])[0])
        if level == 0:
          where = f"row {row_offset + first_bad}"
        else:
          where = f"flat position {first_bad} at nesting level {level}"
        raise _err(
            path,
            key,
            f"inconsistent nested shape: level-{level} lists have lengths {u[:6].tolist()} "
            f"(expected all {int(lengths[0])}; first mismatch at {where})",
        )
      dims.append(int(u[0]))
    arr = arr.flatten()
  return tuple(dims)


def inspect_parquet(path: str, holdout) -> Layout:
  """The layout of the parquet file `path` (labels validated column by column)."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  try:
    pf = pq.ParquetFile(path)
  except (OSError, pa.ArrowException) as e:
    raise _err(path, None, f"cannot open as parquet (truncated or unreadable?): {e}") from e
  schema = pf.schema_arrow
  names = schema.names
  if "X_jets" not in names:
    raise _err(path, None, "no known parquet layout (expected columns X_jets, y[, m0, pt]); "
               f"columns found: {names}")
  if "y" not in names:
    raise _err(path, "y", f"missing label column 'y'; columns found: {names}")
  depth, leaf = _list_depth_type(schema.field("X_jets").type)
  if depth != 3 or not (pa.types.is_floating(leaf) or pa.types.is_integer(leaf)):
    raise _err(path, "X_jets", "expected 3-deep nested numeric lists [C][H][W], "
               f"got type {schema.field('X_jets').type}")
  n = pf.metadata.num_rows
  if n == 0:
    raise _err(path, "X_jets", "file has no rows")
  # Shape from the first row of the first non-empty row group.
  first = None
  for rg in range(pf.num_row_groups):
    if pf.metadata.row_group(rg).num_rows:
      first = next(pf.iter_batches(batch_size=1, row_groups=[rg], columns=["X_jets"]))
      break
  a, b, c = _nested_shape(first.column(0), path, "X_jets", 0)
  # Public release stores [C][H][W] (3,125,125): channels first when the first
  # axis is small and the last is not.
  if a <= 16 and c > 16:
    channels_first, shape = True, (b, c, a)
  else:
    channels_first, shape = False, (a, b, c)
  targets = [(key, None) for key in QG_TARGETS if key in names]
  tnames = [QG_TARGETS[key] for key, _ in targets]
  for key in ["y"] + [k for k, _ in targets]:
    t = schema.field(key).type
    if _is_list_type(t):
      if _list_depth_type(t)[0] != 1:
        raise _err(path, key, f"expected scalar or length-1 list per row, got type {t}")
    elif not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)):
      raise _err(path, key, f"expected a numeric column, got type {t}")
  # Labels: scan the y column alone (small), row group by row group.
  off = 0
  for rg in range(pf.num_row_groups):
    y = _column_to_numpy(pf.read_row_group(rg, columns=["y"]).column(0), path, "y")
    check_label_values(path, "y", y, off)
    off += len(y)
  splits = {s: SplitSpec("X_jets", "y", None, list(targets), lo, hi)
            for s, (lo, hi) in holdout_ranges(n, holdout).items()}
  cnames = _default_channel_names(shape[2])
  md = pf.schema_arrow.metadata or {}
  if b"channel_names" in md:
    import json

    cn = json.loads(md[b"channel_names"])
    if len(cn) == shape[2]:
      cnames = list(cn)
  return Layout(path, "parquet", shape, cnames, tnames, None, splits, channels_first=channels_first,
                image_dtype=str(leaf))


def _column_to_numpy(col, path, key) -> np.ndarray:
  import pyarrow as pa

  if isinstance(col, pa.ChunkedArray):
    col = col.combine_chunks()
  if _is_list_type(col.type):
    import pyarrow.compute as pc

    lengths = np.asarray(pc.list_value_length(col))
    if lengths.size and not np.all(lengths == 1):
      raise _err(path, key, "expected length-1 lists per row, found lengths "
                 f"{np.unique(lengths)[:6].tolist()}")
    col = col.flatten()
  return col.to_numpy(zero_copy_only=False)


def iter_parquet(layout: Layout, spec: SplitSpec, chunk_size: int, lo: int,
                 hi: int) -> Iterator[Chunk]:
  """Chunks of rows [lo, hi) of one split of a parquet file."""
  import pyarrow.parquet as pq

  pf = pq.ParquetFile(layout.path)
  cols = ["X_jets", "y"] + [k for k, _ in spec.target_keys]
  tkeys = [k for k, _ in spec.target_keys]
  # Row-group boundaries from the footer, to read only the groups overlapping [lo, stop).
  row = 0
  wanted = []
  for rg in range(pf.num_row_groups):
    nrg = pf.metadata.row_group(rg).num_rows
    if row + nrg > lo and row < hi and nrg:
      wanted.append((rg, row))
    row += nrg
  h, w, c = layout.image_shape
  for rg, rg_start in wanted:
    pos = rg_start
    for batch in pf.iter_batches(batch_size=chunk_size, row_groups=[rg], columns=cols):
      bn = batch.num_rows
      a, b = max(pos, lo), min(pos + bn, hi)
      if a < b:
        sub = batch.slice(a - pos, b - a)
        dims = _nested_shape(sub.column(0), layout.path, "X_jets", a)
        expect = (c, h, w) if layout.channels_first else (h, w, c)
        if dims != expect:
          raise _err(layout.path, "X_jets", f"inconsistent nested shape: rows {a}:{b} have "
                     f"{list(dims)}, expected {list(expect)}")
        vals = sub.column(0).flatten().flatten().flatten()
        x = vals.to_numpy(zero_copy_only=False).reshape((b - a,) + dims)
        if layout.channels_first:
          x = x.transpose(0, 2, 3, 1)
        x = _as_f32_images(x)
        y = _column_to_numpy(sub.column(1), layout.path, "y")
        y = check_label_values(layout.path, "y", y, a)
        if tkeys:
          t = np.stack([_column_to_numpy(sub.column(2 + i), layout.path, k)
                        for i, k in enumerate(tkeys)], axis=1).astype(np.float32)
        else:
          t = np.zeros((b - a, 0), np.float32)
        yield Chunk(a, x, y, t, tkeys)
      pos += bn
      if pos >= hi:
        return
