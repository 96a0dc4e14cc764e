#!/usr/bin/env bash
# Create the SchemaPin reference venv (PyPI schemapin==1.3.0), used only as a test oracle.
# It lives in its OWN virtualenv: the reference also imports as `schemapin`, pins its own
# cryptography/requests and installs a top-level `tools` package, so it must never go into .venv.
# Usage: scripts/schemapin-reference.sh [VENV_DIR]   (default <repo>/.venv-schemapin-ref)
# Exit 0 when ready; non-zero when the venv cannot be made (e.g. PyPI unreachable).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${SCHEMAPIN_REF_VENV:-$here/.venv-schemapin-ref}}"
# shellcheck source=scripts/_side_venv.sh
. "$here/scripts/_side_venv.sh"
# One maker at a time (pytest-xdist workers may all ask at once): a lock on this script.
exec 9<"${BASH_SOURCE[0]}"
flock 9
# -I: never our schemapin from the cwd
side_venv "$venv" .schemapin-ref-ready reference 'schemapin==1.3.0' \
    "$venv/bin/python" -I -c 'import schemapin.core, schemapin.skill, schemapin.verification'
