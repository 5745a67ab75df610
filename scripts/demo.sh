#!/usr/bin/env bash
# The main job on the built-in synthetic set, end to end on a CPU, no download:
#   prepare (raw .skeleton files -> dataset) -> train (joint stream) -> test (skeletons only).
# Pass stream names to train more streams and fuse them, e.g.: bash scripts/demo.sh joint bone
# Outputs: data/synthetic/ and runs/demo/ (both replaced on every run of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
streams=("${@:-joint}")
rm -rf runs/demo

set -x
mmcl prepare synthetic --out data/synthetic --seed 0 --overwrite
scores=()
for s in "${streams[@]}"; do
  mmcl train --config "configs/synthetic/xsub/$s.yaml" --output-dir "runs/demo/$s"
  mmcl test --run "runs/demo/$s"
  scores+=("runs/demo/$s/test/scores.npz")
done
if [ "${#scores[@]}" -gt 1 ]; then
  mmcl ensemble "${scores[@]}" --out runs/demo/fused.npz
fi
