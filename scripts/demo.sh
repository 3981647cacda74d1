#!/usr/bin/env bash
# The main job on the embedded default: no Redis, no GPU, the bundled demo checkpoint.
# Sets up .venv, generates a CT phantom, starts `latentseg serve` (in-process worker),
# submits the volume for liver and pancreas with `latentseg submit --wait`, downloads the
# mean and variance masks into out/demo/, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LS=.venv/bin/latentseg
OUT=${OUT:-out/demo}
PORT=${PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$OUT"
[ -f "$OUT/input/phantom.nii.gz" ] || {
  $LS phantoms --out "$OUT/phantom-data" --cases 1 --seed 4242 --shape 256 256 60 --spacing 1.5 1.5 3.0 >/dev/null
  mkdir -p "$OUT/input"
  cp "$OUT"/phantom-data/imagesTr/*.nii.gz "$OUT/input/phantom.nii.gz"
}
env -u REDIS_URL LATENTSEG_STORAGE_DIR="$OUT/storage" $LS serve --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
$LS submit "$OUT/input/phantom.nii.gz" --server "http://127.0.0.1:$PORT" --targets liver,pancreas --wait --out "$OUT/results"
echo "results:"; ls -1 "$OUT"/results/*/
