#!/usr/bin/env bash
# The main job on the embedded data, from nothing: set up .venv, generate boosted-top vs QCD
# jets with Pythia 8 + FastJet (cached in data_cache/), convert them to TFDS, pretrain the tiny
# ViT MAE, then reconstruction, linear probe, finetune, scratch and ResNet-15, and write
# WORKDIR/report.md with its figures.
#   NUM=3000 STEPS=200 DOWN=50 SEEDS=0 bash launch/quickstart.sh [--config.FIELD=VALUE ...]
# Re-running reuses finished stages (and resumes unfinished ones); delete the workdir to redo.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
NUM="${NUM:-3000}"
STEPS="${STEPS:-200}"   # pretraining steps
DOWN="${DOWN:-50}"      # steps of each downstream stage
SEEDS="${SEEDS:-0}"     # e.g. SEEDS=0,1,2 for mean +- std
WORKDIR="${WORKDIR:-workdirs/quickstart}"
H5="data_cache/boosted_top_${NUM}.h5"
DATA="data_cache/boosted_top_${NUM}_tfds"
mkdir -p data_cache
start=$(date +%s)
if [ ! -f "$H5" ]; then
  python -m mae_jax.data.generate --process boosted_top --num "$NUM" --output "$H5" --workers 2 --seed 0
fi
if [ ! -d "$DATA" ]; then
  # conversion and verification logs go to data_cache/convert.log
  python -m mae_jax.data.convert --input "$H5" --output "$DATA" > data_cache/convert.log 2>&1
  python -m mae_jax.data.convert verify "$DATA" >> data_cache/convert.log 2>&1
  echo "[quickstart] converted and verified $DATA"
fi
# pretrain -> reconstruction -> linear probe -> finetune -> scratch -> ResNet-15, then report.md
python -m mae_jax.protocol --data "$DATA" --root "$WORKDIR" --variant tiny --seeds "$SEEDS" \
  --steps "pretrain=$STEPS,probe=$DOWN,finetune=$DOWN,scratch=$DOWN,resnet=$DOWN" \
  --config.batch_size=32 --pretrain.lr=5e-3 --pretrain.warmup_steps=20 \
  --finetune.lr=4e-3 --scratch.lr=4e-3 --resnet.lr=8e-3 "$@" 2>&1 | grep -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
echo "[quickstart] done in $(( $(date +%s) - start )) s: $WORKDIR/report.md"
