#!/usr/bin/env bash
# End to end on a local kind cluster: build the image, `helm install` the operator, apply an
# AgentService whose LLM is the bundled local model server, and run one task through its API.
#
# NOT RUN IN CI: it needs kind and its container engine (Docker, or podman), which CI does not
# have (CI builds and runs the image with buildah and podman: docs/image.md). Run it by hand:
#
#   scripts/e2e-kind.sh
#
# Requires: kind (with its Docker or podman provider), kubectl, helm, curl, python3, and what
# scripts/image.sh builds the images with: buildah, mmdebstrap, podman, runc (kubectl and helm are
# also taken from .tools/bin when `make setup` has put them there).
#
# Environment (all optional):
#   KIND_CLUSTER   reuse this existing kind cluster (its objects are removed at exit, the cluster
#                  is kept). Unset: create "agentops-e2e" and delete it at exit.
#   KEEP=1         keep everything at exit (cluster, release, namespace) for inspection.
#   NAMESPACE      namespace of the AgentService, Redis and local model (default agents-e2e).
#   LOCAL_PORT     local port of the API port-forward (default 18080).
#   TIMEOUT        seconds for each wait (default 300).
#
# What it proves, in order: the Dockerfile builds; the chart installs with the CRD and the operator
# becomes available; the operator turns an AgentService into pods that get Ready
# (`kubectl wait --for=condition=Ready agsvc/...`); the operator-managed Secret `<name>-auth` holds
# the API token; a task submitted through the API is run by a worker against the in-cluster model
# and succeeds. Exit status 0 only when the task succeeded.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
export PATH="${ROOT}/.tools/bin:${PATH}"

CREATE_CLUSTER=1
if [[ -n "${KIND_CLUSTER:-}" ]]; then
  CREATE_CLUSTER=0
fi
readonly CREATE_CLUSTER
readonly CLUSTER="${KIND_CLUSTER:-agentops-e2e}"
readonly CONTEXT="kind-${CLUSTER}"
readonly KEEP="${KEEP:-0}"
# Set by build_and_load_image from scripts/image.sh: agentops/agent-runtime:<version>, and the
# same Dockerfile with the development package added for the local model (the runtime image itself
# ships no development fakes).
IMAGE=""
DEV_IMAGE=""
readonly NAMESPACE="${NAMESPACE:-agents-e2e}"
readonly LOCAL_PORT="${LOCAL_PORT:-18080}"
readonly TIMEOUT="${TIMEOUT:-300}"
readonly OPERATOR_NAMESPACE="agentops-system"
readonly RELEASE="agentservice-operator"
readonly CHART="${ROOT}/charts/agentservice-operator"
readonly CRD="agentservices.agentops.dev"
readonly SERVICE="e2e-agent"
readonly MODEL_PORT=8765
readonly API_SERVICE_PORT=80 # agent_operator.manifests.workloads.SERVICE_PORT

PORT_FORWARD_PID=""
CLUSTER_CREATED=0 # set once this script has created the cluster (it then deletes it)
CLUSTER_IN_USE=0  # set once the cluster exists (diagnostics and cleanup then make sense)

log() {
  printf '\n==> %s\n' "$*" >&2
}

die() {
  printf 'e2e-kind: %s\n' "$*" >&2
  exit 1
}

k() {
  kubectl --context "${CONTEXT}" "$@"
}

diagnostics() {
  log "diagnostics"
  k get agentservices,deployments,pods,services,secrets -n "${NAMESPACE}" -o wide || true
  k get agentservice "${SERVICE}" -n "${NAMESPACE}" -o yaml || true
  k get events -n "${NAMESPACE}" --sort-by=.lastTimestamp || true
  k logs -n "${OPERATOR_NAMESPACE}" "deployment/${RELEASE}" --tail=100 || true
  k logs -n "${NAMESPACE}" "deployment/${SERVICE}-worker" --tail=50 || true
}

cleanup() {
  local status=$?
  trap - EXIT
  if [[ -n "${PORT_FORWARD_PID}" ]]; then
    kill "${PORT_FORWARD_PID}" 2>/dev/null || true
    wait "${PORT_FORWARD_PID}" 2>/dev/null || true
  fi
  if [[ ${status} -ne 0 && ${CLUSTER_IN_USE} -eq 1 ]]; then
    diagnostics
  fi
  if [[ "${KEEP}" == "1" ]]; then
    log "KEEP=1: leaving cluster ${CLUSTER}, release ${RELEASE} and namespace ${NAMESPACE} in place"
  elif [[ ${CLUSTER_CREATED} -eq 1 ]]; then
    log "deleting kind cluster ${CLUSTER}"
    kind delete cluster --name "${CLUSTER}" || true
  elif [[ ${CLUSTER_IN_USE} -eq 1 ]]; then
    log "removing the test objects from cluster ${CLUSTER}"
    k delete namespace "${NAMESPACE}" --ignore-not-found --wait=false || true
    helm --kube-context "${CONTEXT}" uninstall "${RELEASE}" --namespace "${OPERATOR_NAMESPACE}" || true
  fi
  exit "${status}"
}

require() {
  local tool
  for tool in "$@"; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} is required but not on PATH"
  done
}

# Read one field of a JSON document on stdin (python3: no jq needed).
json_field() {
  python3 -c 'import json, sys; value = json.load(sys.stdin).get(sys.argv[1]); print("" if value is None else value)' "$1"
}

create_or_reuse_cluster() {
  if [[ ${CREATE_CLUSTER} -eq 0 ]]; then
    kind get clusters | grep -qx "${CLUSTER}" || die "KIND_CLUSTER=${CLUSTER}: no such kind cluster"
    log "reusing kind cluster ${CLUSTER}"
    CLUSTER_IN_USE=1
    return
  fi
  if kind get clusters | grep -qx "${CLUSTER}"; then
    die "a kind cluster named ${CLUSTER} already exists: delete it or reuse it with KIND_CLUSTER=${CLUSTER}"
  fi
  log "creating kind cluster ${CLUSTER}"
  CLUSTER_CREATED=1
  kind create cluster --name "${CLUSTER}" --wait 120s
  CLUSTER_IN_USE=1
}

build_and_load_image() {
  log "building the image and the dev image from ${ROOT}/Dockerfile (scripts/image.sh: buildah, cached by its inputs)"
  local dir
  dir="$(bash "${ROOT}/scripts/image.sh" dir)"
  IMAGE="$(sed -n 's/^RUNTIME_IMAGE=//p' "${dir}/build.env")"
  DEV_IMAGE="$(sed -n 's/^DEV_IMAGE=//p' "${dir}/build.env")"
  [[ -n "${IMAGE}" && -n "${DEV_IMAGE}" ]] || die "${dir}/build.env names no images"
  log "loading ${IMAGE} and ${DEV_IMAGE} into kind cluster ${CLUSTER} (OCI archives)"
  kind load image-archive "${dir}/agent-runtime.oci.tar" --name "${CLUSTER}"
  kind load image-archive "${dir}/agent-runtime-dev.oci.tar" --name "${CLUSTER}"
}

install_operator() {
  log "helm install ${RELEASE} (image ${IMAGE})"
  helm --kube-context "${CONTEXT}" upgrade --install "${RELEASE}" "${CHART}" \
    --namespace "${OPERATOR_NAMESPACE}" --create-namespace \
    --set-string "image.repository=${IMAGE%:*}" \
    --set-string "image.tag=${IMAGE##*:}" \
    --set-string image.pullPolicy=IfNotPresent \
    --set-string logFormat=console \
    --wait --timeout "${TIMEOUT}s"
  k wait --for=condition=Established "crd/${CRD}" --timeout "${TIMEOUT}s"
}

deploy_dependencies() {
  log "deploying a throwaway Redis and the local model server in ${NAMESPACE}"
  k create namespace "${NAMESPACE}" --dry-run=client -o yaml | k apply -f -
  k apply -n "${NAMESPACE}" -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: redis
  labels: {app: redis}
spec:
  replicas: 1
  selector:
    matchLabels: {app: redis}
  template:
    metadata:
      labels: {app: redis}
    spec:
      containers:
        - name: redis
          image: redis:7-alpine
          args: ["--save", "", "--appendonly", "no"]
          ports:
            - {name: redis, containerPort: 6379}
          readinessProbe:
            exec:
              command: ["redis-cli", "ping"]
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: redis
spec:
  selector: {app: redis}
  ports:
    - {name: redis, port: 6379, targetPort: redis}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: localmodel
  labels: {app: localmodel}
spec:
  replicas: 1
  selector:
    matchLabels: {app: localmodel}
  template:
    metadata:
      labels: {app: localmodel}
    spec:
      containers:
        - name: localmodel
          image: ${DEV_IMAGE}
          imagePullPolicy: IfNotPresent
          # The image's entry point is agent-runtime; its localmodel command runs the development package.
          args: ["localmodel", "--host", "0.0.0.0", "--port", "${MODEL_PORT}"]
          ports:
            - {name: http, containerPort: ${MODEL_PORT}}
          readinessProbe:
            tcpSocket: {port: http}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: localmodel
spec:
  selector: {app: localmodel}
  ports:
    - {name: http, port: ${MODEL_PORT}, targetPort: http}
EOF
  k rollout status -n "${NAMESPACE}" deployment/redis --timeout "${TIMEOUT}s"
  k rollout status -n "${NAMESPACE}" deployment/localmodel --timeout "${TIMEOUT}s"
}

apply_agent_service() {
  log "applying AgentService ${NAMESPACE}/${SERVICE}"
  k apply -f - <<EOF
apiVersion: agentops.dev/v1alpha1
kind: AgentService
metadata:
  name: ${SERVICE}
  namespace: ${NAMESPACE}
spec:
  image: ${IMAGE}
  imagePullPolicy: IfNotPresent
  model:
    providers:
      # The bundled local model speaks the Anthropic Messages API and needs no key.
      - name: local
        kind: anthropic
        model: claude-sonnet-4-5
        baseURL: http://localmodel.${NAMESPACE}.svc:${MODEL_PORT}
  redis:
    url: redis://redis.${NAMESPACE}.svc:6379/0
  api:
    replicas: 1
  worker:
    replicas: 1
    concurrency: 2
  # kind has no metrics adapter for the queue-depth metric: fixed replicas.
  autoscaling:
    enabled: false
EOF
  log "waiting for agsvc/${SERVICE} to be Ready"
  k wait --for=condition=Ready "agsvc/${SERVICE}" -n "${NAMESPACE}" --timeout "${TIMEOUT}s"
  k get agsvc "${SERVICE}" -n "${NAMESPACE}"
}

start_port_forward() {
  log "port-forwarding svc/${SERVICE}-api to 127.0.0.1:${LOCAL_PORT}"
  k port-forward -n "${NAMESPACE}" "svc/${SERVICE}-api" "${LOCAL_PORT}:${API_SERVICE_PORT}" >/dev/null &
  PORT_FORWARD_PID=$!
  local deadline=$((SECONDS + 30))
  until curl -fsS "http://127.0.0.1:${LOCAL_PORT}/health" >/dev/null 2>&1; do
    kill -0 "${PORT_FORWARD_PID}" 2>/dev/null || die "kubectl port-forward exited"
    ((SECONDS < deadline)) || die "the API did not answer /health through the port-forward within 30s"
    sleep 1
  done
}

run_task() {
  local token submitted task_id view status result
  token="$(k get secret "${SERVICE}-auth" -n "${NAMESPACE}" -o jsonpath='{.data.token}' | base64 --decode)"
  [[ -n "${token}" ]] || die "secret ${SERVICE}-auth has no key 'token'"

  log "submitting a task"
  submitted="$(curl -fsS -X POST "http://127.0.0.1:${LOCAL_PORT}/v1/tasks" \
    -H "Authorization: Bearer ${token}" \
    -H "Content-Type: application/json" \
    --data '{"input": "Say hello to the kind cluster.", "metadata": {"intent": "e2e"}}')"
  printf '%s\n' "${submitted}"
  task_id="$(printf '%s' "${submitted}" | json_field task_id)"
  [[ -n "${task_id}" ]] || die "no task_id in the submit answer"

  log "polling task ${task_id}"
  local deadline=$((SECONDS + TIMEOUT))
  while :; do
    view="$(curl -fsS "http://127.0.0.1:${LOCAL_PORT}/v1/tasks/${task_id}" -H "Authorization: Bearer ${token}")"
    status="$(printf '%s' "${view}" | json_field status)"
    case "${status}" in
      succeeded | failed | cancelled) break ;;
      *) ;;
    esac
    ((SECONDS < deadline)) || die "task ${task_id} still ${status} after ${TIMEOUT}s"
    sleep 1
  done

  log "task ${task_id}: ${status}"
  printf '%s' "${view}" | python3 -m json.tool
  [[ "${status}" == "succeeded" ]] || die "task ${task_id} ended ${status}"
  result="$(printf '%s' "${view}" | json_field result)"
  printf '\nresult: %s\n' "${result}"
}

main() {
  require kind buildah kubectl helm curl python3 base64
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  create_or_reuse_cluster
  build_and_load_image
  install_operator
  deploy_dependencies
  apply_agent_service
  start_port_forward
  run_task
  log "end to end: OK"
}

main "$@"
