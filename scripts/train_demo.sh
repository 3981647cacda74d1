#!/usr/bin/env bash
# Reproduce the demo bundle: phantoms (+ the shared real spleen case when present) -> train all -> model/bundles/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LS=.venv/bin/latentseg
mkdir -p runs/demo/data
[ -f runs/demo/data/phantoms/dataset.json ] || $LS phantoms --out runs/demo/data/phantoms --cases 36 --seed 1000
SPLEEN=${SPLEEN8:-../shared/data/msd-spleen8}
if [ -f "$SPLEEN/spleen_8_image.nii.gz" ]; then
  mkdir -p runs/demo/data/spleen8/images runs/demo/data/spleen8/labels
  ln -sf "$(realpath "$SPLEEN/spleen_8_image.nii.gz")" runs/demo/data/spleen8/images/spleen_8.nii.gz
  ln -sf "$(realpath "$SPLEEN/spleen_8_label.nii.gz")" runs/demo/data/spleen8/labels/spleen_8.nii.gz
  echo '{"name": "msd_task09_spleen", "labels": {"1": "spleen"}}' > runs/demo/data/spleen8/labelmap.json
  CONFIG=training/configs/demo.yaml
else
  echo "no $SPLEEN: training on phantoms only"
  sed -e '/spleen8/d' -e '/dataset_weights/d' training/configs/demo.yaml > runs/demo/demo-phantoms-only.yaml
  CONFIG=runs/demo/demo-phantoms-only.yaml
fi
time $LS train all --config "$CONFIG"
rm -rf model/bundles/demo && mkdir -p model/bundles && cp -r runs/demo/train/bundle model/bundles/demo
echo "demo bundle: model/bundles/demo"
