#!/usr/bin/env bash
# Create the venv of mcp-proxy (PyPI mcp-proxy, sparfenyuk's stdio <-> streamable HTTP bridge),
# the HTTP benchmark's peer (bench/http_load.py). Its OWN virtualenv: it pins its own MCP SDK,
# which must never replace the gateway's in .venv.
# Usage: scripts/mcp-proxy-peer.sh [VENV_DIR]   (default <repo>/.venv-mcp-proxy)
# Exit 0 when ready; non-zero when the venv cannot be made (e.g. PyPI unreachable).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${MCP_PROXY_VENV:-$here/.venv-mcp-proxy}}"
# shellcheck source=scripts/_side_venv.sh
. "$here/scripts/_side_venv.sh"
exec 9<"${BASH_SOURCE[0]}"
flock 9
side_venv "$venv" .mcp-proxy-ready mcp-proxy 'mcp-proxy==0.13.0' "$venv/bin/mcp-proxy" --help
