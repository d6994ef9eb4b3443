#!/usr/bin/env bash
# ViT MAE vs the hybrid Conv+ViT MAEs on equal terms (matched trainable parameters, same data,
# splits, steps, batch, seeds and hyper-parameter grid): for each model pretrain ->
# reconstruction -> probe -> finetune, plus the probe on its random frozen encoder and the
# finetune model trained from scratch; finetune and scratch lr chosen per model and seed on
# the validation split from the same grid. Writes OUT/comparison.md and OUT/comparison.png.
#   NUM=10000 OUT=workdirs/compare VARIANT=tiny SEEDS=0,1,2 \
#   STEPS=pretrain=800,probe=100,finetune=100 LRS=2e-3,8e-3 bash launch/compare.sh
# Generates and converts NUM jets first if data_cache/ lacks them (or set DATA=converted_dir).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
NUM="${NUM:-10000}"
if [ -z "${DATA:-}" ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/embedded_data.sh"
elif [ ! -d "$DATA" ]; then
  echo "no converted dataset at DATA=$DATA" >&2
  exit 2
fi
OUT="${OUT:-workdirs/compare}"  # not ROOT: setup_env.sh sets ROOT to the repository
VARIANT="${VARIANT:-tiny}"
SEEDS="${SEEDS:-0,1,2}"
STEPS="${STEPS:-pretrain=800,probe=100,finetune=100}"
LRS="${LRS:-2e-3,8e-3}"
python -m mae_jax.compare --data "$DATA" --root "$OUT" --variant "$VARIANT" --seeds "$SEEDS" \
  --models "${MODELS:-mae,depthwise_mae,convstem_mae,convmae}" --steps "$STEPS" \
  --select "finetune.lr=$LRS" --select "scratch.lr=$LRS" \
  --config.batch_size=32 --pretrain.lr=5e-3 --pretrain.warmup_steps=50 \
  "$@" 2>&1 | grep --line-buffered -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
