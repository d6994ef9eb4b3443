#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; jax.distributed.initialize() finds its peers
# from the TPU VM metadata. Run from your machine:
#   gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command \
#     "cd mae_jax && bash launch/tpu_vm.sh configs/pretrain.py:variant=B gs://bucket/run \
#      --config.data.dir=/data/boosted_top --config.batch_size=4096"
# Each worker needs the repo and the converted dataset at the same path (or a shared mount).
set -euo pipefail
CONFIG="$1"; WORKDIR="$2"; shift 2
export MAE_JAX_ACCELERATOR="${MAE_JAX_ACCELERATOR:-tpu}"  # setup_env.sh installs .[tpu] (libtpu)
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export MAE_JAX_DISTRIBUTED=auto  # parallel.maybe_initialize_distributed() -> jax.distributed.initialize()
exec python -m mae_jax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
