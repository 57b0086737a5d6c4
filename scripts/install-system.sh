#!/usr/bin/env bash
# System packages the tests use: dcmtk (an independent DICOM renderer to compare with),
# Orthanc with its DICOMweb plugin (a real PACS), Chromium and its driver (the web page),
# PostgreSQL (a catalog on a database server), strace (the no-outbound-traffic check),
# npm (fetches the OHIF viewer, scripts/install-viewer.sh).
# Needs root (CI runs as root); elsewhere it says what to install and carries on.
set -euo pipefail
PACKAGES="dcmtk orthanc orthanc-dicomweb chromium chromium-driver docker-compose postgresql strace"
missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
command -v npm >/dev/null || missing="$missing npm"  # any npm will do (e.g. NodeSource's)
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
else
  echo "install-system: not root; tests that need:$missing will be skipped" >&2
fi
