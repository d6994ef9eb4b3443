#!/usr/bin/env bash
# ViT MAE vs the hybrid Conv+ViT MAEs on equal terms (matched parameter count, same data,
# splits, steps, batch and seeds): pretrain -> reconstruction -> probe -> finetune for each,
# then OUT/comparison.md (table, mean ± std over seeds) and OUT/comparison.png.
#   OUT=workdirs/compare VARIANT=tiny SEEDS=0,1,2 STEPS=pretrain=200,probe=50,finetune=50 \
#       bash launch/compare.sh
# Needs the quickstart's data (run launch/quickstart.sh first, or set DATA=converted_dir).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-data_cache/boosted_top_3000_tfds}"
OUT="${OUT:-workdirs/compare}"  # not ROOT: setup_env.sh sets ROOT to the repository
VARIANT="${VARIANT:-tiny}"
SEEDS="${SEEDS:-0,1,2}"
STEPS="${STEPS:-pretrain=200,probe=50,finetune=50}"
if [ ! -d "$DATA" ]; then
  echo "no converted dataset at $DATA: run 'bash launch/quickstart.sh' first or set DATA=" >&2
  exit 2
fi
python -m mae_jax.compare --data "$DATA" --root "$OUT" --variant "$VARIANT" --seeds "$SEEDS" \
  --models mae,depthwise_mae,convstem_mae,convmae --steps "$STEPS" \
  --config.batch_size=32 --pretrain.lr=5e-3 --pretrain.warmup_steps=20 --finetune.lr=4e-3 \
  "$@" 2>&1 | grep -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
