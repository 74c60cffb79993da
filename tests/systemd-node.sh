#!/usr/bin/env bash
# A node with a real systemd and a real systemd-logind, for the end-to-end test of the package and
# the unit (tests/it/node_e2e.rs): a Debian 12 root made with debootstrap (systemd, dbus, logind's
# PAM module, polkitd), imported as an image on the machine's engine. The root is made once and
# kept under target/systemd-node/; the image is named after the package list, so a change of it
# makes a new one.
#
#   tests/systemd-node.sh image     make the image if it is missing (waiting for another maker);
#                                   print its name
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE="$ROOT/target/systemd-node"
SUITE=bookworm
MIRROR=${NODE_AGENT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,systemd-sysv,dbus,libpam-systemd,polkitd,adduser,curl,ca-certificates
TAG=$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
IMAGE="localhost/node-agent-systemd-node:$TAG"

log() { printf '==> %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

image() {
  # One maker at a time: CI starts one in the background while it builds, and the test waits.
  mkdir -p "$BASE"
  exec 9>"$BASE/.lock"
  flock 9
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    return
  fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq debootstrap >/dev/null
  fi
  local root="$BASE/root-$TAG"
  if [ ! -e "$root/.complete" ]; then
    log "making a Debian $SUITE root with systemd under $root (debootstrap, a few minutes)"
    as_root rm -rf "$root"
    mkdir -p "$BASE"
    as_root debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" \
      >"$BASE/debootstrap.log" 2>&1 || {
      tail -n 30 "$BASE/debootstrap.log" >&2
      exit 1
    }
    # A container's machine id is made at its first boot; no getty on a console it has not.
    as_root rm -f "$root/etc/machine-id"
    as_root touch "$root/etc/machine-id"
    as_root ln -sf /dev/null "$root/etc/systemd/system/getty.target"
    as_root touch "$root/.complete"
  fi
  log "importing $IMAGE"
  as_root tar -C "$root" --exclude=./.complete -c . |
    docker import --change 'CMD ["/lib/systemd/systemd"]' - "$IMAGE" >/dev/null
  echo "$IMAGE"
}

case ${1:-} in
  image) image ;;
  *)
    echo "usage: $0 image" >&2
    exit 2
    ;;
esac
