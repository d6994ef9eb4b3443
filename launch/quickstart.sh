#!/usr/bin/env bash
# The main job on the embedded data, from nothing: set up .venv, generate boosted-top vs QCD
# jets with Pythia 8 + FastJet (cached in data_cache/), convert them to TFDS, pretrain the tiny
# ViT MAE, then reconstruction, linear probe, finetune, scratch and ResNet-15, and write
# WORKDIR/report.md with its figures.
#   NUM=3000 STEPS=200 DOWN=50 SEEDS=0 bash launch/quickstart.sh [--config.FIELD=VALUE ...]
# Re-running reuses finished stages (and resumes unfinished ones); delete the workdir to redo.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
NUM="${NUM:-3000}"      # jets to generate (cached in data_cache/)
STEPS="${STEPS:-200}"   # pretraining steps
DOWN="${DOWN:-50}"      # steps of each downstream stage
SEEDS="${SEEDS:-0}"     # e.g. SEEDS=0,1,2 for mean +- std
WORKDIR="${WORKDIR:-workdirs/quickstart}"
start=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/embedded_data.sh"  # sets DATA
# pretrain -> reconstruction -> linear probe -> finetune -> scratch -> ResNet-15, then report.md
python -m mae_jax.protocol --data "$DATA" --root "$WORKDIR" --variant tiny --seeds "$SEEDS" \
  --steps "pretrain=$STEPS,probe=$DOWN,finetune=$DOWN,scratch=$DOWN,resnet=$DOWN" \
  --config.batch_size=32 --pretrain.lr=5e-3 --pretrain.warmup_steps=20 \
  --finetune.lr=4e-3 --scratch.lr=4e-3 --resnet.lr=8e-3 "$@" 2>&1 | grep --line-buffered -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
echo "[quickstart] done in $(( $(date +%s) - start )) s: $WORKDIR/report.md"
