#!/usr/bin/env bash
# Sourced by quickstart.sh and compare.sh after setup_env.sh: generates NUM boosted-top vs QCD
# jets with Pythia 8 + FastJet into data_cache/boosted_top_${NUM}.h5 (public E2E HDF5 schema,
# split 80/10/10) and converts + verifies them into DATA=data_cache/boosted_top_${NUM}_tfds,
# each step only if its output is missing (the conversion log is data_cache/convert_${NUM}.log).
NUM="${NUM:-3000}"
H5="data_cache/boosted_top_${NUM}.h5"
DATA="data_cache/boosted_top_${NUM}_tfds"
mkdir -p data_cache
if [ ! -f "$H5" ]; then
  python -m mae_jax.simulation --process boosted_top --num "$NUM" --output "$H5" --workers 2 --seed 0
fi
if [ ! -d "$DATA" ]; then
  python -m mae_jax.data.convert --input "$H5" --output "$DATA" > "data_cache/convert_${NUM}.log" 2>&1
  python -m mae_jax.data.convert verify "$DATA" >> "data_cache/convert_${NUM}.log" 2>&1
  echo "[data] converted and verified $DATA"
fi
