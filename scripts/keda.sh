#!/usr/bin/env bash
# KEDA for the cluster tests: its operator (the ScaledObject controller, which runs the scalers and
# scales to and from zero) and its metrics server (the external metrics API the HPA controller
# reads), built from their Go module (tests/keda/: github.com/kedacore/keda/v2, pinned) like the
# control plane and prometheus-adapter. No Docker, no downloaded binary.
#
#   scripts/keda.sh build   build both binaries once into the cache (~/.cache/agentops, keyed by version)
#   scripts/keda.sh dir     print the folder holding `keda-operator` and `keda-adapter` (builds if missing)
#   scripts/keda.sh built   exit 0 when both binaries are in the cache, 1 when not
#
# The tests run them themselves (tests/support/keda.py): certificates, RBAC and the APIService
# depend on the control plane they run against.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE="$ROOT/tests/keda"
PACKAGE=github.com/kedacore/keda/v2

log() { echo "keda: $*" >&2; }
die() { log "$*"; exit 1; }

keda_version() {
    awk -v pkg="$PACKAGE" '$1 == pkg {print $2; exit}' "$MODULE/go.mod"
}

# The cache key: the pinned version plus a digest of the module's files and the build flags, so a
# change of any pin builds into a new folder and a stale binary is never reused.
# Not -trimpath (unlike the control plane's and the adapter's builds): KEDA shares no package
# version with them, and this way a build of the same module elsewhere on the machine (a probe,
# another checkout) leaves its compiled packages in the Go build cache for this one.
LDFLAGS="-s -w -X $PACKAGE/version.Version=$(keda_version)"

cache_dir() {
    local digest
    digest=$( (cat "$MODULE/go.mod" "$MODULE/go.sum"; echo "$LDFLAGS") | sha256sum | cut -c1-12)
    echo "${CONTROLPLANE_TOOLS:-${AGENTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentops}}/keda/$(keda_version)-${digest}"
}

built() {
    local dir
    dir=$(cache_dir)
    [ -x "$dir/keda-operator" ] && [ -x "$dir/keda-adapter" ]
}

cmd_build() {
    local dir
    dir=$(cache_dir)
    if built; then
        return 0
    fi
    command -v go >/dev/null || die "Go is required to build KEDA (go 1.26 or newer)"
    log "building $PACKAGE $(keda_version) (operator and metrics server) into $dir (about 15 minutes on 2 idle cores, 24 of CPU, once)"
    local started tmp
    started=$(date +%s)
    tmp="$dir.partial.$$"
    mkdir -p "$tmp"
    # The module names both commands as `tool`s, so go.sum pins their whole build list;
    # GOFLAGS=-mod=mod lets the module proxy serve exactly that.
    (cd "$MODULE" && GOFLAGS=-mod=mod go build -ldflags="$LDFLAGS" -o "$tmp/keda-operator" "$PACKAGE/cmd/operator" &&
        GOFLAGS=-mod=mod go build -ldflags="$LDFLAGS" -o "$tmp/keda-adapter" "$PACKAGE/cmd/adapter") ||
        { rm -rf "$tmp"; die "the build failed (see above)"; }
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "built in $(( $(date +%s) - started )) s"
}

case "${1:-}" in
    build) cmd_build ;;
    dir) cmd_build; cache_dir ;;
    built) built ;;
    *) echo "usage: $0 build | dir | built" >&2; exit 2 ;;
esac
