#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Needs Redis on 127.0.0.1:6379 (started if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! (command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1); then
  if command -v redis-server >/dev/null; then
    redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes
    sleep 1
  else
    echo "warning: no Redis on 127.0.0.1:6379 and no redis-server to start; queue tests will fail" >&2
  fi
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
