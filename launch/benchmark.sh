#!/usr/bin/env bash
# Train-step throughput of mae_jax (and transformers' ViTMAE side by side):
#   bash launch/benchmark.sh --variants tiny,e2e-base --batch 32 --steps 5 [--torch]
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec python -m mae_jax.bench "$@"
