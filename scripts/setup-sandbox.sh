#!/usr/bin/env bash
# Set up the sandbox tiers on a fresh Debian 12 machine (root, no systemd):
#   1. Debian packages: bubblewrap, docker.io (+containerd, runc), runsc (gVisor), libseccomp2 (the
#      bwrap tier's filter, built with pyseccomp)
#   2. runsc registered as a Docker runtime ("--network=none": this runsc cannot set up
#      sandbox networking in the root netns on this kernel), through scripts/symbi-runsc,
#      which runs it in a network namespace of its own (its control sockets out of the host's)
#   3. dockerd started in the background when not running (`service docker start` fails here)
#   4. the base image imported with NO registry pull: a symlink skeleton whose /usr comes
#      from the host, bind-mounted read-only at run time
# Idempotent and quick (< 1 s) when everything is already done.
# Env: SYMBI_SANDBOX_IMAGE (default symbi-sandbox:latest), SYMBI_DOCKERD_LOG (default /var/log/symbi-dockerd.log)
set -euo pipefail

IMAGE="${SYMBI_SANDBOX_IMAGE:-symbi-sandbox:latest}"
DOCKERD_LOG="${SYMBI_DOCKERD_LOG:-/var/log/symbi-dockerd.log}"
DAEMON_JSON=/etc/docker/daemon.json
# strace: the audit durability test counts the fsyncs of acknowledged commits with it
PKGS=(bubblewrap docker.io runsc libseccomp2 strace iptables iproute2 util-linux)  # the last three: the egress-only namespace of sandboxed servers with network

log() { echo "setup-sandbox: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "not root: cannot install packages or start dockerd; tiers that are missing will report unavailable"
  exit 0
fi

# 1. packages (only when one is missing: apt-get update costs seconds)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. runsc as a Docker runtime, through the wrapper (root-owned, 0755: dockerd runs it as
#    root), merged into an existing daemon.json keeping other keys
RUNSC_WRAPPER=/usr/local/libexec/symbi-runsc
if ! cmp -s "$(dirname "$0")/symbi-runsc" "$RUNSC_WRAPPER"; then
  install -D -o root -g root -m 0755 "$(dirname "$0")/symbi-runsc" "$RUNSC_WRAPPER"
fi
"$RUNSC_WRAPPER" --ensure-netns
mkdir -p /etc/docker
changed=$(/usr/bin/python3 - "$DAEMON_JSON" "$RUNSC_WRAPPER" <<'EOF'
import json, os, sys
path = sys.argv[1]
try:
    with open(path) as f:
        cfg = json.load(f)
except FileNotFoundError:
    cfg = {}
want = {"path": sys.argv[2], "runtimeArgs": ["--network=none"]}
if cfg.get("runtimes", {}).get("runsc") == want:
    print("no")
else:
    cfg.setdefault("runtimes", {})["runsc"] = want
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, path)
    print("yes")
EOF
)

# 3. dockerd
docker_ok() { docker info >/dev/null 2>&1; }
dockerd_pid() { pgrep -x dockerd | head -1 || true; }
if [ "$changed" = "yes" ] && [ -n "$(dockerd_pid)" ]; then
  # a running daemon must reload runtimes: SIGHUP reloads daemon.json's runtimes
  log "reloading dockerd (runsc runtime registered)"
  kill -HUP "$(dockerd_pid)"
  sleep 0.5
fi
if ! docker_ok; then
  if [ -z "$(dockerd_pid)" ]; then
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid + nohup: the daemon outlives this script and the make/pytest that called it
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 240); do docker_ok && break; sleep 0.25; done
  docker_ok || { log "dockerd did not become ready (see $DOCKERD_LOG)"; exit 1; }
fi
if ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q runsc; then
  log "dockerd does not list the runsc runtime after reload"
  exit 1
fi

# 4. base image without a registry pull
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "importing $IMAGE"
  R=$(mktemp -d)
  trap 'rm -rf "$R"' EXIT
  mkdir -p "$R"/{tmp,etc,proc,sys,dev,usr}
  for d in bin lib lib64 sbin; do ln -s "usr/$d" "$R/$d"; done
  echo 'root:x:0:0:root:/root:/usr/sbin/nologin' >"$R/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >>"$R/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
  chmod 1777 "$R/tmp"
  tar -C "$R" --numeric-owner --owner=0 --group=0 -c . \
    | docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'USER 65534:65534' - "$IMAGE" >/dev/null
fi
log "ready: bwrap $(bwrap --version | awk '{print $2}'), runsc $(runsc --version 2>/dev/null | head -1 | awk '{print $3}'), image $IMAGE"
