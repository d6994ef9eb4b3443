#!/usr/bin/env bash
# The whole downstream protocol on any converted dataset and model variant:
# pretrain -> reconstruction -> probe -> finetune -> scratch -> ResNet-15 -> ROOT/report.md.
#   bash launch/pipeline.sh --data data/boosted_top --root workdirs/base --variant e2e-base \
#       --seeds 0,1,2 --steps pretrain=100000,probe=5000,finetune=20000,scratch=20000,resnet=20000 \
#       --config.batch_size=256 [--pretrain.lr=1.5e-4 ...]
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec python -m mae_jax.protocol "$@"
