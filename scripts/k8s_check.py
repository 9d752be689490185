#!/usr/bin/env python3
"""Validates the Kubernetes deliverables under k8s/ and the Dockerfile.

Run through scripts/validate-k8s.sh, which provides a venv with kubernetes-validate,
promql-parser and dockerfile. Steps, every problem reported before exiting non-zero:

1. every kustomization.yaml lists only files and directories that exist;
2. every kustomization is rendered, with `kubectl kustomize` or `kustomize build` when one is
   installed, otherwise with a minimal built-in render (resources, generators, strategic-merge
   patches, namespace, images) that fails loudly on anything it does not implement;
3. the rendered documents, and every complete manifest that no kustomization renders (e.g. the
   example Secrets), are validated with `kubernetes-validate --strict -k <version>`; a missing
   schema is an error except for the CRD kinds checked in step 4;
4. the CRD kinds get structural checks here: PodMonitor (selects a rendered Deployment's pods
   and names one of their container ports), PrometheusRule (every expression parses as PromQL,
   `for` is a duration, severity and summary present);
5. the Grafana dashboards: JSON, a Prometheus `datasource` variable every query uses, unique
   panel ids, and every query parses as PromQL once Grafana's variables are substituted;
6. the Dockerfile parses (BuildKit's parser) and its COPY sources exist and are not excluded
   by .dockerignore;
7. `promtool check rules` on every PrometheusRule's groups and `promtool test rules` on the
   unit tests beside them (k8s/alerts/*.test.yaml); a missing promtool is an error (Debian:
   apt-get install prometheus).

Metric names in queries are checked against the binary by `cargo test --test k8s_assets`.
"""

import argparse
import base64
import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OUT = ROOT / "target" / "k8s-validate"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# Kinds kubernetes-validate has no schema for, checked structurally below instead.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}

errors = []
notes = []


def error(msg):
    errors.append(msg)
    print(f"ERROR {msg}")


def rel(p):
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# === 1. kustomization references ==========================================================


def kustomization_file(d):
    for n in KUSTOMIZATION_NAMES:
        if (d / n).is_file():
            return d / n
    return None


def generator_paths(gen):
    """Files a configMapGenerator / secretGenerator entry reads (`key=path` or `path`)."""
    out = []
    for f in gen.get("files", []) or []:
        out.append(f.split("=", 1)[1] if "=" in f else f)
    out += gen.get("envs", []) or []
    if gen.get("env"):
        out.append(gen["env"])
    return out


def referenced_paths(k):
    """(field, path) of every local file or directory a kustomization refers to."""
    refs = []
    for field in ("resources", "bases", "components", "crds", "patchesStrategicMerge"):
        for r in k.get(field, []) or []:
            if isinstance(r, str) and not re.match(r"^[a-z]+://|^github\.com/|^git@", r):
                refs.append((field, r))
    for field in ("patches", "patchesJson6902"):
        for p in k.get(field, []) or []:
            if isinstance(p, dict) and p.get("path"):
                refs.append((field, p["path"]))
    for field in ("configMapGenerator", "secretGenerator"):
        for g in k.get(field, []) or []:
            refs += [(field, p) for p in generator_paths(g)]
    return refs


def check_references(kdirs):
    for d in kdirs:
        kfile = kustomization_file(d)
        k = yaml.safe_load(kfile.read_text()) or {}
        for field, r in referenced_paths(k):
            p = (d / r).resolve()
            if not p.exists():
                error(f"{rel(kfile)}: {field} lists `{r}`, which does not exist")
            elif field in ("resources", "bases", "components") and p.is_dir() and not kustomization_file(p):
                error(f"{rel(kfile)}: {field} lists directory `{r}`, which has no kustomization.yaml")


# === 2. render ============================================================================


def kustomize_command():
    if os.environ.get("K8S_RENDER") == "builtin":
        return None
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


class Unsupported(Exception):
    pass


def smp_merge(base, patch):
    """Strategic merge for the shapes these manifests use: maps merge, lists of maps with a
    `name` merge by name, anything else replaces."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if "$patch" in patch:
            raise Unsupported("`$patch` directives")
        out = dict(base)
        for key, value in patch.items():
            out[key] = smp_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, existing in enumerate(out):
                if existing["name"] == item["name"]:
                    out[i] = smp_merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def generated(kind, gen, d):
    data = {}
    for f in gen.get("files", []) or []:
        key, path = f.split("=", 1) if "=" in f else (Path(f).name, f)
        data[key] = (d / path).read_text()
    for lit in gen.get("literals", []) or []:
        key, value = lit.split("=", 1)
        data[key] = value
    for env in (gen.get("envs", []) or []) + ([gen["env"]] if gen.get("env") else []):
        for line in (d / env).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                data[key.strip()] = value
    if kind == "Secret":
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    meta = {"name": gen["name"]}
    options = gen.get("options", {}) or {}
    if options.get("labels"):
        meta["labels"] = dict(options["labels"])
    if options.get("annotations"):
        meta["annotations"] = dict(options["annotations"])
    doc = {"apiVersion": "v1", "kind": kind, "metadata": meta, "data": data}
    if kind == "Secret":
        doc["type"] = gen.get("type", "Opaque")
    return doc


def builtin_render(d):
    """The subset of kustomize these manifests use. The generators' hash suffix is left out:
    it changes names only, not what is validated."""
    k = yaml.safe_load(kustomization_file(d).read_text()) or {}
    supported = {
        "apiVersion", "kind", "resources", "bases", "configMapGenerator", "secretGenerator",
        "patches", "patchesStrategicMerge", "namespace", "images", "generatorOptions",
    }
    extra = set(k) - supported
    if extra:
        raise Unsupported(", ".join(sorted(extra)))
    docs = []
    for r in (k.get("resources", []) or []) + (k.get("bases", []) or []):
        p = d / r
        docs += builtin_render(p) if p.is_dir() else load_all(p)
    for field, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for gen in k.get(field, []) or []:
            new = generated(kind, gen, d)
            behavior = gen.get("behavior", "create")
            existing = [x for x in docs if x.get("kind") == kind and x["metadata"]["name"] == gen["name"]]
            if behavior == "create":
                if existing:
                    raise Unsupported(f"{kind} {gen['name']} generated twice (use behavior: replace)")
                docs.append(new)
            elif not existing:
                raise Unsupported(f"behavior {behavior} of {kind} {gen['name']}, which the bases lack")
            elif behavior == "replace":
                existing[0].clear()
                existing[0].update(new)
            else:
                existing[0]["data"].update(new["data"])
    patches = [p for p in k.get("patches", []) or []] + [
        {"path": p} for p in k.get("patchesStrategicMerge", []) or []
    ]
    for p in patches:
        if "path" not in p or "target" in p:
            raise Unsupported("patches with a target or inline patch")
        for patch in load_all(d / p["path"]):
            if isinstance(patch, list):
                raise Unsupported("JSON 6902 patches")
            matched = False
            for i, doc in enumerate(docs):
                if doc.get("kind") == patch.get("kind") and doc["metadata"]["name"] == patch["metadata"]["name"]:
                    docs[i] = smp_merge(doc, patch)
                    matched = True
            if not matched:
                raise Unsupported(f"patch {p['path']} matches no resource")
    for img in k.get("images", []) or []:
        for doc in docs:
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                name = c["image"].split("@")[0].rsplit(":", 1)[0]
                if name == img["name"]:
                    c["image"] = img.get("newName", name) + (
                        "@" + img["digest"] if img.get("digest") else ":" + str(img.get("newTag", "latest"))
                    )
    if k.get("namespace"):
        for doc in docs:
            doc["metadata"]["namespace"] = k["namespace"]
    return docs


def render_all(kdirs):
    """{kustomization dir: rendered docs}, and a description of how."""
    cmd = kustomize_command()
    if cmd:
        how = " ".join(cmd)
    elif os.environ.get("K8S_RENDER") == "builtin":
        how = "the built-in minimal render (K8S_RENDER=builtin)"
    else:
        how = "the built-in minimal render (no kubectl or kustomize found)"
    rendered = {}
    for d in kdirs:
        name = rel(d)
        if cmd:
            proc = subprocess.run(cmd + [str(d)], capture_output=True, text=True)
            if proc.returncode != 0:
                error(f"{name}: {' '.join(cmd)} failed: {proc.stderr.strip()}")
                continue
            docs = [x for x in yaml.safe_load_all(proc.stdout) if x]
        else:
            try:
                docs = builtin_render(d)
            except Unsupported as e:
                error(f"{name}: the built-in render does not implement {e}; install kubectl or kustomize")
                continue
            except (OSError, KeyError, ValueError) as e:
                error(f"{name}: cannot render: {e}")
                continue
        rendered[d] = docs
    return rendered, how


# === 3. kubernetes-validate ===============================================================


def is_promtool_test(path):
    return path.name.endswith((".test.yaml", ".test.yml"))


def standalone_manifests(kdirs):
    """Complete manifests no kustomization renders (example Secrets and the like): every
    .yaml under k8s/ that is neither a kustomization nor a patch nor a rendered resource."""
    listed, patches = set(), set()
    for d in kdirs:
        k = yaml.safe_load(kustomization_file(d).read_text()) or {}
        for field, r in referenced_paths(k):
            target = (d / r).resolve()
            (patches if field in ("patches", "patchesStrategicMerge", "patchesJson6902") else listed).add(target)
    out = []
    for p in sorted(K8S.rglob("*.y*ml")):
        rp = p.resolve()
        if p.name in KUSTOMIZATION_NAMES or rp in listed or rp in patches or is_promtool_test(p):
            continue
        out.append(p)
    return out


def kubernetes_validate(files, version):
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubernetes-validate"
    )
    if not exe:
        error("kubernetes-validate is not installed (scripts/validate-k8s.sh installs it)")
        return 0
    proc = subprocess.run(
        [exe, "--strict", "--quiet", "-k", version] + [str(f) for f in files],
        capture_output=True,
        text=True,
    )
    warned = 0
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"WARN (\S+) Couldn't find schema for kind (\S+) with api version (\S+)", line)
        if m and (m.group(3), m.group(2)) in CRD_KINDS:
            warned += 1
            continue
        if line.strip():
            # A missing schema for a built-in kind means a wrong apiVersion: an error too.
            error(f"kubernetes-validate: {line}")
    if proc.returncode != 0 and not errors:
        error(f"kubernetes-validate exited {proc.returncode}")
    return warned


# === 4. CRD kinds ===========================================================================

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def parse_promql(expr, where):
    import promql_parser

    try:
        promql_parser.parse(expr)
        return True
    except Exception as e:  # the parser raises ValueError with the reason
        error(f"{where}: PromQL does not parse: {e}\n    {expr.strip()}")
        return False


def pod_templates(docs):
    for doc in docs:
        tpl = doc.get("spec", {}).get("template") if doc.get("kind") in (
            "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job") else None
        if tpl:
            yield doc, tpl


def check_podmonitor(pm, docs, where):
    spec = pm.get("spec", {})
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if not labels:
        error(f"{where}: PodMonitor {pm['metadata']['name']} has no spec.selector.matchLabels")
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints:
        error(f"{where}: PodMonitor {pm['metadata']['name']} has no podMetricsEndpoints")
    selected = [
        (doc, tpl) for doc, tpl in pod_templates(docs)
        if labels and all(tpl.get("metadata", {}).get("labels", {}).get(k) == v for k, v in labels.items())
    ]
    if not selected:
        error(f"{where}: PodMonitor {pm['metadata']['name']} selects no pod template of this render")
    for ep in endpoints:
        if not ep.get("port"):
            error(f"{where}: PodMonitor endpoint without a named port")
            continue
        for doc, tpl in selected:
            ps = tpl.get("spec", {})
            ports = {
                p.get("name")
                for c in (ps.get("containers") or []) + (ps.get("initContainers") or [])
                for p in c.get("ports") or []
            }
            if ep["port"] not in ports:
                error(f"{where}: PodMonitor port `{ep['port']}` is not a container port of {doc['kind']} {doc['metadata']['name']}")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                error(f"{where}: PodMonitor {key} `{ep[key]}` is not a duration")


def check_prometheusrule(pr, where):
    groups = pr.get("spec", {}).get("groups") or []
    if not groups:
        error(f"{where}: PrometheusRule {pr['metadata']['name']} has no groups")
    names = set()
    count = 0
    allowed = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    for g in groups:
        if g.get("name") in names:
            error(f"{where}: rule group `{g.get('name')}` appears twice")
        names.add(g.get("name"))
        for r in g.get("rules") or []:
            rid = f"{where}: {g.get('name')}/{r.get('alert') or r.get('record')}"
            if set(r) - allowed:
                error(f"{rid}: unknown keys {sorted(set(r) - allowed)}")
            if bool(r.get("alert")) == bool(r.get("record")):
                error(f"{rid}: give exactly one of alert / record")
            if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                error(f"{rid}: no expr")
                continue
            count += parse_promql(r["expr"], rid)
            if "for" in r and not DURATION.match(str(r["for"])):
                error(f"{rid}: for `{r['for']}` is not a duration")
            if r.get("alert"):
                sev = (r.get("labels") or {}).get("severity")
                if sev not in ("critical", "warning", "info"):
                    error(f"{rid}: labels.severity must be critical, warning or info")
                if not (r.get("annotations") or {}).get("summary"):
                    error(f"{rid}: annotations.summary is missing")
    return count


# === 5. dashboards ==========================================================================

GRAFANA_VARS = [
    (re.compile(r"\$__rate_interval|\$\{__rate_interval\}"), "5m"),
    (re.compile(r"\$__interval|\$\{__interval\}"), "1m"),
    (re.compile(r"\$__range|\$\{__range\}"), "1h"),
    (re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?"), ".*"),
]


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def check_dashboard(path):
    where = rel(path)
    try:
        dash = json.loads(path.read_text())
    except ValueError as e:
        error(f"{where}: not JSON: {e}")
        return 0, 0
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        error(f"{where}: schemaVersion {dash.get('schemaVersion')} (want a current one, e.g. 39)")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        error(f"{where}: needs a `datasource` template variable of type datasource, query prometheus")
    ids, exprs, panels = set(), 0, 0
    for p in all_panels(dash.get("panels", [])):
        panels += 1
        pid = p.get("id")
        if pid in ids:
            error(f"{where}: panel id {pid} is used twice")
        ids.add(pid)
        if "gridPos" not in p:
            error(f"{where}: panel {pid} ({p.get('title')}) has no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            error(f"{where}: panel {pid} ({p.get('title')}) has no queries")
        for t in targets:
            for owner in (p, t):
                uid = (owner.get("datasource") or {}).get("uid")
                if uid != "${datasource}":
                    error(f"{where}: panel {pid} ({p.get('title')}) uses datasource uid {uid!r}, not ${{datasource}}")
            expr = t.get("expr", "")
            for pattern, value in GRAFANA_VARS:
                expr = pattern.sub(value, expr)
            exprs += parse_promql(expr, f"{where}: panel {pid} ({p.get('title')}) {t.get('refId')}")
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.match(r"^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)$", q or "")
            if not m:
                error(f"{where}: variable {name}: expected label_values(selector, label), got {q!r}")
                continue
            sel = m.group(1)
            for pattern, value in GRAFANA_VARS:
                sel = pattern.sub(value, sel)
            exprs += parse_promql(sel, f"{where}: variable {name}")
    return panels, exprs


# === 6. Dockerfile ==========================================================================


def dockerignored(path, patterns):
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.rstrip("/")
        candidates = [path] + [str(Path(*Path(path).parts[:i])) for i in range(1, len(Path(path).parts))]
        if any(fnmatch.fnmatch(c, pat) or fnmatch.fnmatch(c, pat.replace("**/", "")) for c in candidates):
            ignored = not neg
    return ignored


def check_dockerfile():
    path = ROOT / "Dockerfile"
    if not path.is_file():
        error("Dockerfile is missing")
        return 0
    try:
        import dockerfile

        commands = dockerfile.parse_file(str(path))
    except Exception as e:
        error(f"Dockerfile does not parse: {e}")
        return 0
    ignore = []
    if (ROOT / ".dockerignore").is_file():
        ignore = [
            line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    for c in commands:
        if c.cmd.upper() in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                if not (ROOT / src).exists():
                    error(f"Dockerfile line {c.start_line}: COPY source `{src}` does not exist")
                elif dockerignored(src, ignore):
                    error(f"Dockerfile line {c.start_line}: COPY source `{src}` is excluded by .dockerignore")
    return len(commands)


# === 7. promtool =============================================================================


def run_promtool():
    """(rule files checked, test files run), or None when promtool is not installed.

    A missing promtool is an error, never a note: the alert rules' unit tests are part of what
    this script vouches for (.ci/run installs it)."""
    exe = shutil.which("promtool")
    if not exe:
        error("promtool is not installed, so the alert rules cannot be unit-tested: "
              "apt-get install --no-install-recommends prometheus (Debian ships promtool in it)")
        return None
    work = OUT / "promtool"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rule_files, tests = 0, 0
    for src in sorted((K8S / "alerts").glob("*.y*ml")):
        if is_promtool_test(src) or src.name in KUSTOMIZATION_NAMES:
            continue
        for doc in load_all(src):
            if doc.get("kind") != "PrometheusRule":
                continue
            out = work / src.name
            out.write_text(yaml.safe_dump(doc["spec"], sort_keys=False))
            proc = subprocess.run([exe, "check", "rules", str(out)], capture_output=True, text=True)
            if proc.returncode != 0:
                error(f"promtool check rules {rel(src)}:\n{proc.stdout}{proc.stderr}")
            rule_files += 1
    for test in sorted((K8S / "alerts").glob("*.test.y*ml")):
        shutil.copy(test, work / test.name)
        proc = subprocess.run(
            [exe, "test", "rules", test.name], cwd=work, capture_output=True, text=True
        )
        if proc.returncode != 0:
            error(f"promtool test rules {rel(test)}:\n{proc.stdout}{proc.stderr}")
        tests += 1
    return rule_files, tests


# === main ===================================================================================


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", "--kubernetes-version", default=os.environ.get("K8S_VERSION", "1.33.0"))
    args = ap.parse_args()

    kdirs = sorted({p.parent for n in KUSTOMIZATION_NAMES for p in K8S.rglob(n)})
    check_references(kdirs)
    rendered, how = render_all(kdirs)

    render_dir = OUT / "rendered"
    shutil.rmtree(render_dir, ignore_errors=True)
    render_dir.mkdir(parents=True)
    files, ndocs = [], 0
    for d, docs in rendered.items():
        f = render_dir / (rel(d).replace("/", "__") + ".yaml")
        f.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        files.append(f)
        ndocs += len(docs)
    standalone = standalone_manifests(kdirs)
    for p in standalone:
        ndocs += len(load_all(p))
    crd_warnings = kubernetes_validate(files + standalone, args.kubernetes_version) if files + standalone else 0

    exprs, crds = 0, 0
    for d, docs in rendered.items():
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key == ("monitoring.coreos.com/v1", "PodMonitor"):
                check_podmonitor(doc, docs, rel(d))
                crds += 1
            elif key == ("monitoring.coreos.com/v1", "PrometheusRule"):
                exprs += check_prometheusrule(doc, rel(d))
                crds += 1
    for p in standalone:
        for doc in load_all(p):
            if (doc.get("apiVersion"), doc.get("kind")) == ("monitoring.coreos.com/v1", "PrometheusRule"):
                exprs += check_prometheusrule(doc, rel(p))
                crds += 1

    panels = 0
    for p in sorted((K8S / "dashboards").glob("*.json")):
        n, e = check_dashboard(p)
        panels += n
        exprs += e
    docker_lines = check_dockerfile()
    promtool = run_promtool()
    promtool_summary = (
        f"promtool: {promtool[0]} rule files checked, {promtool[1]} unit-test files passed"
        if promtool
        else "promtool: not run"
    )

    print(
        f"validate-k8s: {len(kdirs)} kustomizations rendered with {how}; "
        f"{ndocs} documents in {len(files)} renders + {len(standalone)} standalone files validated "
        f"against Kubernetes {args.kubernetes_version} (strict); "
        f"{crds} CRD objects checked structurally ({crd_warnings} schema-less CRD warnings accepted); "
        f"{exprs} PromQL expressions parsed; {panels} dashboard panels; "
        f"Dockerfile: {docker_lines} instructions; {promtool_summary}"
    )
    if errors:
        print(f"validate-k8s: FAILED with {len(errors)} error(s)")
        return 1
    print("validate-k8s: OK, 0 errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
