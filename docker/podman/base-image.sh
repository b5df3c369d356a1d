#!/bin/sh
# Make the local Debian base image (default localhost/debian:bookworm) from Debian's own
# packages with debootstrap, for hosts that cannot pull debian:bookworm-slim from a
# registry. Does nothing when the image already exists. Needs root, debootstrap, podman.
#   docker/podman/base-image.sh [IMAGE]
set -eu
IMAGE=${1:-localhost/debian:bookworm}
if podman image exists "$IMAGE"; then
    echo "base image $IMAGE present"
    exit 0
fi
# The mirror apt already uses on this host (deb822 or one-line sources), else Debian's CDN.
MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
         | grep -v security | head -n1 || true)
if [ -z "$MIRROR" ]; then
    MIRROR=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list \
             2>/dev/null || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /var/tmp/debian-bookworm-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap bookworm minbase from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
    || { tail -n 20 "$ROOT.log"; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
# Like the official slim image: no apt lists or caches in the base layer.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin
tar -C "$ROOT" -c . | podman import --change 'CMD ["bash"]' - "$IMAGE"
echo "imported $IMAGE"
