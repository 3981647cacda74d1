#!/usr/bin/env bash
# The main job on the embedded default: no Redis, no GPU, the bundled checkpoint.
# Sets up .venv, starts `latentseg serve` (in-process worker), submits the real example CT that ships
# in the repository (examples/ts_a_torso: chest to pelvis at 3 mm, TotalSegmentator data, CC BY 4.0)
# with `latentseg submit --wait`, downloads the mean and variance masks and the label map
# into out/demo/results/, and stops the server. INPUT=ct.nii.gz and TARGETS=... segment something else.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LS=.venv/bin/latentseg
OUT=${OUT:-out/demo}
INPUT=${INPUT:-examples/ts_a_torso/imagesTr/ts_a_torso_0000.nii.gz}
TARGETS=${TARGETS:-liver,spleen}   # the targets the shipped bundle serves (MODEL_CARD.md)
PORT=${PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$OUT"
env -u REDIS_URL LATENTSEG_STORAGE_DIR="$OUT/storage" $LS serve --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
$LS submit "$INPUT" --server "http://127.0.0.1:$PORT" --targets "$TARGETS" --wait --out "$OUT/results"
echo "results:"; ls -1 "$OUT"/results/*/
