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
# Slim like the registry's debian:bookworm-slim (debuerreotype's settings): apt keeps no
# downloaded packages, caches or translations; dpkg installs no documentation, manual
# pages or locales (copyright files stay). Images built on it stay small the same way.
cat >"$ROOT/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
echo 'Acquire::Languages "none";' >"$ROOT/etc/apt/apt.conf.d/docker-no-languages"
echo 'Apt::AutoRemove::SuggestsImportant "false";' \
    >"$ROOT/etc/apt/apt.conf.d/docker-autoremove-suggests"
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/docker" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CONF
find "$ROOT/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/groff/* "$ROOT"/usr/share/info/* \
       "$ROOT"/usr/share/lintian/* "$ROOT"/usr/share/linda/* "$ROOT"/usr/share/locale/* \
       "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin \
       "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | podman import --change 'CMD ["bash"]' - "$IMAGE"
echo "imported $IMAGE"
