#!/usr/bin/env bash
# The bundled image, built from the repository's Dockerfile with buildah (no Docker engine), once
# per digest of its inputs, and exported as OCI archives (for containerd, `kind load
# image-archive`, `podman load`).
#
#   scripts/image.sh build    build both images into the cache unless they are there
#   scripts/image.sh dir      print the cache folder of the current inputs (builds if missing)
#   scripts/image.sh built    exit 0 when the images of the current inputs are in the cache, 1 when not
#   scripts/image.sh load     put both images into the local container storage (podman, buildah),
#                             from the cache's archives when the storage lacks them (their IDs
#                             are in the folder's build.env; tests run them by ID)
#
# Two images, as scripts/e2e-kind.sh uses them:
#   agentops/agent-runtime:<version>      the Dockerfile as users build it (operator, api, worker)
#   agentops/agent-runtime-dev:<version>  the same with --build-arg DEV_PACKAGE=./dev (localmodel)
#
# The base. The Dockerfile's default base is the official Python image pinned by digest, and it
# stays the default. A machine that reaches no container registry (this repository's CI) passes
# IMAGE_BASE=debian (the default when no registry is configured, see below): the base is then a
# minimal Debian bookworm root filesystem with python3 made by mmdebstrap from Debian's packages,
# imported as a local image and given to the Dockerfile as PYTHON_IMAGE. It satisfies what the
# Dockerfile expects of a Python image: `python` on PATH (python-is-python3), `python -m venv`
# with pip (python3-venv), groupadd/useradd (passwd), CA certificates, netbase and tzdata, as the
# official slim image has them. Debian's python3 is 3.11, the Python minor version the suite runs.
#
# Trust. When the host's pip is told to trust a CA bundle (PIP_CERT, REQUESTS_CA_BUNDLE or
# SSL_CERT_FILE), the bundle is bind-mounted read-only over the base's
# /etc/ssl/certs/ca-certificates.crt during the RUN steps only (buildah --volume): the pip
# install of the build stage reaches the package index as the host does, and nothing of the
# host's trust is written into a layer.
#
# Environment (all optional):
#   IMAGE_BASE       debian (default) or official (the Dockerfile's own pinned base, needs a registry)
#   AGENTOPS_CACHE   the cache root (default ~/.cache/agentops); images under image/<digest>/
#   DEBIAN_MIRROR    the Debian mirror of the base (default: http://deb.debian.org/debian)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${AGENTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentops}/image
IMAGE_BASE=${IMAGE_BASE:-debian}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# What the Dockerfile needs of its base (see above); the official slim image also carries the last three.
BASE_PACKAGES=python3,python3-venv,python-is-python3,passwd,ca-certificates,netbase,tzdata

log() { echo "image: $*" >&2; }
die() { log "$*"; exit 1; }

version() {
    "$ROOT/.venv/bin/python" - "$ROOT/pyproject.toml" <<'PY' 2>/dev/null || sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1
import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])
PY
}

VERSION=$(version)
RUNTIME_NAME=agentops/agent-runtime:$VERSION
DEV_NAME=agentops/agent-runtime-dev:$VERSION
# Local container storage prefixes unqualified names with localhost/; containerd and kind with
# docker.io/ (the name the chart and the operator's default image resolve to on a node).
QUALIFIED_RUNTIME=docker.io/$RUNTIME_NAME
QUALIFIED_DEV=docker.io/$DEV_NAME

base_key() {
    (echo "$SUITE $BASE_PACKAGES $DEBIAN_MIRROR"; declare -f make_base) | sha256sum | cut -c1-12
}

# Every file the Dockerfile's COPY steps read (the build context minus .dockerignore), by content,
# plus how this script builds and the base: a change of any of them builds into a new folder.
inputs_key() {
    (
        cd "$ROOT"
        git ls-files -z --cached --others --exclude-standard -- Dockerfile .dockerignore pyproject.toml README.md \
            constraints.txt operator agent_runtime dev | sort -z | xargs -0 sha256sum
        declare -f cmd_build host_ca_bundle
        echo "$RUNTIME_NAME $DEV_NAME $QUALIFIED_RUNTIME $QUALIFIED_DEV"
        echo "base=$IMAGE_BASE"
        [ "$IMAGE_BASE" = official ] || echo "debian-base=$(base_key)"
    ) | sha256sum | cut -c1-16
}

cache_dir() { echo "$CACHE/$(inputs_key)"; }

built() {
    local dir
    dir=$(cache_dir)
    [ -s "$dir/agent-runtime.oci.tar" ] && [ -s "$dir/agent-runtime-dev.oci.tar" ] && [ -s "$dir/build.env" ]
}

# The Debian root filesystem: minbase (Essential and Priority:required packages, apt) plus the
# base packages, with the security and point-release updates; documentation and translations left
# out as the official slim image does.
make_base() {
    local tar=$1
    mmdebstrap --variant=minbase --format=tar --include="$BASE_PACKAGES" \
        --aptopt='Acquire::Retries "3"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$SUITE" "$tar" \
        "deb $DEBIAN_MIRROR $SUITE main" \
        "deb $DEBIAN_MIRROR $SUITE-updates main" \
        "deb ${DEBIAN_MIRROR%/debian}/debian-security $SUITE-security main"
}

# The base as a local image; prints its name. The tarball is cached by the key of its recipe,
# the image is re-imported from it when the container storage lacks it.
debian_base() {
    local key dir name
    key=$(base_key)
    dir="$CACHE/base-$SUITE-$key"
    name="localhost/agentops/python-base:$SUITE-$key"
    if [ ! -s "$dir/rootfs.tar" ]; then
        command -v mmdebstrap >/dev/null || die "mmdebstrap is required to make the Debian base (apt-get install mmdebstrap)"
        log "making the Debian $SUITE base with python3 (mmdebstrap, once)"
        mkdir -p "$dir"
        local started=$SECONDS
        make_base "$dir/partial.tar" >"$dir/mmdebstrap.log" 2>&1 ||
            { tail -20 "$dir/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $dir/mmdebstrap.log)"; }
        mv "$dir/partial.tar" "$dir/rootfs.tar"
        echo "BASE_SECONDS=$((SECONDS - started))" >"$dir/base.env"
    fi
    if ! podman image exists "$name"; then
        podman import --quiet --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV=LANG=C.UTF-8' --change 'CMD=["python3"]' "$dir/rootfs.tar" "$name" >/dev/null
    fi
    echo "$name"
}

# The host's CA bundle, when its pip is told to trust one (see "Trust" above).
host_ca_bundle() {
    local candidate
    for candidate in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}"; do
        if [ -n "$candidate" ] && [ -f "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
}

cmd_build() {
    built && return 0
    local dir tmp started base_args=() volume=() ca
    dir=$(cache_dir)
    command -v buildah >/dev/null || die "buildah is required (apt-get install buildah)"
    started=$SECONDS
    if [ "$IMAGE_BASE" = debian ]; then
        local base
        base=$(debian_base)
        base_args=(--build-arg "PYTHON_IMAGE=$base")
    elif [ "$IMAGE_BASE" != official ]; then
        die "IMAGE_BASE=$IMAGE_BASE: debian or official"
    fi
    local base_seconds=$((SECONDS - started))
    ca=$(host_ca_bundle)
    [ -z "$ca" ] || volume=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
    tmp="$dir.partial.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # --network host: the build's pip reaches the package index the way the host does (no CNI
    # bridge, no netfilter rules). --layers: the dev image reuses every step before its pip install.
    # --runtime runc: buildah prefers crun when it is installed, and crun refuses a hybrid cgroup
    # layout (v1 controllers with a v2 hierarchy beside them), which runc runs on.
    local bud=(buildah bud --runtime runc --network host --layers "${base_args[@]}" "${volume[@]}" --file "$ROOT/Dockerfile")
    log "building $RUNTIME_NAME from the Dockerfile (base: $IMAGE_BASE)"
    local t0=$SECONDS
    nice -n 10 "${bud[@]}" --tag "$RUNTIME_NAME" "$ROOT" >"$tmp/build.log" 2>&1 ||
        { tail -30 "$tmp/build.log" >&2; die "the build failed (log: $tmp/build.log)"; }
    local runtime_seconds=$((SECONDS - t0))
    log "building $DEV_NAME (with the development package, for the local model)"
    t0=$SECONDS
    nice -n 10 "${bud[@]}" --build-arg DEV_PACKAGE=./dev --tag "$DEV_NAME" "$ROOT" >"$tmp/build-dev.log" 2>&1 ||
        { tail -30 "$tmp/build-dev.log" >&2; die "the dev build failed (log: $tmp/build-dev.log)"; }
    local dev_seconds=$((SECONDS - t0))
    buildah push --quiet "$RUNTIME_NAME" "oci-archive:$tmp/agent-runtime.oci.tar:$QUALIFIED_RUNTIME"
    buildah push --quiet "$DEV_NAME" "oci-archive:$tmp/agent-runtime-dev.oci.tar:$QUALIFIED_DEV"
    {
        echo "RUNTIME_IMAGE=$RUNTIME_NAME"
        echo "DEV_IMAGE=$DEV_NAME"
        echo "RUNTIME_ID=$(buildah images --noheading --no-trunc --format '{{.ID}}' "$RUNTIME_NAME")"
        echo "DEV_ID=$(buildah images --noheading --no-trunc --format '{{.ID}}' "$DEV_NAME")"
        echo "IMAGE_BASE=$IMAGE_BASE"
        echo "BASE_SECONDS=$base_seconds"
        echo "RUNTIME_SECONDS=$runtime_seconds"
        echo "DEV_SECONDS=$dev_seconds"
    } >"$tmp/build.env"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "built in $((SECONDS - started)) s into $dir"
}

# Both images in the local storage under their names, as the cache's archives hold them.
cmd_load() {
    cmd_build
    local dir
    dir=$(cache_dir)
    # shellcheck source=/dev/null
    . "$dir/build.env"
    local name id image archive
    for name in RUNTIME DEV; do
        id=${name}_ID
        id=${!id#sha256:}
        image=${name}_IMAGE
        image=${!image}
        archive=$dir/agent-runtime.oci.tar
        [ "$name" = RUNTIME ] || archive=$dir/agent-runtime-dev.oci.tar
        # By ID: another checkout may have tagged a build of other inputs with the same name.
        podman image exists "$id" || podman load --quiet --input "$archive" >/dev/null
        podman tag "$id" "localhost/$image"
    done
}

case "${1:-}" in
    build) cmd_build ;;
    dir) cmd_build; cache_dir ;;
    built) built ;;
    load) cmd_load ;;
    *) echo "usage: $0 build | dir | built | load" >&2; exit 2 ;;
esac
