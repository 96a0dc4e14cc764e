#!/usr/bin/env bash
# Redis, PostgreSQL 15 and HAProxy from Debian for the shared-state tests ([state], tests/state).
# Idempotent; quick when already installed. Nothing is started: each test starts its own
# instance on 127.0.0.1 (reference: state-engines-on-this-machine.md).
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# the packages may start their services on install where an init system exists: tests need none
