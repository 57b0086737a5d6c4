#!/bin/sh
# Run by the nginx image's entrypoint before nginx starts: the basic-auth header that the
# /dicom-web/ proxy adds, from ORTHANC_USER / ORTHANC_PASSWORD (never in a mounted file).
set -eu
token=$(printf '%s:%s' "$ORTHANC_USER" "$ORTHANC_PASSWORD" | base64 | tr -d '\n')
printf 'proxy_set_header Authorization "Basic %s";\n' "$token" > /etc/nginx/orthanc-auth.conf
