#!/usr/bin/env bash
# Sourced by quickstart.sh, compare.sh and label_efficiency.sh after setup_env.sh: generates
# NUM boosted-top vs QCD jets with Pythia 8 + FastJet (Pythia seed SEED, default 0; SPLIT, the
# train,validation,test fractions, default 0.8,0.1,0.1) into data_cache/boosted_top_${NUM}.h5
# (public E2E HDF5 schema; other seeds or splits add _seed${SEED}_split${SPLIT} to the name)
# and converts + verifies them into DATA=data_cache/<same name>_tfds, each step only if its
# output is missing (the conversion log is data_cache/convert_<name>.log).
NUM="${NUM:-3000}"
SEED="${SEED:-0}"
SPLIT="${SPLIT:-0.8,0.1,0.1}"
NAME="boosted_top_${NUM}"
if [ "$SEED" != 0 ] || [ "$SPLIT" != 0.8,0.1,0.1 ]; then
  # 0.2,0.2,0.6 -> split20-20-60
  NAME="${NAME}_seed${SEED}_split$(python3 -c "import sys; print('-'.join(str(round(float(f) * 100)) for f in sys.argv[1].split(',')))" "$SPLIT")"
fi
H5="data_cache/${NAME}.h5"
DATA="data_cache/${NAME}_tfds"
mkdir -p data_cache
if [ ! -f "$H5" ]; then
  python -m mae_jax.simulation --process boosted_top --num "$NUM" --output "$H5" --workers 2 \
    --seed "$SEED" --split "$SPLIT"
fi
if [ ! -d "$DATA" ]; then
  python -m mae_jax.data.convert --input "$H5" --output "$DATA" > "data_cache/convert_${NAME}.log" 2>&1
  python -m mae_jax.data.convert verify "$DATA" >> "data_cache/convert_${NAME}.log" 2>&1
  echo "[data] converted and verified $DATA"
fi
