#!/usr/bin/env bash
# The OHIF viewer: the built app that the @ohif/app npm package ships in dist/, at the
# version pinned in deploy/ohif/VERSION (tarball checksum in deploy/ohif/ohif-app.sha256),
# extracted to .cache/ohif/<version>/dist (ignored by
# git). The compose `viewer` service and tests/viewer/ serve it. Needs npm (registry access)
# once; skips when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(cat deploy/ohif/VERSION)
DEST=.cache/ohif/$VERSION
[ -f "$DEST/dist/index.html" ] && exit 0
if ! command -v npm >/dev/null; then
  echo "install-viewer: npm is missing; the OHIF viewer test will be skipped" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@ohif/app@$VERSION" >/dev/null)
(cd "$work" && sha256sum --quiet -c -) < deploy/ohif/ohif-app.sha256
tar -xzf "$work"/ohif-app-"$VERSION".tgz -C "$work" package/dist
rm -rf "$DEST"
mkdir -p "$DEST"
mv "$work/package/dist" "$DEST/dist"
echo "OHIF $VERSION in $DEST/dist"
