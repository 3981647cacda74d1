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
# One thread per process: the two auto-encoders train side by side (they are independent), then
# the diffusion stage. On 2 cores this beats one process with 2 threads (these nets are small).
# Every stage resumes from runs/demo/train/checkpoints, so re-running continues an interrupted run.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
$LS train mask-ae --config "$CONFIG" & mask_pid=$!
$LS train image-vae --config "$CONFIG" & vae_pid=$!
wait $mask_pid
wait $vae_pid
time $LS train diffusion --config "$CONFIG"   # v0.1: runs/demo/train/bundle

# v0.2 (training/configs/demo_finetune.yaml explains why): fine-tune v0.1 with the mask AE kept,
# the image VAE trained on (on the same 36 cases) and the denoiser on 160 phantoms (the first 36
# are the cases above: a case depends only on the seed and its index).
[ -f runs/demo/data/phantoms160/dataset.json ] || $LS phantoms --out runs/demo/data/phantoms160 --cases 160 --seed 1000
FINETUNE=training/configs/demo_finetune.yaml
VAE_DATA=(--data runs/demo/data/phantoms --data runs/demo/data/spleen8)
if [ "$CONFIG" != training/configs/demo.yaml ]; then
  sed -e '/spleen8/d' -e '/dataset_weights/d' "$FINETUNE" > runs/demo/demo-finetune-phantoms-only.yaml
  FINETUNE=runs/demo/demo-finetune-phantoms-only.yaml
  VAE_DATA=(--data runs/demo/data/phantoms)
fi
# The remaining stages run one at a time, so each gets both cores.
export OMP_NUM_THREADS=2
$LS train mask-ae --config "$FINETUNE"                       # 0 steps: v0.1's mask AE as it is
time $LS train image-vae --config "$FINETUNE" "${VAE_DATA[@]}"
time $LS train diffusion --config "$FINETUNE"
                                                             # v0.2: runs/demo/finetune/bundle
# v0.3 (training/configs/demo_pixels.yaml explains why): fine-tune v0.2 with pixel conditioning
# switched on, both auto-encoders kept, the denoiser on 320 phantoms (160 more, seed 2000).
[ -f runs/demo/data/phantoms_s2000/dataset.json ] || $LS phantoms --out runs/demo/data/phantoms_s2000 --cases 160 --seed 2000
# A fine-tune that keeps both auto-encoders (0 steps) and trains the denoiser: $1 = its config.
denoiser_run() {
  local config=$1
  if [ "$CONFIG" != training/configs/demo.yaml ]; then
    sed -e '/spleen8/d' -e '/dataset_weights/d' "$1" > "runs/demo/$(basename "$1" .yaml)-phantoms-only.yaml"
    config="runs/demo/$(basename "$1" .yaml)-phantoms-only.yaml"
  fi
  $LS train mask-ae --config "$config"                       # 0 steps: kept
  $LS train image-vae --config "$config"                     # 0 steps: kept
  time $LS train diffusion --config "$config"
}
denoiser_run training/configs/demo_pixels.yaml               # v0.3: runs/demo/pixels/bundle
# v0.4 (training/configs/demo_context.yaml explains why): v0.3 with two context slices either side of
# each window, 7000 steps. v0.5 (demo_context_long.yaml): the same network trained on, on the same data.
denoiser_run training/configs/demo_context.yaml              # v0.4: runs/demo/context/bundle
denoiser_run training/configs/demo_context_long.yaml         # v0.5: runs/demo/context_long/bundle
# v0.6 (training/configs/demo_stem.yaml explains why): v0.5 plus a pixel stem, 6000 steps on the same data.
denoiser_run training/configs/demo_stem.yaml                 # v0.6: runs/demo/stem/bundle
rm -rf model/bundles/demo && mkdir -p model/bundles && cp -r runs/demo/stem/bundle model/bundles/demo
echo "demo bundle: model/bundles/demo"
