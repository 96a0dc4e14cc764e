#!/usr/bin/env bash
# Build the gateway image (deploy/Dockerfile) with NO registry pull: its base is the local
# symbi-sandbox:latest that scripts/setup-sandbox.sh `docker import`s (an empty root whose
# /bin, /lib, /lib64 link into /usr). Everything the gateway needs is staged here, on the host:
#   root/usr/bin/python3.11, root/usr/lib/python3.11   Debian's interpreter and its stdlib
#   root/usr/lib/x86_64-linux-gnu/...                   the shared libraries they and the
#                                                       installed extension modules load (ldd)
#   root/opt/symbi                                      a venv with the gateway installed by pip
#                                                       (from PyPI on the host; the build
#                                                       container needs no network)
#   root/etc/symbi/symbi.toml                           deploy/team.toml
#   root/etc/ssl/certs/ca-certificates.crt              the host's public CA bundle
# then `docker build` COPYs the stage. No keys, no data dir, no pip in the image.
#
# Usage: scripts/build-image.sh [TAG]   (default symbi-gateway:latest; `make image`)
# The venv of the dependencies is cached by the hash of pyproject.toml (+ the interpreter's
# version) in $SYMBI_IMAGE_CACHE (default ~/.cache/symbi/image-deps): a re-run
# installs only the gateway itself. Env: SYMBI_IMAGE_STAGE (default build/image),
# SYMBI_IMAGE_PYTHON (default /usr/bin/python3.11), SYMBI_SANDBOX_IMAGE (the base).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${1:-symbi-gateway:latest}"
BASE="${SYMBI_SANDBOX_IMAGE:-symbi-sandbox:latest}"
PY="${SYMBI_IMAGE_PYTHON:-/usr/bin/python3.11}"
STAGE="${SYMBI_IMAGE_STAGE:-$ROOT/build/image}"
CACHE_ROOT="${SYMBI_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/symbi/image-deps}"
VENV=/opt/symbi   # the venv's path in the image
ARCH_LIB=/usr/lib/x86_64-linux-gnu

log() { echo "build-image: [${SECONDS}s] $*" >&2; }
die() { log "$*"; exit 1; }

docker image inspect "$BASE" >/dev/null 2>&1 || die "base image $BASE is missing: run \`make sandbox\` (scripts/setup-sandbox.sh imports it)"

# Debian's python3.11 with ensurepip (python3.11-venv) builds the venv
if ! [ -x "$PY" ] || ! "$PY" -c "import ensurepip, venv" 2>/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "$PY with ensurepip is missing: apt-get install python3.11 python3.11-venv"
  log "installing python3.11 python3.11-venv"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv >/dev/null
fi

mkdir -p "$STAGE" "$CACHE_ROOT"
# one build at a time per stage (and per cache): parallel test workers share them
exec 9>"$STAGE.lock"
flock 9

# --- 1. the dependencies' venv, cached by what decides its content ----------------------
RECIPE=1   # bump when this step changes what it installs
key=$( { cat "$ROOT/pyproject.toml"; echo "$RECIPE"; "$PY" -VV; } | sha256sum | cut -c1-16)
DEPS="$CACHE_ROOT/$key"
exec 8>"$CACHE_ROOT/.lock"
flock 8
if ! [ -f "$DEPS/.complete" ]; then
  log "installing the dependencies into a new venv ($DEPS; once per pyproject.toml)"
  rm -rf "$DEPS"
  "$PY" -m venv "$DEPS$VENV"
  dpy="$DEPS$VENV/bin/python"
  "$dpy" -m pip install -q --disable-pip-version-check --no-compile 'setuptools>=68,<81'
  src=$(mktemp -d)
  cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$src/"
  mkdir -p "$src/gateway" "$src/schemapin"   # dependencies only: the gateway itself comes in step 2
  "$dpy" -m pip install -q --disable-pip-version-check --no-compile --no-build-isolation "$src"
  "$dpy" -m pip uninstall -q -y symbi-gateway
  rm -rf "$src"
  # byte-compile once, with the paths the image has (tracebacks name /opt/symbi/...); unchecked:
  # the image's files never change (read-only root)
  "$PY" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$DEPS" -p / "$DEPS$VENV/lib" >/dev/null
fi
touch "$DEPS/.complete" "$DEPS"   # last used: keep the three most recent venvs
ls -1dt "$CACHE_ROOT"/*/ | tail -n +4 | xargs -r rm -rf

log "staging $TAG"
# --- 2. the stage: the cached venv (hard links: nothing below rewrites a file in place) ----
R="$STAGE/root"
rm -rf "$R" "$STAGE/src" "$STAGE/data"
mkdir -p "$R/opt" "$R/usr/bin" "$R/usr/lib" "$R$ARCH_LIB" "$R/usr/lib64" "$R/etc/symbi" "$STAGE/data"
cp -al "$DEPS$VENV" "$R$VENV" 2>/dev/null || cp -a "$DEPS$VENV" "$R$VENV"
flock -u 8
vpy="$R$VENV/bin/python"

# the gateway from this tree (a copy: an in-tree build would leave build/ behind)
mkdir -p "$STAGE/src"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$STAGE/src/"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' -cf - gateway schemapin | tar -C "$STAGE/src" -xf -
"$vpy" -m pip install -q --disable-pip-version-check --no-compile --no-deps --no-build-isolation --no-index "$STAGE/src"
site="$R$VENV/lib/python3.11/site-packages"
# the default policy is policies.rego beside the package (gateway/policy/loader.py repo_policy_path)
cp "$ROOT/policies.rego" "$site/"
cp -r "$ROOT/policies" "$site/policies"
"$PY" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$R" -p / \
  "$site/gateway" "$site/schemapin" >/dev/null
# no installer in the image; entry points say /opt/symbi/bin/python, not the stage's path
"$vpy" -m pip uninstall -q -y setuptools pip
rm -f "$R$VENV"/bin/activate* "$R$VENV"/bin/pip*
for f in "$R$VENV"/bin/*; do
  [ -f "$f" ] && ! [ -L "$f" ] || continue
  if head -c 2 "$f" | grep -q '#!'; then sed -i "1s|^#!.*/bin/python[0-9.]*$|#!$VENV/bin/python|" "$f"; fi
done
sed -i '/^command *=/d' "$R$VENV/pyvenv.cfg"
cp "$ROOT/scripts/healthcheck.py" "$R$VENV/healthcheck.py"

# --- 3. the interpreter, its stdlib (no tests, tk, idle, static lib) -----------------------
cp -L "$PY" "$R/usr/bin/python3.11"
ln -s python3.11 "$R/usr/bin/python3"
tar -C /usr/lib --exclude=python3.11/test --exclude=python3.11/idlelib --exclude=python3.11/tkinter \
  --exclude=python3.11/turtledemo --exclude=python3.11/lib2to3 --exclude=python3.11/ensurepip \
  --exclude='python3.11/config-3.11-*' --exclude=python3.11/sitecustomize.py \
  --exclude=python3.11/EXTERNALLY-MANAGED -cf - python3.11 | tar -C "$R/usr/lib" -xf -

# --- 4. the shared libraries all of it loads, as the loader resolves them on this host ------
mapfile -t objs < <(
  echo "$PY"
  find "$R/usr/lib/python3.11/lib-dynload" "$site" -type f \( -name '*.so' -o -name '*.so.*' \)
)
log "resolving the shared libraries of ${#objs[@]} objects"
deps=$(for o in "${objs[@]}"; do ldd "$o" 2>/dev/null | sed "s|^|$o: |" || true; done)
libs=$(awk '$3 == "=>" && $4 ~ /^\// {print $4} $2 ~ /^\// {print $2}' <<<"$deps" | sort -u)
missing=$(grep -F 'not found' <<<"$deps" || true)
[ -z "$missing" ] || die "unresolved shared libraries:
$missing"
# glibc dlopens libgcc_s for thread cancellation/unwinding: ldd does not list it
# (awk reads to the end: an early exit SIGPIPEs ldconfig, and pipefail + set -e end the script)
libs+=$'\n'$(ldconfig -p | awk '$1 == "libgcc_s.so.1" && /x86-64/ && !found {print $NF; found = 1}')
while read -r lib; do
  [ -n "$lib" ] || continue
  case "$lib" in "$R"/* | "$DEPS"/*) continue ;; esac   # bundled in a wheel (its .libs)
  name=$(basename "$lib")
  case "$(dirname "$(readlink -f "$lib")")" in
    /lib/x86_64-linux-gnu | /usr/lib/x86_64-linux-gnu | /lib64 | /usr/lib64) dest="$R$ARCH_LIB/$name" ;;
    *) dest="$R$lib"; mkdir -p "$(dirname "$dest")" ;;
  esac
  cp -L "$lib" "$dest"
done <<<"$libs"
[ -f "$R$ARCH_LIB/ld-linux-x86-64.so.2" ] || die "the dynamic loader was not found by ldd"
ln -sf ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/usr/lib64/ld-linux-x86-64.so.2"

# --- 5. users, name service, the config -------------------------------------------------
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
symbi:x:10001:10001:symbi:/var/lib/symbi:/usr/sbin/nologin
EOF
printf 'root:x:0:\nnogroup:x:65534:\nsymbi:x:10001:\n' >"$R/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$R/etc/nsswitch.conf"
cp "$ROOT/deploy/team.toml" "$R/etc/symbi/symbi.toml"
# the public CA bundle (Debian ca-certificates; $SSL_CERT_FILE in the Dockerfile): rediss://,
# PostgreSQL verify-full and HTTPS upstreams verify against it
CA=/etc/ssl/certs/ca-certificates.crt
[ -s "$CA" ] || die "$CA is missing: apt-get install ca-certificates"
mkdir -p "$R/etc/ssl/certs"
cp -L "$CA" "$R$CA"
cp "$ROOT/deploy/Dockerfile" "$STAGE/Dockerfile"

# --- 6. the image ------------------------------------------------------------------------
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
log "docker build $TAG (stage $(du -sh "$R" | cut -f1), base $BASE, revision $rev)"
docker build -q --label "org.opencontainers.image.revision=$rev" -t "$TAG" "$STAGE" >/dev/null
log "built $TAG: $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
