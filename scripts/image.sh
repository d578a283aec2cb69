#!/usr/bin/env bash
# Builds shoal's container image without an image registry: deploy/Dockerfile's `prebuilt`
# stage (its runtime base plus a binary built elsewhere) on a Debian bookworm image made here
# from Debian's packages (debootstrap + docker import), with a shoal binary built on this host.
#
#   scripts/image.sh [BINARY] [TAG]     # defaults: target/release/shoal, shoal:local
#
# With a registry, build the Dockerfile as it is instead:
#   docker build -f deploy/Dockerfile -t shoal .
# Needs root (debootstrap) the first time, and a Docker engine. The Debian image is kept as
# shoal-local/debian:bookworm for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/release/shoal}"
tag="${2:-shoal:local}"
debian="shoal-local/debian:bookworm"
log() { printf '==> %s\n' "$*" >&2; }
sudo_cmd=""
if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi

if [ ! -x "$binary" ]; then
  log "no binary at $binary: build it first (cargo build --release -p shoal-node --bin shoal)"
  exit 1
fi
work=$(mktemp -d)
trap '$sudo_cmd rm -rf "$work"' EXIT

if ! docker image inspect "$debian" >/dev/null 2>&1; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    $sudo_cmd apt-get update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  log "making $debian from Debian's packages (debootstrap)"
  for try in 1 2 3; do
    $sudo_cmd rm -rf "$work/rootfs"
    $sudo_cmd debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs" \
      http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 && break
    if [ "$try" = 3 ]; then tail -20 "$work/debootstrap.log" >&2; exit 1; fi
    log "debootstrap failed; trying again"
    sleep 5
  done
  # What a slim image leaves out: package caches, documentation, translations.
  $sudo_cmd rm -rf "$work/rootfs/var/cache/apt/archives"/*.deb "$work/rootfs/var/lib/apt/lists"/* \
    "$work/rootfs/usr/share/doc" "$work/rootfs/usr/share/man" "$work/rootfs/usr/share/info" \
    "$work/rootfs/usr/share/locale"
  $sudo_cmd tar -C "$work/rootfs" -c . | docker import - "$debian" >/dev/null
  $sudo_cmd rm -rf "$work/rootfs"
fi

log "building $tag (deploy/Dockerfile, stage prebuilt) with $binary"
# The context holds the binary alone. The classic builder builds the stages up to the target
# only, so no Rust image is needed.
mkdir "$work/context"
cp "$binary" "$work/context/shoal"
DOCKER_BUILDKIT=0 docker build -q -f deploy/Dockerfile --target prebuilt \
  --build-arg BASE="$debian" -t "$tag" "$work/context" >/dev/null 2>"$work/build.log" \
  || { cat "$work/build.log" >&2; exit 1; }
docker image inspect -f '{{.Size}}' "$tag" | awk -v t="$tag" '{ printf "==> %s: %.1f MB\n", t, $1 / 1e6 }' >&2
