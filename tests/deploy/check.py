"""Checks behind tests/deploy/validate.sh that need Python (run in its venv).

    check.py crds FILE...            Istio / Prometheus Operator resources in FILE(s) against
                                     their CRD schemas (PyPI cloudcoil-models-*), strictly
    check.py policies IMAGE.json     AuthorizationPolicies and NetworkPolicies (rendered, in
                                     $RENDERED) against libs/runtime/src/auth/actors.rs and
                                     the contract's public RPCs (buf image as JSON)
    check.py envoy CONFIG DESC.pb    the Envoy config against Envoy's v3 API (PyPI
                                     envoy-data-plane), and its transcoder's services against
                                     the descriptor set
    check.py metrics SCRAPE FILE...  every metric a dashboard or rule file queries is in the
                                     /metrics scrape (or recorded by a rule)

Each prints what it checked and, on failure, what failed, and exits 1 on failure.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"FAIL {message}")


def docs(path: str):
    with open(path, encoding="utf-8") as stream:
        for doc in yaml.safe_load_all(stream):
            if doc:
                yield doc


# --------------------------------------------------------------------------- crds --
CRD_GROUPS = (".istio.io", "monitoring.coreos.com")


def is_crd(doc) -> bool:
    group = doc.get("apiVersion", "").split("/")[0]
    return group.endswith(CRD_GROUPS)


def unknown_fields(given, parsed, path=""):
    """Keys of `given` that the model dropped: the models ignore unknown fields (as the API
    server prunes them), so a field that does not survive the round trip is not in the
    schema."""
    if isinstance(given, dict) and isinstance(parsed, dict):
        for key, value in given.items():
            if key not in parsed:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(value, parsed[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(parsed, list):
        for index, (a, b) in enumerate(zip(given, parsed)):
            yield from unknown_fields(a, b, f"{path}[{index}]")


def crd_model(doc):
    group, version = doc["apiVersion"].split("/")
    if group.endswith(".istio.io"):
        module = f"cloudcoil.models.istio.{group.removesuffix('.istio.io')}.{version}"
    elif group == "monitoring.coreos.com":
        module = f"cloudcoil.models.prometheus_operator.{version}"
    else:
        raise LookupError(f"no schema known for {doc['apiVersion']}")
    model = getattr(importlib.import_module(module), doc["kind"], None)
    if model is None:
        raise LookupError(f"no schema known for {doc['apiVersion']} {doc['kind']}")
    return model


def check_crd(doc) -> None:
    parsed = crd_model(doc).model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = list(unknown_fields(doc, parsed))
    if unknown:
        raise ValueError("unknown fields: " + ", ".join(unknown))


def crds(paths: list[str]) -> None:
    # The check must be able to fail: a misspelt field is refused.
    probe = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
             "metadata": {"name": "probe"}, "spec": {"mtls": {"mdoe": "STRICT"}}}
    try:
        check_crd(probe)
        fail("crds: the schema check accepted a misspelt field (mtls.mdoe); it checks nothing")
    except ValueError:
        pass
    count = 0
    for path in paths:
        for doc in docs(path):
            if not is_crd(doc):
                continue
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                check_crd(doc)
                count += 1
            except Exception as error:  # noqa: BLE001 - report every kind of refusal
                fail(f"{name}: {str(error).strip()}")
    print(f"crds: {count} custom resources valid against their CRD schemas")


# ----------------------------------------------------------------------- policies --
def kebab(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"-\1", camel).lower()


def served_actors() -> dict[str, tuple[set[str], set[str]]]:
    """service -> (actors on every RPC, actors on public RPCs), from actors.rs."""
    text = (ROOT / "libs/runtime/src/auth/actors.rs").read_text(encoding="utf-8")
    body = text[text.index("pub const fn served_actors"):]
    table = {}
    for name, any_rpc, public in re.findall(
        r"(\w+) => ActorPolicy \{\s*any_rpc: &\[([^\]]*)\],\s*public_rpcs: &\[([^\]]*)\]", body
    ):
        split = lambda names: {kebab(n.strip()) for n in names.split(",") if n.strip()}  # noqa: E731
        table[kebab(name)] = (split(any_rpc), split(public))
    if len(table) != 6:
        raise SystemExit(f"policies: read {len(table)} services from actors.rs, expected 6")
    return table


def public_rpcs(image_path: str) -> dict[str, set[str]]:
    """gRPC service -> paths of its methods with a google.api.http route."""
    image = json.load(open(image_path, encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for file in image["file"]:
        for service in file.get("service", []):
            full = f"{file['package']}.{service['name']}"
            for method in service.get("method", []):
                if any("google.api.http" in key for key in method.get("options", {})):
                    out.setdefault(full, set()).add(f"/{full}/{method['name']}")
    return out


CONTRACT = {  # which gRPC services each mesh service owns (gateway/src/routes.rs)
    "session-store": ["agentmesh.session.v1.SessionService"],
    "agent-orchestrator": ["agentmesh.agent.v1.AgentService"],
    "llm-proxy": ["agentmesh.llm.v1.LlmService"],
    "mcp-broker": ["agentmesh.mcp.v1.McpService"],
    "secrets-broker": ["agentmesh.secrets.v1.SecretsService"],
}
HEALTH = {
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/agentmesh.health.v1.DependencyHealthService/ListDependencies",
}


def ports() -> dict[str, int]:
    env = (ROOT / "k8s/base/config.env").read_text(encoding="utf-8")
    found = dict(re.findall(r"^([A-Z_]+)_ADDR=[^:]+:(\d+)$", env, re.M))
    return {kebab("".join(w.title() for w in k.split("_"))): int(v) for k, v in found.items()}


def principal_service(principal: str) -> str:
    match = re.fullmatch(r"cluster\.local/ns/agentmesh/sa/agentmesh-([a-z-]+)", principal)
    if not match:
        raise ValueError(f"unexpected principal {principal}")
    return match.group(1)


def selects(selector: dict, service: str) -> bool:
    labels = {"app.kubernetes.io/name": service, "app.kubernetes.io/part-of": "agentmesh"}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        if expression["operator"] != "In" or labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def policies(image_path: str) -> None:
    table = served_actors()
    public = public_rpcs(image_path)
    port = ports()
    rendered = [doc for path in os.environ["RENDERED"].split() for doc in docs(path)]
    authz = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "AuthorizationPolicy"}
    netpols = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    if not netpols or not authz:
        fail("policies: no NetworkPolicy or AuthorizationPolicy in the rendered manifests")
        return

    for service, (any_rpc, public_actors) in table.items():
        if service == "gateway":
            if "gateway" in authz:
                fail("policies: the gateway is the public entry point and has no AuthorizationPolicy")
            continue
        service_public = set().union(*(public.get(s, set()) for s in CONTRACT[service]))
        # Istio: full callers, and callers restricted to paths.
        policy = authz.get(service)
        if policy is None:
            fail(f"istio: no AuthorizationPolicy for {service}")
            continue
        if policy["spec"].get("action", "ALLOW") != "ALLOW":
            fail(f"istio: {service}: action is not ALLOW")
        full: set[str] = set()
        restricted: dict[str, set[str]] = {}
        for rule in policy["spec"].get("rules", []):
            callers = {principal_service(p) for f in rule.get("from", []) for p in f["source"].get("principals", [])}
            paths = {p for t in rule.get("to", []) for p in t["operation"].get("paths", [])}
            if rule.get("to"):
                for caller in callers:
                    restricted.setdefault(caller, set()).update(paths)
            else:
                full |= callers
        if full != any_rpc:
            fail(f"istio: {service} admits {sorted(full)} on every RPC; actors.rs says {sorted(any_rpc)}")
        for caller, paths in restricted.items():
            expected = (service_public if caller in public_actors else set()) | (HEALTH if caller == "gateway" else set())
            if paths != expected:
                fail(f"istio: {service} admits {caller} on {sorted(paths - expected) or 'too few paths'}; "
                     f"expected {sorted(expected)} (missing {sorted(expected - paths)})")
        for caller in public_actors - set(restricted) - full:
            fail(f"istio: {service} does not admit {caller} on its public RPCs")

        # NetworkPolicy: who may connect to the service's port (the gateway also for health).
        callers = any_rpc | public_actors | {"gateway"}
        allowed_in: set[str] = set()
        for netpol in netpols:
            spec = netpol["spec"]
            if "Ingress" not in spec.get("policyTypes", []) or not selects(spec["podSelector"], service):
                continue
            for rule in spec.get("ingress", []):
                if port[service] not in {p.get("port") for p in rule.get("ports", [])}:
                    continue
                if "from" not in rule:
                    allowed_in.add("*")
                for peer in rule.get("from", []):
                    if "namespaceSelector" in peer or "ipBlock" in peer:
                        allowed_in.add("outside")
                    else:
                        allowed_in.update(s for s in table if selects(peer["podSelector"], s))
        if allowed_in != callers:
            fail(f"networkpolicy: {service}:{port[service]} admits {sorted(allowed_in)}; expected {sorted(callers)}")
        for caller in callers:
            reach = False
            for netpol in netpols:
                spec = netpol["spec"]
                if "Egress" not in spec.get("policyTypes", []) or not selects(spec["podSelector"], caller):
                    continue
                for rule in spec.get("egress", []):
                    to_service = any(
                        "podSelector" in peer and "namespaceSelector" not in peer and selects(peer["podSelector"], service)
                        for peer in rule.get("to", [])
                    )
                    if to_service and port[service] in {p.get("port") for p in rule.get("ports", [])}:
                        reach = True
            if not reach:
                fail(f"networkpolicy: no egress from {caller} to {service}:{port[service]}")
    names = {d["metadata"]["name"] for d in netpols}
    for required in ("default-deny", "allow-dns"):
        if required not in names:
            fail(f"networkpolicy: {required} is missing")
    if not failures:
        print(f"policies: {len(authz)} AuthorizationPolicies and {len(netpols)} NetworkPolicies match actors.rs")


# -------------------------------------------------------------------------- envoy --
def type_urls(node):
    if isinstance(node, dict):
        if "@type" in node:
            yield node["@type"]
        for value in node.values():
            yield from type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from type_urls(value)


def envoy(config_path: str, descriptor_path: str) -> None:
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
    from google.protobuf import descriptor_pb2

    config = yaml.safe_load(open(config_path, encoding="utf-8"))
    try:
        # typed_config messages are parsed from the message pool: import their modules.
        for url in set(type_urls(config)):
            importlib.import_module("envoy_data_plane." + url.split("/", 1)[1].rsplit(".", 1)[0])
        Bootstrap.from_dict(config)
    except Exception as error:  # noqa: BLE001
        fail(f"envoy: {config_path} is not a valid v3 Bootstrap: {error}")
        return
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor_path).read_bytes())
    services = {f"{f.package}.{s.name}" for f in descriptors.file for s in f.service}
    transcoders = [
        f["typed_config"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for network in chain["filters"]
        for f in network.get("typed_config", {}).get("http_filters", [])
        if f["name"] == "envoy.filters.http.grpc_json_transcoder"
    ]
    if not transcoders:
        fail("envoy: no grpc_json_transcoder filter")
    for transcoder in transcoders:
        for name in transcoder["services"]:
            if name not in services:
                fail(f"envoy: transcoder service {name} is not in the descriptor set")
    print(f"envoy: valid v3 Bootstrap; transcoder services found among {len(services)} in the descriptor set")


# ------------------------------------------------------------------------ metrics --
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "topk",
    "bottomk", "max", "min", "avg", "count", "or", "and", "unless", "vector", "on",
    "ignoring", "group_left", "group_right", "offset", "bool", "abs", "clamp_min",
    "clamp_max", "delta", "deriv", "label_values", "le", "time", "scalar", "changes",
    "resets", "absent", "sort", "sort_desc", "round", "avg_over_time", "max_over_time",
    "min_over_time", "sum_over_time", "count_over_time", "quantile_over_time", "inf", "nan",
}
PROMETHEUS_SERIES = {"up"}  # made by Prometheus itself, not by the binaries


def exprs(node):
    if isinstance(node, dict):
        if node.get("type") == "datasource":  # a data source picker, not a query
            return
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from exprs(value)


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"label_values\(\s*([^,)]+),\s*\w+\s*\)", r"\1", expr)  # Grafana: metric, label
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)             # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)                       # matchers
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)                      # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)                       # Grafana variables
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", n)}


def metrics(scrape_path: str, files: list[str]) -> None:
    scraped = set()
    for line in Path(scrape_path).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            scraped.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    recorded = set()
    for path in files:
        if path.endswith((".yml", ".yaml")):
            for group in yaml.safe_load(open(path, encoding="utf-8")).get("groups", []):
                recorded |= {rule["record"] for rule in group["rules"] if "record" in rule}
    checked = 0
    for path in files:
        if path.endswith(".json"):
            try:
                content = json.load(open(path, encoding="utf-8"))
            except json.JSONDecodeError as error:
                fail(f"{path}: not valid JSON: {error}")
                continue
            if not content.get("panels") or not content.get("uid"):
                fail(f"{path}: not a dashboard (no uid or panels)")
        else:
            content = yaml.safe_load(open(path, encoding="utf-8"))
        for expr in exprs(content):
            for name in metric_names(expr):
                checked += 1
                if name in scraped or name in recorded or name in PROMETHEUS_SERIES:
                    continue
                fail(f"{path}: queries {name}, which the live /metrics scrape does not have "
                     f"(expression: {' '.join(expr.split())[:160]})")
    print(f"metrics: {checked} metric references in {len(files)} files, all in the scrape "
          f"({len(scraped)} series names) or recorded by a rule" if not failures else "metrics: see above")


def main() -> int:
    command, *args = sys.argv[1:]
    {"crds": lambda: crds(args), "policies": lambda: policies(*args), "envoy": lambda: envoy(*args),
     "metrics": lambda: metrics(args[0], args[1:])}[command]()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
