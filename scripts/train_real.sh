#!/usr/bin/env bash
# Train latentseg on real labelled CT (issue 16): leave-one-patient-out folds, each scored on the patient it
# never saw, then the bundle trained on every case, marked with the targets it serves (left-out Dice >= 0.5).
#
#   scripts/train_real.sh [options] DATA_DIR [DATA_DIR ...]
#
# DATA_DIR: a dataset folder in nnU-Net v2, MSD or plain layout (AMOS, the TotalSegmentator dataset, your
# hospital's data: labels are mapped onto the vocabulary by the mapping table or by name); a folder of
# <case>_image.nii.gz / <case>_label.nii.gz pairs with a labelmap.json is wrapped into the plain layout.
# The shared MSD spleen case (../shared/data/msd-spleen8) is recognised and rebuilt by scripts/msd_spleen8_dataset.py
# (its header mirrors the patient; the script flips it back and adds the left kidney, liver, aorta and stomach,
# annotated for this project).
#
# Options:
#   --out DIR           run folder (default runs/real); every stage resumes from its checkpoints there
#   --config FILE       training config (default training/configs/real.yaml: model, targets, augmentation)
#   --init-from BUNDLE  bundle to fine-tune (default: the config's, the shipped demo bundle)
#   --fold-init-from B  bundle each fold starts from (default: --init-from); use one that never saw the
#                       left-out patients (v0.8's folds: v0.6 from git, `git show 06aa22b:model/bundles/demo/...`)
#   --leave-out CASE    add a fold trained without CASE and scored on it (repeatable); default: none
#   --steps N           diffusion steps of the full run (default: the config's)
#   --minutes M         wall-time budget of the full run (default: the config's)
#   --fold-steps N      diffusion steps of each fold (default: --steps)
#   --fold-minutes M    wall-time budget of each fold (default: --minutes)
#   --phantoms N        add N procedural phantoms as a low-weight dataset (default 12; 0: none)
#   --device DEV        cpu (default) or cuda; on cuda every step runs in bf16 autocast
#   --gpus N            DDP over N GPUs with torchrun (runs one after another, each on all GPUs)
#   --parallel          CPU: run the folds and the full run side by side, one thread each (on 2 cores this
#                       gives ~1.5 steps/s in all against ~0.9 for one run with both threads)
#   --ship              copy the marked full bundle to model/bundles/demo
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/real; CONFIG=training/configs/real.yaml; INIT=(); FOLD_INIT=(); STEPS=(); FOLD_STEPS=(); PHANTOMS=12
DEVICE=cpu; GPUS=0; PARALLEL=0; SHIP=0; LEAVE_OUT=(); DATA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --init-from) INIT=(--init-from "$2"); shift 2 ;;
    --fold-init-from) FOLD_INIT=(--init-from "$2"); shift 2 ;;
    --leave-out) LEAVE_OUT+=("$2"); shift 2 ;;
    --steps) STEPS+=(--steps "$2"); shift 2 ;;
    --minutes) STEPS+=(--max-minutes "$2"); shift 2 ;;
    --fold-steps) FOLD_STEPS+=(--steps "$2"); shift 2 ;;
    --fold-minutes) FOLD_STEPS+=(--max-minutes "$2"); shift 2 ;;
    --phantoms) PHANTOMS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --gpus) GPUS=$2; DEVICE=cuda; shift 2 ;;
    --parallel) PARALLEL=1; shift ;;
    --ship) SHIP=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    -*) echo "train_real.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) DATA+=("$1"); shift ;;
  esac
done
[ ${#DATA[@]} -gt 0 ] || { echo "train_real.sh: name at least one dataset folder (see --help)" >&2; exit 2; }
[ ${#FOLD_STEPS[@]} -gt 0 ] || FOLD_STEPS=("${STEPS[@]}")
[ ${#FOLD_INIT[@]} -gt 0 ] || FOLD_INIT=("${INIT[@]}")
bash scripts/setup.sh
LS=.venv/bin/latentseg
mkdir -p "$OUT/data"

# Dataset folders as the trainer reads them (wrapping pairs of files into the plain layout).
FOLDERS=()
for d in "${DATA[@]}"; do
  [ -d "$d" ] || { echo "train_real.sh: $d is not a folder" >&2; exit 2; }
  if [ -f "$d/dataset.json" ] || [ -f "$d/labelmap.json" ] || [ -f "$d/labelmap.yaml" ]; then
    FOLDERS+=("$(realpath "$d")"); continue
  fi
  if [ "$(basename "$d")" = msd-spleen8 ]; then
    .venv/bin/python scripts/msd_spleen8_dataset.py --source "$d" --out "$OUT/data/spleen8k"
    FOLDERS+=("$(realpath "$OUT/data/spleen8k")"); continue
  fi
  pairs=("$d"/*_label.nii.gz)
  [ -e "${pairs[0]}" ] || { echo "train_real.sh: $d has no dataset.json, labelmap.json or *_label.nii.gz files" >&2; exit 2; }
  wrapped="$OUT/data/$(basename "$d")"
  mkdir -p "$wrapped/images" "$wrapped/labels"
  for label in "${pairs[@]}"; do
    case_id=$(basename "$label" _label.nii.gz)
    ln -sf "$(realpath "$d/${case_id}_image.nii.gz")" "$wrapped/images/$case_id.nii.gz"
    ln -sf "$(realpath "$label")" "$wrapped/labels/$case_id.nii.gz"
  done
  if [ -f "$d/labelmap.json" ]; then cp "$d/labelmap.json" "$wrapped/"
  else echo "train_real.sh: $d needs a labelmap.json ({\"name\": ..., \"labels\": {\"1\": \"liver\"}})" >&2; exit 2
  fi
  FOLDERS+=("$(realpath "$wrapped")")
done
if [ "$PHANTOMS" -gt 0 ]; then
  [ -f "$OUT/data/phantoms/dataset.json" ] || $LS phantoms --out "$OUT/data/phantoms" --cases "$PHANTOMS" --seed 1000
  FOLDERS+=("$(realpath "$OUT/data/phantoms")")
else
  # The config weights the phantom set; without it, drop that weight (and the config's phantom folder).
  sed -e 's/, latentseg_phantoms: [0-9.]*//' -e '/runs\/real\/data\/phantoms/d' -e "s|\.\./\.\./|$PWD/|g" "$CONFIG" > "$OUT/config-nophantoms.yaml"
  CONFIG=$OUT/config-nophantoms.yaml
fi
DATA_ARGS=(); for f in "${FOLDERS[@]}"; do DATA_ARGS+=(--data "$f"); done

train() {  # train RUN_DIR INIT... -- [extra args]: all three stages (kept auto-encoders take 0 steps)
  local run=$1; shift
  local init=(); while [ "$1" != "--" ]; do init+=("$1"); shift; done; shift
  local cmd=("$LS")
  if [ "$GPUS" -gt 1 ]; then cmd=(.venv/bin/torchrun --standalone --nproc_per_node "$GPUS" "$(command -v "$LS" || echo "$LS")"); fi
  "${cmd[@]}" train all --config "$CONFIG" "${DATA_ARGS[@]}" "${init[@]}" --device "$DEVICE" --out "$run" "$@"
}
PIDS=()
if [ "$PARALLEL" = 1 ] && [ "$DEVICE" = cpu ]; then export OMP_NUM_THREADS=1; fi
for case_id in "${LEAVE_OUT[@]}"; do
  if [ "$PARALLEL" = 1 ] && [ "$DEVICE" = cpu ]; then
    train "$OUT/fold_$case_id" "${FOLD_INIT[@]}" -- --exclude-case "$case_id" "${FOLD_STEPS[@]}" > "$OUT/fold_$case_id.log" 2>&1 & PIDS+=($!)
  else
    train "$OUT/fold_$case_id" "${FOLD_INIT[@]}" -- --exclude-case "$case_id" "${FOLD_STEPS[@]}" 2>&1 | tee "$OUT/fold_$case_id.log"
  fi
done
if [ "$PARALLEL" = 1 ] && [ "$DEVICE" = cpu ]; then
  train "$OUT/full" "${INIT[@]}" -- "${STEPS[@]}" > "$OUT/full.log" 2>&1 & PIDS+=($!)
  for pid in "${PIDS[@]}"; do wait "$pid"; done
  unset OMP_NUM_THREADS
else
  train "$OUT/full" "${INIT[@]}" -- "${STEPS[@]}" 2>&1 | tee "$OUT/full.log"
fi

# Score each fold on the patient it left out, then mark the full bundle.
REPORTS=()
for case_id in "${LEAVE_OUT[@]}"; do
  for f in "${FOLDERS[@]}"; do
    # nnU-Net/MSD folders have labelsTr/, plain ones labels/: either holding the case is the one to score on.
    if compgen -G "$f/labelsTr/$case_id.*" >/dev/null || compgen -G "$f/labels/$case_id.*" >/dev/null; then
      $LS evaluate --bundle "$OUT/fold_$case_id/bundle" --data "$f" --cases "$case_id" --device "$DEVICE" --out "$OUT/fold_$case_id/left_out"
      REPORTS+=("$OUT/fold_$case_id/left_out/evaluation.json")
    fi
  done
done
if [ ${#REPORTS[@]} -gt 0 ]; then
  $LS set-served "$OUT/full/bundle" --reports "${REPORTS[@]}"
fi
if [ "$SHIP" = 1 ]; then
  rm -rf model/bundles/demo.new && cp -r "$OUT/full/bundle" model/bundles/demo.new
  rm -rf model/bundles/demo.new/onnx && rm -rf model/bundles/demo && mv model/bundles/demo.new model/bundles/demo
  echo "shipped $OUT/full/bundle as model/bundles/demo"
fi
