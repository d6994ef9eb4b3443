#!/usr/bin/env bash
# The main job on the embedded data, from nothing: set up .venv, generate boosted-top vs QCD
# jets with Pythia 8 + FastJet (cached in data_cache/), convert them to TFDS, pretrain the tiny
# sparse-token ViT MAE (only occupied patches are tokens) on every jet of the train split
# (labels unused), then, with LABELLED of them labelled: the linear probe and its
# random-encoder control, finetune and its from-scratch control, logistic regression and
# gradient-boosted trees on jet observables, and the trees on observables + the frozen
# encoder's features; reconstruction on the test split; WORKDIR/report.md with its figures.
#   NUM=3000 STEPS=1500 DOWN=300 LABELLED=200 SEEDS=0 bash launch/quickstart.sh [--config.FIELD=VALUE ...]
# LABELLED=all trains the downstream stages on the whole train split; STAGES=...,resnet adds
# ResNet-15 (≈ 3.5 min more here). The lrs were chosen on the validation split
# (--select finetune.lr=2e-3,8e-3 --select scratch.lr=2e-3,8e-3; README, "Quickstart"); they and
# the rest of the recipe (batch 64, the stages' lrs) are the protocol's defaults
# (mae_jax/protocol/recipe.py): this script passes only what is its own.
# Re-running reuses finished stages (and resumes unfinished ones); delete the workdir to redo.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
NUM="${NUM:-3000}"      # jets to generate (cached in data_cache/)
STEPS="${STEPS:-1500}"  # pretraining steps
DOWN="${DOWN:-300}"     # steps of each downstream stage
SEEDS="${SEEDS:-0}"     # e.g. SEEDS=0,1,2 for mean +- std
TOKENS="${TOKENS:-sparse}"  # dense: every patch is a token (5-10x slower here)
WORKDIR="${WORKDIR:-workdirs/quickstart}"
LABELLED="${LABELLED:-200}"  # labelled jets for the downstream stages (class-balanced)
STAGES="${STAGES:-pretrain,probe,probe_random,finetune,scratch,observables,observables_gbt,observables_encoder}"
labelled=(); [ "$LABELLED" = all ] || labelled=(--labelled "$LABELLED")
# One persistent XLA cache for all stages: probe and probe_random (finetune and scratch) run
# the same programs, and sparse tokens compile one step per token-bucket length.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/cache/xla}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
start=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/embedded_data.sh"  # sets DATA
python -m mae_jax.protocol --data "$DATA" --root "$WORKDIR" --variant tiny --tokens "$TOKENS" \
  --seeds "$SEEDS" --recon-splits test \
  --stages "$STAGES" "${labelled[@]}" \
  --steps "pretrain=$STEPS,probe=$DOWN,finetune=$DOWN,resnet=$DOWN" \
  "$@" 2>&1 | grep --line-buffered -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
echo "[quickstart] done in $(( $(date +%s) - start )) s: $WORKDIR/report.md"
