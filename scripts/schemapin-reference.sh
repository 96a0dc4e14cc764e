#!/usr/bin/env bash
# Create the SchemaPin reference venv (PyPI schemapin==1.3.0), used only as a test oracle.
# It lives in its OWN virtualenv: the reference also imports as `schemapin`, pins its own
# cryptography/requests and installs a top-level `tools` package, so it must never go into .venv.
# Usage: scripts/schemapin-reference.sh [VENV_DIR]   (default <repo>/.venv-schemapin-ref)
# Exit 0 when ready; non-zero when the venv cannot be made (e.g. PyPI unreachable).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${SCHEMAPIN_REF_VENV:-$here/.venv-schemapin-ref}}"
py="${PYTHON:-python3}"
# One maker at a time (pytest-xdist workers may all ask at once): a lock on this script.
exec 9<"${BASH_SOURCE[0]}"
flock 9
# A marker written last, so a half-made venv is never taken for a ready one.
if [ -f "$venv/.schemapin-ref-ready" ]; then
    echo "reference venv ready: $venv"
    exit 0
fi
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q 'schemapin==1.3.0'
"$venv/bin/python" -I -c 'import schemapin.core, schemapin.skill, schemapin.verification'  # -I: never our schemapin from the cwd
printf "*\n" > "$venv/.gitignore"  # keep the venv out of git (as Python 3.13+ venvs do)
touch "$venv/.schemapin-ref-ready"
echo "reference venv ready: $venv"
