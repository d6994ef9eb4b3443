#!/usr/bin/env bash
# ViT MAE vs the hybrid Conv+ViT MAEs on equal terms (matched trainable parameters, same data,
# splits, steps, batch, seeds and learning rates): for each model pretrain -> reconstruction
# (test split) -> probe -> finetune, plus the probe on its random frozen encoder (control:
# what the probe gets without pretraining). Writes OUT/comparison.md and OUT/comparison.png.
# The defaults are the settings of the table in README.md / docs/models.md (≈75 min on the
# 2-core CPU as two shells in parallel, MODELS=convmae and MODELS=mae,depthwise_mae,convstem_mae):
#   NUM=10000 OUT=workdirs/compare VARIANT=tiny SEEDS=0,1,2 \
#   STEPS=pretrain=200,probe=100,finetune=100 STAGES=pretrain,probe,finetune,probe_random \
#   LRS=2e-3 bash launch/compare.sh
# LRS=2e-3,8e-3 chooses the finetune (and scratch) lr per model and seed on the validation
# split; add scratch to STAGES for the finetune model trained from random initialisation.
# MODELS=... runs a subset (e.g. two shells in parallel on different models, then the full
# command again: finished stages are reused and the table gets every row).
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
STEPS="${STEPS:-pretrain=200,probe=100,finetune=100}"
STAGES="${STAGES:-pretrain,probe,finetune,probe_random}"
LRS="${LRS:-2e-3}"
SELECT=(--select "finetune.lr=$LRS")
case ",$STAGES," in *,scratch,*) SELECT+=(--select "scratch.lr=$LRS") ;; esac
python -m mae_jax.compare --data "$DATA" --root "$OUT" --variant "$VARIANT" --seeds "$SEEDS" \
  --models "${MODELS:-mae,depthwise_mae,convstem_mae,convmae}" --steps "$STEPS" \
  --stages "$STAGES" "${SELECT[@]}" \
  --config.batch_size=32 --pretrain.lr=5e-3 --pretrain.warmup_steps=50 \
  "$@" 2>&1 | grep --line-buffered -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
