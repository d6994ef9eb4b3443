#!/usr/bin/env bash
# The seed study's own experiment: pretrain the sparse-token MAE on an UNLABELLED pool of jets,
# then train the downstream stages on few LABELLED jets of a separate set, against the same
# classifier from scratch, ResNet-15 and the simple-observable baseline, per labelled-set size.
#   POOL=10000 NUM=3000 SIZES=100,1000 SEEDS=0,1,2 [VARIANT=tiny] OUT=workdirs/label_efficiency \
#   bash launch/label_efficiency.sh [--config.FIELD=VALUE ...]
# Generates (Pythia 8 + FastJet) and converts what data_cache/ lacks: the pool with Pythia seed
# POOL_SEED (default 1; POOL_SPLIT its fractions), the labelled set with SEED (default 0;
# SPLIT its train,validation,test fractions): different events. launch/decisive.sh is this
# script with a large test split and every control. Writes OUT/report.md with the AUC-vs-labels
# table and figure (OUT/label_efficiency.png). Finished stages are reused. STAGES=... drops
# stages (ResNet-15 is the slowest). The finetune/scratch lrs are the quickstart's, chosen on
# the validation split at 200 labels; --select finetune.lr=...,... re-chooses them per size.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
VARIANT="${VARIANT:-tiny}"  # ViT size (vit.VARIANTS): tiny, small-e2e, ...
POOL="${POOL:-10000}"   # unlabelled pool (generated with seed 1; ≈ 2.5 min per 10,000 jets here)
NUM="${NUM:-3000}"      # labelled set (seed 0: the quickstart's jets, 2,400 in train)
SIZES="${SIZES:-100,1000}"
SEEDS="${SEEDS:-0,1,2}"
STEPS="${STEPS:-pretrain=1500,probe=200,finetune=200,resnet=200}"
STAGES="${STAGES:-pretrain,probe,probe_random,finetune,scratch,resnet,observables,observables_gbt,observables_encoder}"
POOL_SEED="${POOL_SEED:-1}"
POOL_SPLIT="${POOL_SPLIT:-0.8,0.1,0.1}"  # pretraining reads the pool's train split
OUT="${OUT:-workdirs/label_efficiency}"
# one persistent XLA cache for every stage, seed and size (they share most programs)
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$OUT/cache/xla}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
start=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/embedded_data.sh"  # the labelled set: DATA (seed 0)
POOL_H5="data_cache/boosted_top_pool${POOL}_seed${POOL_SEED}.h5"
POOL_DATA="data_cache/boosted_top_pool${POOL}_seed${POOL_SEED}_tfds"
if [ ! -f "$POOL_H5" ]; then
  python -m mae_jax.simulation --process boosted_top --num "$POOL" --output "$POOL_H5" \
    --workers 2 --seed "$POOL_SEED" --split "$POOL_SPLIT"
fi
if [ ! -d "$POOL_DATA" ]; then
  python -m mae_jax.data.convert --input "$POOL_H5" --output "$POOL_DATA" > \
    "data_cache/convert_pool${POOL}.log" 2>&1
  echo "[data] converted $POOL_DATA"
fi
python -m mae_jax.protocol --data "$DATA" --pretrain-data "$POOL_DATA" --root "$OUT" \
  --variant "$VARIANT" --seeds "$SEEDS" --labelled "$SIZES" --recon-splits test \
  --stages "$STAGES" --steps "$STEPS" --pretrain.warmup_steps="${WARMUP:-200}" \
  "$@" 2>&1 | grep --line-buffered -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
echo "[${RUN_NAME:-label_efficiency}] done in $(( $(date +%s) - start )) s: $OUT/report.md"
