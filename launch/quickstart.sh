#!/usr/bin/env bash
# The main job on the embedded data, from nothing: set up .venv, generate boosted-top vs QCD
# jets with Pythia 8 + FastJet (cached in data_cache/), convert them to TFDS, pretrain the tiny
# ViT MAE, and write the loss curve and a reconstruction figure into the workdir.
#   NUM=3000 STEPS=300 bash launch/quickstart.sh [--config.FIELD=VALUE ...]
# Re-running resumes from the workdir's last checkpoint; delete the workdir to start over.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
NUM="${NUM:-3000}"
STEPS="${STEPS:-300}"
WORKDIR="${WORKDIR:-workdirs/quickstart}"
H5="data_cache/boosted_top_${NUM}.h5"
DATA="data_cache/boosted_top_${NUM}_tfds"
mkdir -p data_cache
start=$(date +%s)
if [ ! -f "$H5" ]; then
  python -m mae_jax.data.generate --process boosted_top --num "$NUM" --output "$H5" --workers 2 --seed 0
fi
if [ ! -d "$DATA" ]; then
  python -m mae_jax.data.convert --input "$H5" --output "$DATA" > /dev/null
  python -m mae_jax.data.convert verify "$DATA" > /dev/null && echo "[quickstart] $DATA verified"
fi
JAX_PLATFORMS="${JAX_PLATFORMS:-}" python -m mae_jax.main \
  --config configs/pretrain.py:variant=tiny --workdir "$WORKDIR" \
  --config.data.dir="$DATA" --config.total_steps="$STEPS" --config.batch_size=32 \
  --config.warmup_steps=30 --config.lr=5e-3 --config.log_every=20 --config.ckpt_every=100 \
  --alsologtostderr=false --stderrthreshold=warning "$@"
echo "[quickstart] done in $(( $(date +%s) - start )) s: $WORKDIR/loss_curve.png, $WORKDIR/reconstruction.png"
