#!/usr/bin/env bash
# The unprivileged account unsandboxed stdio upstream servers run as (security.upstream_user,
# default symbi-upstream; see gateway/upstream/runas.py), and what it needs to start the
# example and test servers of this checkout:
#   1. the system user (no login shell, private home under /var/lib); the gateway would also
#      create it on first use
#   2. if the venv's interpreter lives in a private folder (pyenv under /root, say), traverse-only
#      (x) ACL entries for that one user on the folders in the way (package `acl`), never o+x
# Idempotent. Usage: setup-upstream-user.sh [PYTHON] [USER]
set -euo pipefail

PY="${1:-.venv/bin/python}"
USER_NAME="${2:-symbi-upstream}"
log() { echo "setup-upstream-user: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "not root: upstream servers need a sandbox tier or security.unsafe_upstreams_as_gateway_user"
  exit 0
fi
if ! id "$USER_NAME" >/dev/null 2>&1; then
  useradd --system --user-group --home-dir "/var/lib/$USER_NAME" --create-home --shell /usr/sbin/nologin "$USER_NAME"
  chmod 700 "/var/lib/$USER_NAME"
  log "created $USER_NAME"
fi
[ -e "$PY" ] || exit 0
real=$(readlink -f "$PY")
uid=$(id -u "$USER_NAME"); gid=$(id -g "$USER_NAME")
as_user() { setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"; }
as_user test -x "$real" && exit 0
command -v setfacl >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq acl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq acl >/dev/null; }
}
# top-down: grant only on the folders that really stop the user (the first one hides the rest)
path=""
IFS=/ read -ra parts <<< "${real#/}"
for part in "${parts[@]:0:${#parts[@]}-1}"; do
  path="$path/$part"
  if ! as_user test -x "$path"; then
    setfacl -m "u:$USER_NAME:x" "$path"
    log "granted $USER_NAME traverse (x) on $path so it can run $real"
  fi
done
as_user test -x "$real" || { log "$USER_NAME still cannot run $real"; exit 1; }
