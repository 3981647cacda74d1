#!/usr/bin/env bash
# The main job on the embedded default: no Redis, no GPU, the bundled checkpoint.
# Sets up .venv, starts `latentseg serve` (in-process worker), submits the real example CT that ships
# in the repository (examples/ts_a_torso: chest to pelvis at 3 mm, TotalSegmentator data, CC BY 4.0)
# with `latentseg submit --wait`, downloads the mean and variance masks, the label map and
# statistics.json into out/demo/results/<case>/, adds the job's preview.png, and prints the viewer's
# address (the web page at /?job=ID). From a terminal the server keeps serving until you press Enter,
# so the viewer can be opened; otherwise (CI, scripts) it stops. VIEW=1 / VIEW=0 force either.
# INPUT=ct.nii.gz and TARGETS=... segment something else.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LS=.venv/bin/latentseg
OUT=${OUT:-out/demo}
INPUT=${INPUT:-examples/ts_a_torso/imagesTr/ts_a_torso_0000.nii.gz}
TARGETS=${TARGETS:-liver,spleen}   # the targets the shipped bundle serves (MODEL_CARD.md)
PORT=${PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if [ -z "${VIEW:-}" ]; then
  if [ -t 0 ] && [ -t 1 ]; then VIEW=1; else VIEW=0; fi
fi
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"
env -u REDIS_URL LATENTSEG_STORAGE_DIR="$OUT/storage" $LS serve --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fs "$URL/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
$LS submit "$INPUT" --server "$URL" --targets "$TARGETS" --wait --out "$OUT/results" | tee "$OUT/submit.log"
JOB=$(awk -F'\t' 'NF == 2 && $2 ~ /^[0-9a-f]+$/ { print $2; exit }' "$OUT/submit.log")
RESULTS="$OUT/results/$(.venv/bin/python -c 'import sys; from pathlib import Path; from service.client import input_stem; print(input_stem(Path(sys.argv[1])))' "$INPUT")"
# The picture the server draws for a job (axial slices, mask contours, variance, legend).
curl -fsS "$URL/jobs/$JOB/preview.png" -o "$RESULTS/preview.png"
# statistics.json comes with the results; from GET /jobs/{id}/statistics where a server lists it apart.
if [ ! -f "$RESULTS/statistics.json" ]; then
  curl -fsS "$URL/jobs/$JOB/statistics" -o "$RESULTS/statistics.json" 2>/dev/null \
    || { rm -f "$RESULTS/statistics.json"; echo "note: this server gives no statistics.json" >&2; }
fi
echo "results:"; ls -1 "$RESULTS"/
echo "viewer: $URL/?job=$JOB"
if [ "$VIEW" = 1 ]; then
  echo "the server keeps serving the viewer: open the address above; press Enter here to stop it"
  read -r _ || true
else
  echo "the server stops now (VIEW=1 bash scripts/demo.sh keeps it serving for the viewer)"
fi
