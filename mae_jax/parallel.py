"""Mesh, shardings, multi-host start-up and host-local -> global arrays.

The mesh comes from config as a list of (axis name, size) pairs with one size
-1 meaning "all remaining devices", e.g. [("data", -1)] or
[("data", -1), ("fsdp", 2)]. Batches are split over every mesh axis; with an
"fsdp" axis each parameter (and its optimizer state) is also split along its
largest dimension that the axis divides (big_vision's FSDP rule).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mae_jax.errors import UsageError


def maybe_initialize_distributed(coordinator: str = "", num_processes: int = -1,
                                 process_id: int = -1):
  """Starts jax.distributed when the environment describes a multi-process job.

  SLURM (SLURM_NTASKS > 1) and TPU pod slices (TPU_WORKER_HOSTNAMES, or
  MAE_JAX_DISTRIBUTED=auto as launch/tpu_vm.sh sets) give
  `jax.distributed.initialize()` enough to find its peers on its own. Explicit
  settings come from the arguments (config `distributed.*`) or from the
  MAE_JAX_COORDINATOR / MAE_JAX_NUM_PROCESSES / MAE_JAX_PROCESS_ID variables.
  On CPU the collectives use gloo.
  """
  coordinator = coordinator or os.environ.get("MAE_JAX_COORDINATOR", "")
  if coordinator:
    num = num_processes if num_processes > 0 else int(os.environ["MAE_JAX_NUM_PROCESSES"])
    pid = process_id if process_id >= 0 else int(os.environ["MAE_JAX_PROCESS_ID"])
    if os.environ.get("JAX_PLATFORMS", "cpu").startswith("cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
  elif (int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ
        or os.environ.get("MAE_JAX_DISTRIBUTED") == "auto"):
    jax.distributed.initialize()  # peers from SLURM / TPU VM metadata
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(axes, devices=None) -> Mesh:
  """Mesh from [(name, size), ...]; at most one size may be -1 (all the rest)."""
  names = [str(a[0]) for a in axes]
  sizes = [int(a[1]) for a in axes]
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if sizes.count(-1) > 1:
    raise UsageError(f"mesh {axes}: at most one axis may have size -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise UsageError(f"mesh {axes}: {n} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise UsageError(f"mesh {axes} needs {int(np.prod(sizes))} devices, {n} are present")
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all mesh axes."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, axis: str, axis_size: int, min_size: int = 2**12) -> P:
  """Split the largest dimension divisible by the fsdp axis; small arrays stay replicated."""
  if axis_size <= 1 or int(np.prod(shape or (1,))) < min_size:
    return P()
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = axis
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_state, fsdp_axis: str = "fsdp"):
  """Replicated state, or FSDP-split when the mesh has an `fsdp_axis`."""
  size = mesh.shape.get(fsdp_axis, 1)
  return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, fsdp_axis, size)),
                      abstract_state)


def common_token_length(local_batch: dict) -> dict:
  """Sparse tokens: every process pads its `patch_ids` to the longest list of any process
  (a global array needs one shape); one small all-gather per step."""
  if "patch_ids" not in local_batch or jax.process_count() == 1:
    return local_batch
  from jax.experimental import multihost_utils
  ids = np.asarray(local_batch["patch_ids"])
  k = int(np.max(multihost_utils.process_allgather(np.int32(ids.shape[1]))))
  return {**local_batch, "patch_ids": np.pad(ids, ((0, 0), (0, k - ids.shape[1])),
                                             constant_values=-1)}


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays split over the batch axis."""
  local_batch = common_token_length(local_batch)
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def to_host(tree):
  """numpy copies of replicated (or fully addressable) arrays, on every process.

  A replicated array of a multi-process mesh is not fully addressable, but each
  process holds a complete copy: read the local one.
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)
