#!/usr/bin/env bash
# Extra container engines for the engine-facing tests, beside the machine's own Docker engine:
#   docker26  Debian 13's docker.io (Docker 26.1, API 1.45), unpacked into a folder of ours;
#   podman    Debian 12's podman (4.3, Docker-compatible API 1.41) as `podman system service`.
# Each runs in a network namespace of its own (never the host's: a second dockerd there would
# reconfigure the host's docker0), with its own data root and pid file under target/engines/NAME/,
# and its own socket under /run/node-agent-tests/ (see SOCKETS). Only what this script started is
# stopped, by its pid.
#
#   tests/engines.sh up [docker26|podman]...   start them (all by default); prints NAME=unix://SOCKET
#   tests/engines.sh down [NAME]...            stop them
#   tests/engines.sh socket NAME               print unix://SOCKET of a running engine
#   tests/engines.sh test [NAME]...            start them, run the engine-facing tests against
#                                              each in turn (DOCKER_HOST), then stop them
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE="$ROOT/target/engines"
ALL=(docker26 podman)
# The tests that drive the engine: stops and signals, starts and restarts, ~okeanos, events and
# crashes, an engine that goes away, kill -9 of the agent and the chaos run, the node's drain and its
# shutdown, the apps' histories. The kill -9 loops run a third of their rounds, and the chaos run
# 12 s, here: the machine's own engine runs them in full.
# They are modules of the one test binary, picked by their names' prefixes.
ENGINE_TESTS=(stop:: start:: okeanos:: world:: engine:: sampling:: kill9:: drain:: shutdown:: history::)
SHORT_ENV=(NODE_AGENT_KILL9_SHORT=1 NODE_AGENT_CHAOS_SECS=12)

log() { printf '==> %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

netns_of() { echo "node-agent-$1"; }

ensure_netns() {
  local ns
  ns=$(netns_of "$1")
  if [ ! -e "/run/netns/$ns" ]; then
    as_root ip netns add "$ns"
  fi
  as_root ip -n "$ns" link set lo up
}

remove_netns() {
  local ns
  ns=$(netns_of "$1")
  if [ -e "/run/netns/$ns" ]; then
    as_root ip netns delete "$ns" || true
  fi
}

# The sockets live under /run, not under target/: a test runs the agent as an unprivileged user in
# the socket's group (as its unit runs it), which must reach the socket wherever the repository is
# cloned, under a home directory of mode 0700 or a `mktemp -d` folder too. One folder per clone,
# named after its path; the folders are open to the socket's group only.
SOCKETS=/run/node-agent-tests/$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)

socket_of() { echo "$SOCKETS/$1/engine.sock"; }

# The socket's folder, reachable by root and the docker group (where there is one).
make_socket_dir() {
  local dir=$SOCKETS/$1 group=root
  if getent group docker >/dev/null; then group=docker; fi
  as_root install -d -m 0755 /run/node-agent-tests
  as_root install -d -m 0750 -g "$group" "$SOCKETS" "$dir"
  as_root rm -f "$dir/engine.sock"
}

answers() {
  curl -fsS --max-time 3 --unix-socket "$(socket_of "$1")" http://localhost/_ping >/dev/null 2>&1
}

wait_answer() {
  local name=$1 log=$2
  for _ in $(seq 1 90); do
    if answers "$name"; then
      return 0
    fi
    sleep 1
  done
  echo "$name did not answer within 90 s; its log follows" >&2
  tail -n 40 "$log" >&2 || true
  return 1
}

# Runs `nsenter --net` into NAME's namespace. Not `ip netns exec`: it remounts /sys, which hides
# the cgroup hierarchy, and dockerd then fails with "Devices cgroup isn't mounted".
in_netns() {
  local ns
  ns=$(netns_of "$1")
  shift
  as_root nsenter --net="/run/netns/$ns" "$@"
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

# Debian 13's docker.io, containerd and tini, downloaded through an apt configuration of our own
# (the machine's sources are left as they are) and unpacked; Debian 12's runc serves, since
# Debian 13's needs a newer glibc.
fetch_docker26() {
  local dir=$BASE/docker26 apt
  if [ -x "$dir/root/usr/sbin/dockerd" ]; then
    return
  fi
  need runc runc
  apt=$dir/apt
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dir/pkgs" "$dir/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=root")
  log "downloading Debian 13's docker.io, containerd and tini"
  apt-get "${opts[@]}" update -qq
  (cd "$dir/pkgs" && apt-get "${opts[@]}" download docker.io containerd tini >/dev/null)
  for deb in "$dir"/pkgs/*.deb; do
    dpkg -x "$deb" "$dir/root"
  done
  rm -f "$dir/root/usr/sbin/runc" "$dir/root/usr/bin/runc"
}

up_docker26() {
  local dir=$BASE/docker26
  if answers docker26; then
    return
  fi
  fetch_docker26
  ensure_netns docker26
  mkdir -p "$dir/data" "$dir/exec"
  # A configuration file of its own: the machine's /etc/docker/daemon.json would clash.
  echo '{}' >"$dir/daemon.json"
  make_socket_dir docker26
  log "starting Docker 26 (log: $dir/dockerd.log)"
  in_netns docker26 env "PATH=$dir/root/usr/bin:$dir/root/usr/sbin:$PATH" \
    setsid "$dir/root/usr/sbin/dockerd" \
    --config-file "$dir/daemon.json" \
    --data-root "$dir/data" \
    --exec-root "$dir/exec" \
    --pidfile "$dir/dockerd.pid" \
    -H "unix://$(socket_of docker26)" \
    --storage-driver=vfs \
    --iptables=false \
    --ip6tables=false \
    >"$dir/dockerd.log" 2>&1 </dev/null &
  wait_answer docker26 "$dir/dockerd.log"
}

up_podman() {
  local dir=$BASE/podman
  if answers podman; then
    return
  fi
  need podman podman
  need netavark netavark
  need runc runc
  ensure_netns podman
  make_socket_dir podman
  # Podman refuses a run root longer than 50 characters, which a folder under target/ may be
  # wherever the repository is cloned: it goes beside the socket. Its data root remembers the run
  # root it was made with and refuses another, so a data root made with another one (an older
  # layout, or a clone that moved) is emptied first; the tests build their image again.
  local run=$SOCKETS/podman/run
  if [ -d "$dir/root" ] && [ "$(cat "$dir/runroot" 2>/dev/null)" != "$run" ]; then
    log "emptying Podman's data root, made with another run root"
    as_root rm -rf "$dir/root"
  fi
  mkdir -p "$dir/root" "$dir/tmp"
  echo "$run" >"$dir/runroot"
  # Debian 12's crun refuses this host's hybrid cgroups, so runc runs containers; events go to a
  # file (there is no journal to read them from); ulimits stay below the sandbox's hard limits,
  # which runc cannot raise without CAP_SYS_RESOURCE.
  cat >"$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "$dir/tmp"
EOF
  log "starting Podman (log: $dir/podman.log)"
  # The shell writes its own pid, then becomes podman: the pid file names podman itself. It runs
  # in its own folder: conmon writes a file named `oom` into its working directory when a
  # container is killed for memory, which would otherwise land in the checkout.
  (cd "$dir" && in_netns podman env "CONTAINERS_CONF=$dir/containers.conf" \
    setsid sh -c 'echo $$ >"$0"; exec "$@"' "$dir/podman.pid" \
    podman --root "$dir/root" --runroot "$run" --storage-driver vfs \
    system service --time=0 "unix://$(socket_of podman)") \
    >"$dir/podman.log" 2>&1 </dev/null &
  wait_answer podman "$dir/podman.log"
  # As Docker's socket: the docker group may use it, so that a test can run the agent as an
  # unprivileged user in that group, as its systemd unit runs it.
  if getent group docker >/dev/null; then
    as_root chgrp docker "$(socket_of podman)"
    as_root chmod 0660 "$(socket_of podman)"
  fi
}

pid_file_of() {
  case $1 in
    docker26) echo "$BASE/docker26/dockerd.pid" ;;
    podman) echo "$BASE/podman/podman.pid" ;;
  esac
}

pid_of() {
  cat "$(pid_file_of "$1")" 2>/dev/null || true
}

# Whether `pid` is alive and is `command` (a pid file may outlive its process, and the pid be
# reused by another).
is_ours() {
  local pid=$1 command=$2
  [ -n "$pid" ] && as_root kill -0 "$pid" 2>/dev/null &&
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$command" ]
}

down_one() {
  local name=$1 pid command
  pid=$(pid_of "$name")
  case $name in docker26) command=dockerd ;; *) command=podman ;; esac
  if is_ours "$pid" "$command"; then
    log "stopping $name (pid $pid)"
    as_root kill -TERM "$pid"
    for _ in $(seq 1 30); do
      is_ours "$pid" "$command" || break
      sleep 1
    done
    if is_ours "$pid" "$command"; then as_root kill -KILL "$pid"; fi
  fi
  as_root rm -rf "$SOCKETS/$name"
  as_root rmdir "$SOCKETS" /run/node-agent-tests 2>/dev/null || true
  rm -f "$(pid_file_of "$name")"
  remove_netns "$name"
}

names() {
  if [ $# -eq 0 ]; then printf '%s\n' "${ALL[@]}"; else printf '%s\n' "$@"; fi
}

command=${1:-}
shift || true
# Engine names become paths (and folders removed by `down`): only the known ones are taken.
for name in "$@"; do
  case $name in
    docker26 | podman) ;;
    *) echo "no engine named $name (docker26 or podman)" >&2; exit 2 ;;
  esac
done
case $command in
  up)
    need curl curl
    need nsenter util-linux
    mkdir -p "$BASE"
    for name in $(names "$@"); do
      "up_$name"
      echo "$name=unix://$(socket_of "$name")"
    done
    ;;
  down)
    for name in $(names "$@"); do down_one "$name"; done
    ;;
  socket)
    [ $# -eq 1 ] || { echo "usage: $0 socket NAME" >&2; exit 2; }
    echo "unix://$(socket_of "$1")"
    ;;
  test)
    mapfile -t chosen < <(names "$@")
    trap '"$0" down "${chosen[@]}"' EXIT
    "$0" up "${chosen[@]}" >/dev/null
    failed=()
    # Every engine is tested, whichever fails; the run fails at the end naming them.
    for name in "${chosen[@]}"; do
      log "engine-facing tests against $name"
      env "${SHORT_ENV[@]}" DOCKER_HOST="unix://$(socket_of "$name")" \
        cargo test --locked --test it -- "${ENGINE_TESTS[@]}" ||
        failed+=("$name")
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "engine-facing tests failed on: ${failed[*]}" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 up|down|test [docker26|podman]... | socket NAME" >&2
    exit 2
    ;;
esac
