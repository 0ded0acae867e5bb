#!/usr/bin/env python3
"""Offline checks behind charts/test.sh: split rendered manifests, assert the chart's invariants,
extract JSON schemas from our CRDs, and assemble deploy/install.yaml.

Usage:
  check.py split FILE OUTDIR                  one JSON file per document, by kind
  check.py invariants FILE RBAC --fleets a,b  the chart's promises about rendered output
  check.py schemas CRD_DIR OUTDIR             openAPIV3Schema of each CRD as a strict JSON schema
  check.py install RENDERED CRDS_ALL OUT      the plain-manifest bundle (CRDs + namespace + chart)
"""

import json
import os
import re
import sys

import yaml

HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def split(path, outdir):
    os.makedirs(outdir, exist_ok=True)
    for n, doc in enumerate(docs(path)):
        kind = doc.get("kind", "Unknown")
        name = doc.get("metadata", {}).get("name", "unnamed")
        group = doc.get("apiVersion", "").split("/")[0] if "/" in doc.get("apiVersion", "") else "core"
        sub = os.path.join(outdir, f"{group}_{kind}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"{n:03d}-{name}.json"), "w") as f:
            json.dump(doc, f)


def container_ok(where, c):
    sc = c.get("securityContext") or {}
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(f"{where}: readOnlyRootFilesystem must be true")
    if sc.get("runAsNonRoot") is not True:
        fail(f"{where}: runAsNonRoot must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(f"{where}: allowPrivilegeEscalation must be false")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
        fail(f"{where}: capabilities must drop ALL")
    for probe in ("readinessProbe", "livenessProbe"):
        if probe not in c:
            fail(f"{where}: no {probe}")
    if not (c.get("resources") or {}).get("requests"):
        fail(f"{where}: no resource requests")


def seconds(text):
    m = re.fullmatch(r"(\d+)s", text)
    if not m:
        fail(f"cannot read duration {text!r}")
    return int(m.group(1))


def arg(container, flag):
    for a in container.get("args", []):
        if a.startswith(f"--{flag}="):
            return a.split("=", 1)[1]
    return None


def rbac_rules(objects):
    """(kind, name with the 'tollgate' prefix normalized) -> rules."""
    out = {}
    for d in objects:
        if d.get("kind") in ("ClusterRole", "Role"):
            out[(d["kind"], d["metadata"]["name"])] = d.get("rules") or []
    return out


def invariants(path, rbac_path, fleets):
    objects = docs(path)
    by_kind = {}
    for d in objects:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = by_kind.get("Deployment", [])
    controllers = [d for d in deployments if d["metadata"]["labels"].get("app.kubernetes.io/component") == "controller"]
    proxies = [d for d in deployments if d["metadata"]["labels"].get("app.kubernetes.io/component") == "proxy"]
    if len(controllers) != 1:
        fail(f"expected one controller Deployment, got {len(controllers)}")
    rendered_fleets = sorted(d["metadata"]["labels"]["tollgate.dev/fleet"] for d in proxies)
    if rendered_fleets != sorted(fleets):
        fail(f"proxy Deployments for fleets {rendered_fleets}, expected {sorted(fleets)}")

    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        name = d["metadata"]["name"]
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(f"{name}: pod securityContext must set runAsNonRoot and a RuntimeDefault seccomp profile")
        for c in spec["containers"]:
            container_ok(f"{name}/{c['name']}", c)

    controller = controllers[0]
    c = controller["spec"]["template"]["spec"]["containers"][0]
    if controller["spec"]["replicas"] < 1:
        fail("controller replicas")
    for flag in ("lease-name", "tls-cert", "tls-key", "proxy-service-accounts", "admin", "serve"):
        if arg(c, flag) is None:
            fail(f"controller: --{flag} missing")
    proxy_sa = arg(c, "proxy-service-accounts").split("/")[1]

    services = by_kind.get("Service", [])
    pdbs = by_kind.get("PodDisruptionBudget", [])
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    for d in proxies:
        name = d["metadata"]["name"]
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        if spec.get("serviceAccountName") != proxy_sa:
            fail(f"{name}: runs as {spec.get('serviceAccountName')}, but the controller accepts {proxy_sa}")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{name}: the proxy must not mount an API token")
        drain = seconds(arg(c, "drain-timeout"))
        pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        grace = spec["terminationGracePeriodSeconds"]
        if grace <= drain + pre_stop:
            fail(f"{name}: terminationGracePeriodSeconds {grace} <= drain {drain} + preStop {pre_stop}")
        selector = d["spec"]["selector"]["matchLabels"]
        if not any(s["spec"].get("selector") == selector and s["spec"]["type"] in ("LoadBalancer", "NodePort", "ClusterIP") for s in services):
            fail(f"{name}: no Service selects it")
        has_pdb = any(p["spec"]["selector"]["matchLabels"] == selector for p in pdbs)
        has_hpa = any(h["spec"]["scaleTargetRef"]["name"] == name for h in hpas)
        if has_hpa and "replicas" in d["spec"]:
            fail(f"{name}: replicas must be left to the HPA")
        if not has_hpa and "replicas" not in d["spec"]:
            fail(f"{name}: no replicas and no HPA")
        print(f"ok {name}: grace {grace}s > preStop {pre_stop}s + drain {drain}s; pdb={has_pdb} hpa={has_hpa}")
        token = [v for v in spec["volumes"] if v["name"] == "token"][0]
        audience = token["projected"]["sources"][0]["serviceAccountToken"]["audience"]
        if audience != arg(controller["spec"]["template"]["spec"]["containers"][0], "proxy-token-audience"):
            fail(f"{name}: token audience {audience} differs from the controller's")
        for v in spec["volumes"]:
            if "secret" in v and v["secret"]["secretName"].endswith("controller-tls"):
                keys = [i["key"] for i in v["secret"].get("items", [])]
                if keys != ["ca.crt"]:
                    fail(f"{name}: proxies may only mount ca.crt of the controller's Secret, got {keys}")

    # RBAC: the same rules as deploy/rbac.yaml, role by role.
    expected = {(k, n.replace("tollgate", "", 1)): r for (k, n), r in rbac_rules(docs(rbac_path)).items()}
    prefix = controller["metadata"]["name"][: -len("-controller")]
    actual = {(k, n.replace(prefix, "", 1)): r for (k, n), r in rbac_rules(objects).items()}
    if expected != actual:
        fail(f"RBAC differs from {rbac_path}:\nexpected {expected}\nrendered {actual}")
    for b in by_kind.get("ClusterRoleBinding", []) + by_kind.get("RoleBinding", []):
        for s in b.get("subjects", []):
            if s.get("name") == proxy_sa:
                fail(f"{b['metadata']['name']}: the proxy ServiceAccount must have no RBAC")
    print(f"ok RBAC: {len(actual)} roles, rules identical to {rbac_path}")


def strict(node):
    """A CRD schema as a JSON schema that, like `kubectl apply` (field validation Strict),
    rejects unknown fields."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        # OpenAPI 3.0 → JSON schema draft 7: boolean exclusive bounds and `nullable`.
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if out.get(exclusive) is True:
                out[exclusive] = out.pop(bound)
            elif out.get(exclusive) is False:
                del out[exclusive]
        if out.pop("nullable", False) and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def schemas(crd_dir, outdir):
    os.makedirs(outdir, exist_ok=True)
    for name in sorted(os.listdir(crd_dir)):
        if not name.endswith(".tollgate.dev.yaml"):
            continue
        for crd in docs(os.path.join(crd_dir, name)):
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                schema["properties"]["apiVersion"] = {"enum": [f"{crd['spec']['group']}/{version['name']}"]}
                schema["properties"]["kind"] = {"enum": [kind]}
                schema["properties"]["metadata"] = {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}},
                }
                schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
                schema["$schema"] = "http://json-schema.org/draft-07/schema#"
                with open(os.path.join(outdir, f"tollgate.dev_{kind}.json"), "w") as f:
                    json.dump(schema, f, indent=1)


def install(rendered, crds_all, out):
    lines = []
    with open(rendered) as f:
        for line in f:
            key = line.strip().split(":", 1)[0]
            if key in HELM_ONLY_LABELS:
                continue
            lines.append(line)
    with open(crds_all) as f:
        crds = f.read()
    header = (
        "# Tollgate: CRDs, controller and the default proxy fleet in namespace tollgate-system.\n"
        "# Generated by charts/test.sh from charts/tollgate with deploy/install-values.yaml; do not edit.\n"
        "# Regenerate: UPDATE=1 charts/test.sh\n"
        "# Before applying, create the controller's certificate Secret (docs/install.md):\n"
        "#   kubectl apply -f deploy/install.yaml   # after creating tollgate-system/tollgate-controller-tls\n"
    )
    namespace = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: tollgate-system\n"
    body = header + crds.rstrip("\n") + "\n" + namespace + "".join(lines)
    with open(out, "w") as f:
        f.write(body)


def main(argv):
    if len(argv) >= 3 and argv[0] == "split":
        split(argv[1], argv[2])
    elif len(argv) >= 5 and argv[0] == "invariants" and argv[3] == "--fleets":
        invariants(argv[1], argv[2], argv[4].split(","))
    elif len(argv) >= 3 and argv[0] == "schemas":
        schemas(argv[1], argv[2])
    elif len(argv) >= 4 and argv[0] == "install":
        install(argv[1], argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
