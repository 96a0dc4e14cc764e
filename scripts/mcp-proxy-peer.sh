#!/usr/bin/env bash
# Create the venv of mcp-proxy (PyPI mcp-proxy, sparfenyuk's stdio <-> streamable HTTP bridge),
# the HTTP benchmark's peer (bench/http_load.py). Its OWN virtualenv: it pins its own MCP SDK,
# which must never replace the gateway's in .venv.
# Usage: scripts/mcp-proxy-peer.sh [VENV_DIR]   (default <repo>/.venv-mcp-proxy)
# Exit 0 when ready; non-zero when the venv cannot be made (e.g. PyPI unreachable).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${MCP_PROXY_VENV:-$here/.venv-mcp-proxy}}"
py="${PYTHON:-python3}"
exec 9<"${BASH_SOURCE[0]}"
flock 9
# A marker written last, so a half-made venv is never taken for a ready one.
if [ -f "$venv/.mcp-proxy-ready" ]; then
    echo "mcp-proxy venv ready: $venv"
    exit 0
fi
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q 'mcp-proxy==0.13.0'
"$venv/bin/mcp-proxy" --help >/dev/null
printf "*\n" > "$venv/.gitignore"
touch "$venv/.mcp-proxy-ready"
echo "mcp-proxy venv ready: $venv"
