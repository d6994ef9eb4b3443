#!/usr/bin/env bash
# Issue 27's rate-distortion measurement: the compressive MAE at several latent budgets, each
# the protocol's `compression` stage in its own root, then ONE table and figure beside the
# storage baselines (benchmarks/compression_budgets.py):
#   BUDGETS=4x8,16x8,32x16 STEPS=500 JETS=1000 OUT=workdirs/compression \
#   bash launch/compression.sh [--config.FIELD=VALUE ...]
# BUDGETS: K×D = K latents of D float16 values, 2·K·D bytes per jet (+ the occupied-patch
# bitmap, 79 bytes for 125×125 images at patch 5): 4x8 = 64 B, 16x8 = 256 B, 32x16 = 1,024 B.
# Each budget trains on PRETRAIN_DATA (labels ignored) for STEPS steps, then decodes the first
# JETS test jets of DATA and scores them: jet mass and pT response / resolution, and the AUC
# of the observable trees (fitted on DATA's original train observables, chosen on validation)
# on the decoded jets against the originals. Roots: OUT/k{K}d{D}; they share OUT/cache (the
# observables of DATA's splits, computed once, ~45 jets/s; the trees' choice; XLA programs).
# CACHE_FROM=DIR copies observables_*.npz of the same DATA from another protocol root's cache
# (e.g. workdirs/decisive/cache: the decisive run's, 18,000 jets, minutes saved). Finished
# budgets are reused. Writes OUT/compression_budgets.md and OUT/compression_budgets.png.
# Defaults: the decisive run's data (launch/decisive.sh generates both). Cost per budget at
# the defaults, 2-core CPU: XLA compiles (one per token-bucket length), 500 steps at batch 64,
# then 1,000 jets decoded and scored (~5 min: ~20 storage baselines, observables of ~7
# distinct decoded sets); about 12 min when the machine is otherwise idle (an estimate from
# a loaded machine, docs/physics.md).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
DATA="${DATA:-data_cache/boosted_top_18000_seed2_split20-20-60_tfds}"
PRETRAIN_DATA="${PRETRAIN_DATA:-data_cache/boosted_top_pool6000_seed3_tfds}"
BUDGETS="${BUDGETS:-4x8,16x8,32x16}"
STEPS="${STEPS:-500}"
JETS="${JETS:-1000}"
SEED="${SEED:-0}"
OUT="${OUT:-workdirs/compression}"
for d in "$DATA" "$PRETRAIN_DATA"; do
  if [ ! -d "$d" ]; then
    echo "no converted dataset at $d (set DATA / PRETRAIN_DATA, or make them with" \
      "launch/decisive.sh)" >&2
    exit 2
  fi
done
mkdir -p "$OUT/cache"
if [ -n "${CACHE_FROM:-}" ]; then
  for f in "$CACHE_FROM"/observables_*.npz; do
    if [ -e "$f" ] && [ ! -e "$OUT/cache/$(basename "$f")" ]; then cp "$f" "$OUT/cache/"; fi
  done
fi
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$OUT/cache/xla}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
start=$(date +%s)
roots=()
for b in ${BUDGETS//,/ }; do
  k="${b%x*}" dim="${b#*x}"
  root="$OUT/k${k}d${dim}"
  mkdir -p "$root"
  [ -e "$root/cache" ] || ln -s ../cache "$root/cache"
  echo "[compression] budget $k x $dim float16 = $(( 2 * k * dim )) bytes per jet -> $root"
  python -m mae_jax.protocol --data "$DATA" --pretrain-data "$PRETRAIN_DATA" --root "$root" \
    --seeds "$SEED" --stages compression --steps "compression=$STEPS" \
    --compression-jets "$JETS" --compression.model.latents="$k" \
    --compression.model.latent_dim="$dim" "$@" 2>&1 | \
    grep --line-buffered -v "^I[0-9]\{4\} \|^W[0-9]\{4\} "
  roots+=("$root")
done
python benchmarks/compression_budgets.py --out "$OUT" "${roots[@]}"
echo "[compression] done in $(( $(date +%s) - start )) s: $OUT/compression_budgets.md"
