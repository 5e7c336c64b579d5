#!/usr/bin/env bash
# Validates the deployment kit offline, each piece with a tool no one here wrote:
#
#   compose      docker-compose.yml                  `docker-compose config -q` (Debian 1.29)
#   kustomize    k8s overlays dev, prod, prod+istio   `kubectl kustomize` renders them
#                component, and istio/
#   k8s          everything rendered, and             `kubernetes-validate --strict` (PyPI)
#                k8s/base/secret.example.yaml         against Kubernetes $K8S_VERSION
#   crds         Istio, ServiceMonitor, PodMonitor    their CRD schemas from PyPI
#                                                     cloudcoil-models-*, unknown fields refused
#   policies     AuthorizationPolicies, NetworkPolicies   libs/runtime/src/auth/actors.rs and
#                                                     the contract's public RPCs (buf image)
#   prometheus   deploy/prometheus                    `promtool check config|rules`, `promtool
#                                                     test rules` (Debian prometheus)
#   dashboards   deploy/grafana/dashboards/*.json,    valid JSON, and every metric they (and
#                deploy/prometheus/rules.yml          the rules) query is in a live /metrics
#                                                     scrape of `agentmesh up`
#   envoy        deploy/envoy/envoy.yaml              Envoy's v3 API (PyPI envoy-data-plane);
#                                                     transcoder services in the descriptor
#                                                     set `buf build` makes from proto/
#   workflow     .github/workflows/ci.yml             `check-jsonschema --builtin-schema
#                                                     vendor.github-workflows` (PyPI)
#   keys         deploy/README.md "Identity keys"     keys made by its openssl commands are
#                                                     accepted as *_FILE by a service binary;
#                                                     the committed placeholders are refused
#
# Tools are installed once (apt: docker-compose, prometheus; a venv and buf under
# ~/.cache/agentmesh-tools) and found quietly afterwards. kubectl must be on PATH.
# The live scrape runs $CARGO_TARGET_DIR/debug/agentmesh (AGENTMESH_BIN overrides), which
# the test command has built. Every failure prints what failed; the exit code is 1 if any.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

tools="${AGENTMESH_TOOLS_DIR:-$HOME/.cache/agentmesh-tools}"
venv="$tools/deploy-venv"
K8S_VERSION="${K8S_VERSION:-1.32.0}"
python_packages=(
    kubernetes-validate==1.37.0
    check-jsonschema==0.39.0
    envoy-data-plane==2.2.0
    cloudcoil-models-istio==1.24.2.1   # newer ones need Python >= 3.14
    cloudcoil-models-prometheus-operator==0.80.1.0
    pyyaml
)
bin="${AGENTMESH_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/agentmesh-target}/debug/agentmesh}"

log() { printf 'deploy: %s\n' "$*" >&2; }

# ------------------------------------------------------------------------- installs --
apt_packages=()
command -v docker-compose >/dev/null || apt_packages+=(docker-compose)
command -v promtool >/dev/null || apt_packages+=(prometheus)
if [ ${#apt_packages[@]} -gt 0 ]; then
    log "installing ${apt_packages[*]} (apt)"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${apt_packages[@]}" >/dev/null 2>&1; then
        "${sudo[@]}" apt-get update -qq >/dev/null
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${apt_packages[@]}" >/dev/null
    fi
fi
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.packages" 2>/dev/null)" != "${python_packages[*]}" ]; then
    log "installing ${python_packages[*]} into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${python_packages[@]}"
    printf '%s' "${python_packages[*]}" > "$venv/.packages"
fi
buf="$tools/node_modules/.bin/buf"
if [ ! -x "$buf" ]; then
    log "installing buf (npm @bufbuild/buf)"
    npm install --silent --no-audit --no-fund --prefix "$tools" @bufbuild/buf@1 >/dev/null
fi
command -v kubectl >/dev/null || { echo "FAIL kubectl is not on PATH (needed for kubectl kustomize)" >&2; exit 1; }

# --------------------------------------------------------------------------- checks --
tmp="$(mktemp -d)"
mesh_pid=""
cleanup() {
    if [ -n "$mesh_pid" ]; then kill "$mesh_pid" 2>/dev/null || true; wait "$mesh_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

failed=()
# check NAME COMMAND...: runs it; prints `ok NAME` and the command's last line, or `FAIL
# NAME` and all its output, indented.
check() {
    local name="$1" out status=0
    shift
    out="$("$@" 2>&1)" || status=$?
    if [ "$status" -eq 0 ]; then
        printf 'ok   %-10s %s\n' "$name" "$(printf '%s' "$out" | tail -n 1)"
    else
        printf 'FAIL %s (exit %s)\n' "$name" "$status"
        printf '%s\n' "$out" | sed 's/^/       /'
        failed+=("$name")
    fi
}

compose() {
    docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml: valid ($(docker-compose version --short))"
}

render() {
    kubectl kustomize k8s/overlays/dev > "$tmp/dev.yaml"
    kubectl kustomize k8s/overlays/prod > "$tmp/prod.yaml"
    # The Istio component is not enabled by an overlay: render prod with it too.
    mkdir -p "$tmp/prod-istio"
    cat > "$tmp/prod-istio/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$tmp/prod-istio" k8s/overlays/prod)
components:
  - $(realpath --relative-to="$tmp/prod-istio" k8s/components/istio)
EOF
    kubectl kustomize "$tmp/prod-istio" > "$tmp/prod-istio.yaml"
    kubectl kustomize istio > "$tmp/istio.yaml"
    for file in dev prod prod-istio istio; do
        [ -s "$tmp/$file.yaml" ] || { echo "$file rendered nothing"; return 1; }
    done
    echo "rendered dev, prod, prod + components/istio, istio/"
}

# Built-in kinds; custom resources are skipped here with a warning and checked by `crds`.
# Any other warning (an unknown built-in kind or version) fails.
k8s_schemas() {
    local out status=0 unexpected
    out="$("$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" \
        "$tmp/dev.yaml" "$tmp/prod.yaml" "$tmp/prod-istio.yaml" "$tmp/istio.yaml" \
        k8s/base/secret.example.yaml 2>&1)" || status=$?
    unexpected="$(printf '%s\n' "$out" | grep -v -E "Couldn't find schema for kind \w+ with api version [a-z.]*(istio\.io|monitoring\.coreos\.com)/" | grep -v '^$' || true)"
    if [ "$status" -ne 0 ] || [ -n "$unexpected" ]; then
        printf '%s\n' "$unexpected"
        return 1
    fi
    echo "built-in kinds valid (strict) against Kubernetes $K8S_VERSION"
}

crds() {
    "$venv/bin/python" tests/deploy/check.py crds "$tmp/prod.yaml" "$tmp/prod-istio.yaml" "$tmp/istio.yaml"
}

policies() {
    "$buf" build -o "$tmp/image.json"
    RENDERED="$tmp/prod.yaml $tmp/istio.yaml" "$venv/bin/python" tests/deploy/check.py policies "$tmp/image.json"
}

prometheus() {
    # prometheus.yml names the rules by their path in the container.
    sed "s#/etc/prometheus/rules.yml#$root/deploy/prometheus/rules.yml#" deploy/prometheus/prometheus.yml > "$tmp/prometheus.yml"
    promtool check config "$tmp/prometheus.yml"
    promtool check rules deploy/prometheus/rules.yml
    (cd deploy/prometheus && promtool test rules rules.test.yml)
    echo "prometheus.yml and rules.yml valid, rules.test.yml passes ($(promtool --version | head -n 1 | cut -d' ' -f1-3))"
}

free_port() {
    "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs the mesh with the metrics listener on (the scripted model priced, so spend is
# counted), makes a few authenticated calls (a session, an agent, a run through the
# scripted model and a streamed one, a 404), and scrapes /metrics.
scrape() {
    [ -x "$bin" ] || { echo "no binary at $bin: build it first (cargo build -p agentmesh), or set AGENTMESH_BIN"; return 1; }
    local port metrics_port key url session agent status i
    port="$(free_port)"
    metrics_port="$(free_port)"
    key="sk-deploy-check-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    url="http://127.0.0.1:$port"
    env -u NATS_URL -u DATABASE_URL ENVIRONMENT=development USE_MEMORY=true USE_DATABASE=false \
        USE_REDIS=false SECURITY_API_KEYS="$key=deploy-check:premium" \
        OBSERVABILITY_METRICS_ENABLED=true OBSERVABILITY_METRICS_PORT="$metrics_port" \
        OBSERVABILITY_LOG_FORMAT=json OBSERVABILITY_LOG_LEVEL=WARN LLM_PRICES="scripted/echo=1:2" \
        "$bin" up --http "127.0.0.1:$port" > "$tmp/up.log" 2>&1 &
    mesh_pid=$!
    for i in $(seq 1 100); do
        curl -sf "$url/api/v1/health" >/dev/null 2>&1 && break
        kill -0 "$mesh_pid" 2>/dev/null || { echo "agentmesh up exited:"; cat "$tmp/up.log"; return 1; }
        sleep 0.2
    done
    local auth=(-H "Authorization: Bearer $key" -H 'Content-Type: application/json')
    local field=("$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))')
    session="$(curl -sf "${auth[@]}" -X POST "$url/api/v1/sessions" -d '{"title": "deploy check"}' | "${field[@]}" id)"
    agent="$(curl -sf "${auth[@]}" -X POST "$url/api/v1/agents" -d '{"name": "deploy-check", "system_prompt": "Echo."}' | "${field[@]}" id)"
    [ -n "$session" ] && [ -n "$agent" ] || { echo "could not create a session and an agent"; cat "$tmp/up.log"; return 1; }
    status="$(curl -sf "${auth[@]}" -X POST "$url/api/v1/agents/$agent/execute" \
        -d '{"session_id": "'"$session"'", "message": "Hello"}' | "${field[@]}" status)"
    [ "$status" = completed ] || { echo "the run ended '$status', not completed"; cat "$tmp/up.log"; return 1; }
    # A streamed run: its output reaches the gateway through the bus (event lag).
    curl -sfN "${auth[@]}" -X POST "$url/api/v1/agents/$agent/execute/stream" \
        -d '{"session_id": "'"$session"'", "message": "Again"}' -o "$tmp/stream.txt"
    grep -q '^event: run_completed' "$tmp/stream.txt" || { echo "the streamed run did not complete:"; cat "$tmp/stream.txt"; return 1; }
    curl -s "${auth[@]}" "$url/api/v1/sessions/00000000-0000-7000-8000-000000000000" -o /dev/null
    curl -sf "${auth[@]}" "$url/api/v1/sessions?limit=5" -o /dev/null
    curl -sf "http://127.0.0.1:$metrics_port/metrics" > "$tmp/metrics.txt"
    kill "$mesh_pid"
    wait "$mesh_pid" 2>/dev/null || true
    mesh_pid=""
    echo "scraped $(grep -vc '^#' "$tmp/metrics.txt") samples from agentmesh up (metrics port $metrics_port)"
}

dashboards() {
    scrape
    "$venv/bin/python" tests/deploy/check.py metrics "$tmp/metrics.txt" deploy/grafana/dashboards/*.json deploy/prometheus/rules.yml
}

envoy() {
    "$buf" build -o "$tmp/agentmesh.pb"
    "$venv/bin/python" tests/deploy/check.py envoy deploy/envoy/envoy.yaml "$tmp/agentmesh.pb"
}

# A service started with the keys deploy/README.md makes: still running after 2 s means
# its configuration (keys included) was accepted; a refused one exits 2 at once.
run_with_keys() { # key file, trusted keys file
    local status=0
    env -u NATS_URL -u DATABASE_URL ENVIRONMENT=development USE_MEMORY=true USE_DATABASE=false USE_REDIS=false \
        SESSION_STORE_ADDR=127.0.0.1:0 SECURITY_SERVICE_KEY_FILE="$1" \
        SECURITY_TRUSTED_KEYS_FILE="$2" timeout 2 "$(dirname "$bin")/agentmesh-session-store" \
        > "$tmp/keys.log" 2>&1 || status=$?
    return "$status"
}

keys() {
    local s status
    [ -x "$(dirname "$bin")/agentmesh-session-store" ] || { echo "no agentmesh-session-store beside $bin"; return 1; }
    mkdir -p "$tmp/keys"
    : > "$tmp/keys/trusted-keys.txt"
    for s in gateway session-store agent-orchestrator llm-proxy mcp-broker secrets-broker; do
        openssl genpkey -algorithm ed25519 -out "$tmp/keys/$s.pem" 2>/dev/null
        echo "$s:$(openssl pkey -in "$tmp/keys/$s.pem" -pubout | sed '1d;$d')" >> "$tmp/keys/trusted-keys.txt"
    done
    status=0; run_with_keys "$tmp/keys/session-store.pem" "$tmp/keys/trusted-keys.txt" || status=$?
    [ "$status" -eq 124 ] || { echo "generated keys refused (exit $status):"; cat "$tmp/keys.log"; return 1; }
    status=0; run_with_keys "$tmp/keys/session-store.pem" k8s/overlays/prod/trusted-keys.txt || status=$?
    [ "$status" -eq 2 ] && grep -q SECURITY_TRUSTED_KEYS "$tmp/keys.log" \
        || { echo "the placeholder trusted-keys.txt was not refused (exit $status):"; cat "$tmp/keys.log"; return 1; }
    "$venv/bin/python" -c 'import sys, yaml
for d in yaml.safe_load_all(open("k8s/base/secret.example.yaml")):
    if d["metadata"]["name"].startswith("agentmesh-identity-"):
        open(sys.argv[1], "w").write(d["stringData"]["service.pem"])' "$tmp/keys/placeholder.pem"
    status=0; run_with_keys "$tmp/keys/placeholder.pem" "$tmp/keys/trusted-keys.txt" || status=$?
    [ "$status" -eq 2 ] && grep -q SECURITY_SERVICE_KEY "$tmp/keys.log" \
        || { echo "the placeholder in secret.example.yaml was not refused (exit $status):"; cat "$tmp/keys.log"; return 1; }
    echo "openssl-made keys accepted as *_FILE; both committed placeholders refused"
}

workflow() {
    "$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/ci.yml
}

check compose compose
check kustomize render
if [ -s "$tmp/istio.yaml" ]; then
    check k8s k8s_schemas
    check crds crds
    check policies policies
fi
check prometheus prometheus
check dashboards dashboards
check envoy envoy
check workflow workflow
check keys keys

if [ ${#failed[@]} -gt 0 ]; then
    echo "deployment kit: ${#failed[@]} check(s) failed: ${failed[*]}"
    exit 1
fi
echo "deployment kit: every check passed"
