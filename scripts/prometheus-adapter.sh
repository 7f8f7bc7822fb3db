#!/usr/bin/env bash
# prometheus-adapter for the cluster tests: the custom (and resource) metrics API server the HPA
# controller reads, built from its Go module (tests/adapter/: sigs.k8s.io/prometheus-adapter,
# pinned) like the control plane. No Docker, no downloaded binary.
#
#   scripts/prometheus-adapter.sh build   build the binary once into the cache (~/.cache/agentops, keyed by version)
#   scripts/prometheus-adapter.sh bin     print the path of the binary (builds if missing)
#   scripts/prometheus-adapter.sh built   exit 0 when the binary is in the cache, 1 when not
#
# The tests run it themselves (tests/support/adapter.py): certificates, RBAC and the APIServices
# depend on the control plane they run against.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE="$ROOT/tests/adapter"
PACKAGE=sigs.k8s.io/prometheus-adapter

log() { echo "prometheus-adapter: $*" >&2; }
die() { log "$*"; exit 1; }

adapter_version() {
    awk -v pkg="$PACKAGE" '$1 == pkg {print $2; exit}' "$MODULE/go.mod"
}

# The cache key: the pinned version plus a digest of the module's files and the build flags, so a
# change of any pin builds into a new folder and a stale binary is never reused. A folder of its
# own, beside the control plane's (whose key does not change with this module).
LDFLAGS="-s -w"

cache_dir() {
    local digest
    digest=$( (cat "$MODULE/go.mod" "$MODULE/go.sum"; echo "$LDFLAGS") | sha256sum | cut -c1-12)
    echo "${CONTROLPLANE_TOOLS:-${AGENTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentops}}/prometheus-adapter/$(adapter_version)-${digest}"
}

built() {
    [ -x "$(cache_dir)/adapter" ]
}

cmd_build() {
    local dir
    dir=$(cache_dir)
    if built; then
        return 0
    fi
    command -v go >/dev/null || die "Go is required to build prometheus-adapter (go 1.25 or newer)"
    log "building $PACKAGE $(adapter_version) into $dir (about 6 minutes on 2 cores, once)"
    local started tmp
    started=$(date +%s)
    tmp="$dir.partial.$$"
    mkdir -p "$tmp"
    # The module names the adapter's command as a `tool`, so go.sum pins its whole build list;
    # GOFLAGS=-mod=mod lets the module proxy serve exactly that.
    (cd "$MODULE" && GOFLAGS=-mod=mod go build -trimpath -ldflags="$LDFLAGS" -o "$tmp/adapter" \
        "$PACKAGE/cmd/adapter") || { rm -rf "$tmp"; die "the build failed (see above)"; }
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "built in $(( $(date +%s) - started )) s"
}

case "${1:-}" in
    build) cmd_build ;;
    bin) cmd_build; echo "$(cache_dir)/adapter" ;;
    built) built ;;
    *) echo "usage: $0 build | bin | built" >&2; exit 2 ;;
esac
