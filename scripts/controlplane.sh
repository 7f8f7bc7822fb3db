#!/usr/bin/env bash
# The real Kubernetes control plane for the cluster tests: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler, built from their Go modules (tests/controlplane/)
# and run as local processes on free loopback ports. No Docker, no downloaded binary.
#
#   scripts/controlplane.sh build        build the binaries once into the cache (~/.cache/agentops, keyed by version)
#   scripts/controlplane.sh bin          print the folder holding the binaries (builds if missing)
#   scripts/controlplane.sh built        exit 0 when the binaries are in the cache, 1 when not
#   scripts/controlplane.sh start DIR    run the four processes; data, certificates, logs under DIR;
#                                        writes DIR/kubeconfig (cluster-admin) and DIR/audit.log,
#                                        returns once /readyz answers ok
#   scripts/controlplane.sh stop DIR     end every process started in DIR, by its PID
#
# Besides DIR/kubeconfig, `start` leaves in DIR: env (the ports and paths, as shell assignments),
# ca.crt/ca.key (the cluster CA, which also signs client certificates), front-proxy-ca.crt and
# front-proxy-client.{crt,key} (the aggregation layer's requestheader identity), sa.key/sa.pub
# (service-account token signing, so the TokenRequest API works), and one log per process.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE="$ROOT/tests/controlplane"
START_TIMEOUT=${CONTROLPLANE_START_TIMEOUT:-180}

log() { echo "controlplane: $*" >&2; }
die() { log "$*"; exit 1; }

# The cache key: the pinned Kubernetes version plus a digest of the module's files, so a change
# of any pin (or of the etcd main) builds into a new folder and a stale binary is never reused.
k8s_version() {
    awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$MODULE/go.mod"
}

# The version the binaries report (/version, and so `helm install`'s kubeVersion check): a module
# build carries no git metadata, so it is stamped the way the Kubernetes release build does.
ldflags() {
    local version major minor pkg=k8s.io/component-base/version
    version=$(k8s_version)
    major=${version#v}; major=${major%%.*}
    minor=${version#v"$major".}; minor=${minor%%.*}
    echo "-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
}

cache_dir() {
    local digest
    digest=$( (cat "$MODULE/go.mod" "$MODULE/go.sum" "$MODULE/cmd/etcd/main.go"; ldflags) | sha256sum | cut -c1-12)
    echo "${CONTROLPLANE_TOOLS:-${AGENTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentops}}/controlplane/$(k8s_version)-${digest}"
}

BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler)

built() {
    local dir=$1 name
    for name in "${BINARIES[@]}"; do [ -x "$dir/$name" ] || return 1; done
}

cmd_build() {
    local dir
    dir=$(cache_dir)
    if built "$dir"; then
        return 0
    fi
    command -v go >/dev/null || die "Go is required to build the control plane (go 1.25 or newer)"
    log "building etcd, kube-apiserver, kube-controller-manager and kube-scheduler into $dir"
    log "the first build takes about 15 minutes on 2 cores (later runs reuse the cache)"
    local started tmp
    started=$(date +%s)
    tmp="$dir.partial.$$"
    mkdir -p "$tmp"
    # -trimpath and no debug info: smaller binaries, the same code. GOFLAGS=-mod=mod lets the
    # module proxy serve what go.sum pins; nothing else is downloaded.
    (cd "$MODULE" && GOFLAGS=-mod=mod go build -trimpath -ldflags="$(ldflags)" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        ./cmd/etcd) || { rm -rf "$tmp"; die "the build failed (see above)"; }
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "built in $(( $(date +%s) - started )) s"
}

cmd_bin() {
    cmd_build
    cache_dir
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# A key and a certificate signed by the CA of $1 (basename), with subject $3 and optional SANs.
issue_cert() {
    local ca=$1 name=$2 subject=$3 sans=${4:-}
    openssl genrsa -out "$name.key" 2048 2>/dev/null
    openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr" 2>/dev/null
    local ext="$name.ext"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$sans" ]; then
            echo "extendedKeyUsage=serverAuth,clientAuth"
            echo "subjectAltName=$sans"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } > "$ext"
    openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
        -days 30 -sha256 -extfile "$ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$ext"
}

new_ca() {
    local name=$1 cn=$2
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.crt" -days 30 \
        -subj "/CN=$cn" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}

write_kubeconfig() {
    local file=$1 server=$2 user=$3 dir=$4
    cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority: $dir/ca.crt
users:
- name: $user
  user:
    client-certificate: $dir/$user.crt
    client-key: $dir/$user.key
contexts:
- name: local
  context: {cluster: local, user: $user, namespace: default}
current-context: local
EOF
}

# Every write at level Metadata, and every request of anyone but the control plane's own
# components and the admin (the tests' and benches' own reads, which would drown the log);
# RequestReceived is left out: one line a request.
write_audit_policy() {
    cat > "$1" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  users: ["system:kube-controller-manager", "system:kube-scheduler", "system:apiserver", "admin"]
  verbs: ["get", "list", "watch"]
- level: None
  userGroups: ["system:nodes"]
  verbs: ["get", "list", "watch"]
- level: None
  nonResourceURLs: ["/readyz*", "/livez*", "/healthz*", "/version"]
- level: Metadata
EOF
}

spawn() {
    local dir=$1 name=$2
    shift 2
    "$@" > "$dir/$name.log" 2>&1 &
    echo $! > "$dir/pids/$name.pid"
}

# The controller manager and the scheduler serve /healthz with a self-signed certificate of their
# own (nothing verifies them here), so their checks skip verification (`-k` as 4th argument).
wait_ready() {
    local dir=$1 url=$2 what=$3 deadline=$(( $(date +%s) + START_TIMEOUT ))
    local tls=(--cacert "$dir/ca.crt")
    [ "${4:-}" = -k ] && tls=(-k)
    until curl -fsS "${tls[@]}" --cert "$dir/admin.crt" --key "$dir/admin.key" "$url" >/dev/null 2>&1; do
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

cmd_start() {
    local dir=${1:?usage: controlplane.sh start DIR}
    local bin
    bin=$(cmd_bin)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if compgen -G "$dir/pids/*.pid" >/dev/null; then
        die "$dir already has a control plane; stop it first"
    fi
    mkdir -p "$dir/pids" "$dir/etcd"
    local etcd_port peer_port api_port kcm_port sched_port
    etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
    kcm_port=$(free_port); sched_port=$(free_port)

    (
        cd "$dir"
        new_ca ca agentops-test-ca
        new_ca front-proxy-ca agentops-test-front-proxy-ca
        issue_cert ca apiserver "/CN=kube-apiserver" "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
        issue_cert ca admin "/O=system:masters/CN=admin"
        issue_cert ca kube-controller-manager "/CN=system:kube-controller-manager"
        issue_cert ca kube-scheduler "/CN=system:kube-scheduler"
        issue_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
        issue_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client"
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
    local server="https://127.0.0.1:$api_port"
    write_kubeconfig "$dir/kubeconfig" "$server" admin "$dir"
    write_kubeconfig "$dir/kube-controller-manager.kubeconfig" "$server" kube-controller-manager "$dir"
    write_kubeconfig "$dir/kube-scheduler.kubeconfig" "$server" kube-scheduler "$dir"
    write_audit_policy "$dir/audit-policy.yaml"
    : > "$dir/audit.log"
    cat > "$dir/env" <<EOF
CONTROLPLANE_SERVER=$server
CONTROLPLANE_API_PORT=$api_port
CONTROLPLANE_ETCD_PORT=$etcd_port
CONTROLPLANE_BIN=$bin
KUBECONFIG=$dir/kubeconfig
EOF

    spawn "$dir" etcd "$bin/etcd" --name default --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level warn
    local etcd_deadline=$(( $(date +%s) + START_TIMEOUT ))
    until curl -fsS "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1; do
        kill -0 "$(cat "$dir/pids/etcd.pid")" 2>/dev/null || { tail -20 "$dir/etcd.log" >&2; die "etcd exited"; }
        [ "$(date +%s)" -lt "$etcd_deadline" ] || die "etcd not healthy after ${START_TIMEOUT}s"
        sleep 0.1
    done

    # --audit-log-maxsize: one file for the whole run (readers keep byte offsets into it), not a
# rotation at the default 100 MB.
# --endpoint-reconciler-type none: the `kubernetes` Service's endpoint would be 127.0.0.1, which
# Endpoints refuse (loopback); nothing here reaches the API server through that Service.
# --enable-aggregator-routing: aggregated APIs (prometheus-adapter, KEDA's metrics server) are
    # reached at their endpoints' addresses, as there is no kube-proxy for Service IPs here.
    spawn "$dir" kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
        --tls-cert-file "$dir/apiserver.crt" --tls-private-key-file "$dir/apiserver.key" \
        --client-ca-file "$dir/ca.crt" \
        --kubelet-client-certificate "$dir/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$dir/apiserver-kubelet-client.key" \
        --authorization-mode Node,RBAC \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$dir/sa.pub" \
        --service-account-signing-key-file "$dir/sa.key" \
        --api-audiences https://kubernetes.default.svc \
        --service-cluster-ip-range 10.96.0.0/16 \
        --endpoint-reconciler-type none \
        --allow-privileged=true \
        --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" \
        --audit-log-format json --audit-log-mode blocking \
        --audit-log-maxsize 100000 --audit-log-maxbackup 1 \
        --requestheader-client-ca-file "$dir/front-proxy-ca.crt" \
        --requestheader-allowed-names front-proxy-client \
        --requestheader-extra-headers-prefix X-Remote-Extra- \
        --requestheader-group-headers X-Remote-Group \
        --requestheader-username-headers X-Remote-User \
        --proxy-client-cert-file "$dir/front-proxy-client.crt" \
        --proxy-client-key-file "$dir/front-proxy-client.key" \
        --enable-aggregator-routing=true \
        --profiling=false
    wait_ready "$dir" "$server/readyz" "kube-apiserver"

    spawn "$dir" kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig "$dir/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$dir/kube-controller-manager" \
        --leader-elect=false --use-service-account-credentials=true \
        --service-account-private-key-file "$dir/sa.key" --root-ca-file "$dir/ca.crt" \
        --cluster-signing-cert-file "$dir/ca.crt" --cluster-signing-key-file "$dir/ca.key" \
        --controllers '*,-bootstrapsigner,-tokencleaner' \
        --horizontal-pod-autoscaler-sync-period 5s \
        --profiling=false
    spawn "$dir" kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig "$dir/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig "$dir/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig "$dir/kube-scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$sched_port" --cert-dir "$dir/kube-scheduler" \
        --leader-elect=false --profiling=false
    wait_ready "$dir" "https://127.0.0.1:$kcm_port/healthz" "kube-controller-manager" -k
    wait_ready "$dir" "https://127.0.0.1:$sched_port/healthz" "kube-scheduler" -k
    wait_ready "$dir" "$server/readyz" "kube-apiserver"
    log "ready: $server (KUBECONFIG=$dir/kubeconfig)"
}

cmd_stop() {
    local dir=${1:?usage: controlplane.sh stop DIR}
    [ -d "$dir/pids" ] || return 0
    local pidfile pid pids=()
    # Reverse start order: the clients first, etcd last.
    for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
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
    bin) cmd_bin ;;
    built) built "$(cache_dir)" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) echo "usage: $0 build | bin | built | start DIR | stop DIR" >&2; exit 2 ;;
esac
