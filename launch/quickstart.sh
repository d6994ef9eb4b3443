#!/usr/bin/env bash
# The main job on the embedded data, from nothing: set up .venv, generate boosted-top vs QCD
# jets with Pythia 8 + FastJet (cached in data_cache/), convert them to TFDS, pretrain the tiny
# sparse-token ViT MAE (only occupied patches are tokens), then reconstruction, the linear probe
# and its random-encoder control, finetune and its from-scratch control, ResNet-15 and the
# simple-observable baseline, and write WORKDIR/report.md with its figures.
#   NUM=3000 STEPS=1500 DOWN=300 SEEDS=0 bash launch/quickstart.sh [--config.FIELD=VALUE ...]
# Re-running reuses finished stages (and resumes unfinished ones); delete the workdir to redo.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
NUM="${NUM:-3000}"      # jets to generate (cached in data_cache/)
STEPS="${STEPS:-1500}"  # pretraining steps
DOWN="${DOWN:-300}"     # steps of each downstream stage
SEEDS="${SEEDS:-0}"     # e.g. SEEDS=0,1,2 for mean +- std
TOKENS="${TOKENS:-sparse}"  # dense: every patch is a token (5-10x slower here)
WORKDIR="${WORKDIR:-workdirs/quickstart}"
start=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/embedded_data.sh"  # sets DATA
python -m mae_jax.protocol --data "$DATA" --root "$WORKDIR" --variant tiny --tokens "$TOKENS" \
  --seeds "$SEEDS" --recon-splits test \
  --stages pretrain,probe,probe_random,finetune,scratch,resnet,observables \
  --steps "pretrain=$STEPS,probe=$DOWN,finetune=$DOWN,resnet=$DOWN" \
  --config.batch_size=64 --pretrain.lr=5e-3 --pretrain.warmup_steps=100 \
  --probe.lr=0.1 --finetune.lr=4e-3 --resnet.lr=4e-3 --resnet.batch_size=32 \
  "$@" 2>&1 | grep --line-buffered -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
echo "[quickstart] done in $(( $(date +%s) - start )) s: $WORKDIR/report.md"
