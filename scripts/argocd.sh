#!/usr/bin/env bash
# Argo CD for the GitOps cluster tests: its application controller and its repo server, built from
# its Go module (tests/argocd/: github.com/argoproj/argo-cd/v3, pinned; one small main holding only
# those two commands) like the control plane. No Docker, no downloaded binary.
#
#   scripts/argocd.sh build        build the binary once into the cache (~/.cache/agentops, keyed by version)
#   scripts/argocd.sh dir          print the folder holding `argocd` (builds if missing)
#   scripts/argocd.sh built        exit 0 when the binary is in the cache, 1 when not
#   scripts/argocd.sh start DIR    run redis-server, the repo server and the application controller
#                                  against the cluster of $KUBECONFIG, in namespace $ARGOCD_NAMESPACE
#                                  (default argocd: it must hold argocd-cm, argocd-secret and the
#                                  AppProjects); logs, ports (DIR/env) and PIDs under DIR; returns
#                                  once both answer their health checks
#   scripts/argocd.sh stop DIR     end every process started in DIR, by its PID
#
# `dir` holds, besides `argocd` (run as `argocd argocd-application-controller ...` or
# `argocd argocd-repo-server ...`), Argo CD's own manifests of the same version: crds/ (Application,
# AppProject) and rbac/ (the application controller's ClusterRole and ClusterRoleBinding).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE="$ROOT/tests/argocd"
PACKAGE=github.com/argoproj/argo-cd/v3
START_TIMEOUT=${ARGOCD_START_TIMEOUT:-180}

log() { echo "argocd: $*" >&2; }
die() { log "$*"; exit 1; }

argocd_version() {
    awk -v pkg="$PACKAGE" '$1 == pkg {print $2; exit}' "$MODULE/go.mod" | head -1
}

LDFLAGS="-s -w -X $PACKAGE/common.version=$(argocd_version | sed s/^v//)"

cache_dir() {
    local digest
    digest=$( (cat "$MODULE/go.mod" "$MODULE/go.sum" "$MODULE/main.go"; echo "$LDFLAGS") | sha256sum | cut -c1-12)
    echo "${CONTROLPLANE_TOOLS:-${AGENTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentops}}/argocd/$(argocd_version)-${digest}"
}

built() {
    [ -x "$(cache_dir)/argocd" ] && [ -d "$(cache_dir)/crds" ] && [ -d "$(cache_dir)/rbac" ]
}

cmd_build() {
    local dir
    dir=$(cache_dir)
    if built; then
        return 0
    fi
    command -v go >/dev/null || die "Go is required to build Argo CD (go 1.25.5 or newer)"
    log "building $PACKAGE $(argocd_version) (application controller and repo server) into $dir (about 15 minutes on 2 idle cores, once)"
    local started tmp moddir
    started=$(date +%s)
    tmp="$dir.partial.$$"
    mkdir -p "$tmp"
    # GOFLAGS=-mod=mod lets the module proxy serve exactly what go.sum pins.
    (cd "$MODULE" && GOFLAGS=-mod=mod go build -ldflags="$LDFLAGS" -o "$tmp/argocd" .) ||
        { rm -rf "$tmp"; die "the build failed (see above)"; }
    # From the module itself, at the same version: the CRDs (Application, AppProject) and the
    # application controller's cluster RBAC (its ClusterRole and binding).
    moddir=$(cd "$MODULE" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "$PACKAGE")
    mkdir -p "$tmp/crds" "$tmp/rbac"
    cp "$moddir/manifests/crds/application-crd.yaml" "$moddir/manifests/crds/appproject-crd.yaml" "$tmp/crds/"
    cp "$moddir"/manifests/cluster-rbac/application-controller/argocd-application-controller-cluster*.yaml "$tmp/rbac/"
    chmod u+w "$tmp/crds"/* "$tmp/rbac"/*
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "built in $(( $(date +%s) - started )) s"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

spawn() {
    local dir=$1 name=$2
    shift 2
    "$@" > "$dir/$name.log" 2>&1 &
    echo $! > "$dir/pids/$name.pid"
}

wait_for() {
    local dir=$1 what=$2 deadline=$(( $(date +%s) + START_TIMEOUT ))
    shift 2
    until "$@" >/dev/null 2>&1; do
        local pidfile
        for pidfile in "$dir"/pids/*.pid; do
            kill -0 "$(cat "$pidfile")" 2>/dev/null || {
                tail -20 "$dir/$(basename "$pidfile" .pid).log" >&2
                die "$(basename "$pidfile" .pid) exited while waiting for $what"
            }
        done
        [ "$(date +%s)" -lt "$deadline" ] || die "$what not ready after ${START_TIMEOUT}s (logs in $dir)"
        sleep 0.2
    done
}

# Argo CD's three processes, as its install manifests run them, on loopback ports:
# - redis-server: the cache the repo server and the controller share (no persistence);
# - the repo server: clones with the `git` on PATH and renders charts with the `helm` on PATH
#   (.tools/bin first), its temporary clones and its askpass socket under DIR (not /tmp, so two
#   runs on one machine never meet), no TLS on loopback;
# - the application controller, against the cluster of $KUBECONFIG for its `in-cluster`
#   destination (https://kubernetes.default.svc; ARGOCD_FAKE_IN_CLUSTER is Argo CD's own switch
#   for running outside a pod), polling git every $ARGOCD_APP_RESYNC seconds (Argo CD's default is
#   120 s plus jitter; users cut it with a webhook, which needs the API server we do not build),
#   with each resource's health (and the message our Lua check gives) kept in the Application's
#   status.resources (--persist-resource-health; off by default since Argo CD 3.0), where the
#   tests read it.
cmd_start() {
    local dir=${1:?usage: argocd.sh start DIR}
    [ -n "${KUBECONFIG:-}" ] || die "KUBECONFIG must name the kubeconfig Argo CD's controller runs with"
    local bin namespace=${ARGOCD_NAMESPACE:-argocd} resync=${ARGOCD_APP_RESYNC:-5}
    bin="$(cache_dir)"
    built || die "Argo CD is not built: run scripts/argocd.sh build"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if compgen -G "$dir/pids/*.pid" >/dev/null; then
        die "$dir already has an Argo CD; stop it first"
    fi
    mkdir -p "$dir/pids" "$dir/tmp" "$dir/redis"
    local redis_port repo_port repo_metrics controller_metrics
    redis_port=$(free_port); repo_port=$(free_port); repo_metrics=$(free_port); controller_metrics=$(free_port)
    cat > "$dir/env" <<ENV
ARGOCD_REDIS=127.0.0.1:$redis_port
ARGOCD_REPO_SERVER=127.0.0.1:$repo_port
ARGOCD_REPO_SERVER_METRICS=127.0.0.1:$repo_metrics
ARGOCD_CONTROLLER_METRICS=127.0.0.1:$controller_metrics
ARGOCD_NAMESPACE=$namespace
ARGOCD_BIN=$bin
ENV
    local path="$ROOT/.tools/bin:$PATH"

    spawn "$dir" redis redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
        --dir "$dir/redis"
    wait_for "$dir" redis redis-cli -p "$redis_port" ping

    spawn "$dir" repo-server env PATH="$path" TMPDIR="$dir/tmp" ARGOCD_ASK_PASS_SOCK="$dir/askpass.sock" \
        ARGOCD_GPG_ENABLED=false \
        "$bin/argocd" argocd-repo-server --address 127.0.0.1 --port "$repo_port" \
        --metrics-address 127.0.0.1 --metrics-port "$repo_metrics" --disable-tls \
        --redis "127.0.0.1:$redis_port" --logformat json
    wait_for "$dir" "the repo server" curl -fsS "http://127.0.0.1:$repo_metrics/healthz?full=true"

    spawn "$dir" application-controller env PATH="$path" TMPDIR="$dir/tmp" ARGOCD_FAKE_IN_CLUSTER=true \
        KUBECONFIG="$KUBECONFIG" \
        "$bin/argocd" argocd-application-controller --kubeconfig "$KUBECONFIG" --namespace "$namespace" \
        --repo-server "127.0.0.1:$repo_port" --repo-server-plaintext --redis "127.0.0.1:$redis_port" \
        --metrics-port "$controller_metrics" --app-resync "$resync" --app-resync-jitter 0 \
        --persist-resource-health --logformat json
    wait_for "$dir" "the application controller" curl -fsS "http://127.0.0.1:$controller_metrics/healthz"
    log "ready: repo server 127.0.0.1:$repo_port, controller metrics 127.0.0.1:$controller_metrics (logs in $dir)"
}

cmd_stop() {
    local dir=${1:?usage: argocd.sh stop DIR}
    [ -d "$dir/pids" ] || return 0
    local name pidfile pid pids=()
    # Reverse start order: the controller first, redis last.
    for name in application-controller repo-server redis; do
        pidfile="$dir/pids/$name.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -TERM "$pid" 2>/dev/null; then pids+=("$pid"); fi
    done
    local deadline=$(( $(date +%s) + 15 ))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    done
    rm -f "$dir"/pids/*.pid
}

case "${1:-}" in
    build) cmd_build ;;
    dir) cmd_build; cache_dir ;;
    built) built ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) echo "usage: $0 build | dir | built | start DIR | stop DIR" >&2; exit 2 ;;
esac
