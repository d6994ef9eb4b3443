#!/usr/bin/env bash
# One short GPU check (about 5 minutes on one H100): the device, the attention backends against
# each other (cuDNN vs XLA, bfloat16 and float32), the tests marked gpu, and the train-step
# benchmark of e2e-base and B at bfloat16 with MFU against the card's peak, beside transformers'
# ViTMAE on the same GPU. The log goes to $OUT/gpu_check.log (default workdirs/gpu_check).
#   bash launch/gpu_check.sh                  # installs .[test,generate,cuda12] into .venv first
#   MAE_JAX_SETUP=0 bash launch/gpu_check.sh  # the python on PATH as it is (jax with CUDA there)
#   BATCH=128 STEPS=5 VARIANTS=e2e-base bash launch/gpu_check.sh
# Without a GPU it says so in one line and exits 3, before installing anything.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "gpu_check: no GPU on this machine (nvidia-smi lists none); nothing checked" >&2
  exit 3
fi
if [ "${MAE_JAX_SETUP:-1}" != "0" ]; then
  export MAE_JAX_ACCELERATOR="${MAE_JAX_ACCELERATOR:-cuda12}"
  source "$HERE/setup_env.sh"  # cd's to the repository
else
  cd "$HERE/.."
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
OUT="${OUT:-workdirs/gpu_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export JAX_PLATFORMS=cuda TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
start=$(date +%s)

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python - <<'EOF' || exit 3
import sys
try:
  import jax
except ImportError as e:
  print(f"gpu_check: no jax for {sys.executable} ({e}); run without MAE_JAX_SETUP=0 to install it")
  sys.exit(3)
try:
  devices = jax.devices()
except Exception as e:  # noqa: BLE001  (jax 0.10 raises a bare AssertionError for a missing plugin)
  why = (str(e).strip().splitlines() or ["no CUDA plugin"])[0]
  print(f"gpu_check: JAX sees no GPU ({type(e).__name__}: {why}); "
        "install jax's CUDA build: MAE_JAX_ACCELERATOR=cuda12 bash launch/setup_env.sh")
  sys.exit(3)
print(f"jax {jax.__version__}, backend {jax.default_backend()}, {len(devices)} device(s): "
      f"{devices[0].device_kind}")
EOF

echo "== attention backends (cuDNN vs XLA)"
python benchmarks/attention_backends.py --batch "${ATTN_BATCH:-64}" --repeats 10

echo "== tests marked gpu"
set +e
python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
rc=$?
set -e
[ "$rc" -eq 0 ] || echo "gpu_check: the gpu tests failed (pytest exit $rc)"

echo "== train step: mae_jax vs transformers' ViTMAE, bfloat16"
python -m mae_jax.bench --variants "${VARIANTS:-e2e-base,B}" --batch "${BATCH:-256}" \
  --dtype bfloat16 --steps "${STEPS:-10}" --torch
echo "gpu_check: done in $(( $(date +%s) - start )) s; log: $OUT/gpu_check.log"
exit "$rc"
