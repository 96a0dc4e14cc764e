# Sourced by scripts/schemapin-reference.sh and scripts/mcp-proxy-peer.sh: one pinned PyPI
# package in its OWN virtualenv (never in .venv), made once.
# side_venv VENV MARKER LABEL SPEC CHECK...: ready when VENV/MARKER exists; else VENV is made
# again from scratch, SPEC installed, CHECK (a command) run. Exit status non-zero when it cannot
# be made (e.g. PyPI unreachable). The caller holds a lock (flock) around it.
side_venv() {
    local venv=$1 marker=$2 label=$3 spec=$4
    shift 4
    # A marker written last, so a half-made venv is never taken for a ready one.
    if [ -f "$venv/$marker" ]; then
        echo "$label venv ready: $venv"
        return 0
    fi
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --disable-pip-version-check -q "$spec"
    "$@" >/dev/null
    printf "*\n" > "$venv/.gitignore"  # keep the venv out of git (as Python 3.13+ venvs do)
    touch "$venv/$marker"
    echo "$label venv ready: $venv"
}
