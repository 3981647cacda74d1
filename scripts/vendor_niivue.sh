#!/usr/bin/env bash
# Refresh (or re-check) the vendored NiiVue that the web page's viewer loads from this server:
#   bash scripts/vendor_niivue.sh [VERSION]     (default: the vendored version)
# npm pack fetches @niivue/niivue from the npm registry, npm's integrity check covers the tarball,
# and its dist/index.js (a self-contained ES module) is copied to service/static/vendor/niivue/.
# Needs node + npm at build time only; nothing is fetched at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=service/static/vendor/niivue
VERSION=${1:-$(ls "$DEST" | sed -n 's/^niivue-\(.*\)\.js$/\1/p' | head -n1)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "@niivue/niivue@$VERSION" >/dev/null && tar xzf niivue-niivue-"$VERSION".tgz)
echo "npm integrity: $(npm view "@niivue/niivue@$VERSION" dist.integrity)"
if [ -f "$DEST/niivue-$VERSION.js" ] && cmp -s "$WORK/package/dist/index.js" "$DEST/niivue-$VERSION.js"; then
  echo "$DEST/niivue-$VERSION.js is the registry's dist/index.js of $VERSION"
else
  cp "$WORK/package/dist/index.js" "$DEST/niivue-$VERSION.js"
  echo "wrote $DEST/niivue-$VERSION.js: update service/static/viewer.js and $DEST/README.md"
fi
sha256sum "$DEST/niivue-$VERSION.js"
