#!/usr/bin/env python3
"""Tests of charts/lockwrap and examples/: run by tests/chart/run.sh (`make chart-test`).

Every chart test runs once per real helm binary in CHART_HELMS (helm 3 and helm 4, installed by
scripts/ensure-helm.sh): `helm lint --strict` and `helm template` of every charts/lockwrap/ci/*-values.yaml
scenario, each rendered manifest validated with kubernetes-validate (strict: unknown fields are
errors) at the oldest Kubernetes version the chart supports and the newest one kubernetes-validate
knows, what each mode must render, bad values rejected with helm's own schema messages and the
chart's `fail` messages, and `helm package`. The Prometheus Operator kinds (ServiceMonitor,
PrometheusRule) are CRDs, which kubernetes-validate has no schemas for: their structure is checked
here instead. Also validates the plain manifests in examples/k8s/ and lints the example scripts.
Ends with `N passed, M failed`.
"""
import base64
import copy
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

from kit.agent import DevAgent, free_port, http_get
from kit.procs import wait_until
from kit.runner import Skip, Tally, run_tests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "charts", "lockwrap")
SCENARIOS = sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))
RELEASE = "release-name"  # what `helm template` calls a release when given no name

# The helm binaries every chart test runs with (scripts/ensure-helm.sh installs helm3 and helm4).
HELMS = os.environ.get("CHART_HELMS", "").split() or sorted(
    glob.glob(os.path.join(ROOT, ".tools", "bin", "helm[0-9]")))
# Helm's own state (repository cache, config) stays under .tools, away from the user's.
HELM_ENV = dict(os.environ, **{f"HELM_{k}_HOME": os.path.join(ROOT, ".tools", "helm-home", k.lower())
                               for k in ("CACHE", "CONFIG", "DATA")},
                KUBECONFIG=os.path.join(ROOT, ".tools", "helm-home", "no-kubeconfig"))


class Helm:
    """The helm binary the tests currently run with; `major` picks version-specific messages."""
    path = None
    major = None
    name = None

    @classmethod
    def use(cls, path):
        out = subprocess.run([path, "version", "--short"], capture_output=True, text=True,
                             env=HELM_ENV, check=True).stdout.strip()
        cls.path, cls.major, cls.name = path, int(out.lstrip("v").split(".")[0]), f"helm {out}"


def helm(*args, check=False):
    return subprocess.run([Helm.path, *args], capture_output=True, text=True, env=HELM_ENV,
                          check=check)


# Kubernetes versions every rendered manifest is validated at: the oldest the chart supports
# (Chart.yaml kubeVersion) and the newest kubernetes-validate has schemas for.
_kube_min = re.match(r"^>=\s*(\d+\.\d+)", yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))["kubeVersion"])
KUBE_VERSIONS = (_kube_min.group(1) + ".0", kubernetes_validate.latest_version())
# Custom resources of the Prometheus Operator: kubernetes-validate knows only built-in kinds.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

TESTS = []  # (name, fn, per_helm): per_helm tests run once with every helm, the others once


def test(fn):
    TESTS.append((fn.__name__, fn, True))
    return fn


def test_once(fn):
    TESTS.append((fn.__name__, fn, False))
    return fn


# ---------------------------------------------------------------------------------------------
# helpers


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def deep_merge(base, override):
    """Helm's coalescing of user values over chart defaults: maps merge, null deletes."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


SCHEMA = json.load(open(os.path.join(CHART, "values.schema.json")))
DEFAULTS = load_yaml(os.path.join(CHART, "values.yaml"))


def schema_errors(values):
    v = jsonschema.Draft7Validator(SCHEMA)
    return sorted(
        ("/".join(str(p) for p in e.absolute_path) or "(root)") + ": " + e.message
        for e in v.iter_errors(values)
    )


class RenderError(Exception):
    pass


def value_args(values=None, files=(), sets=()):
    """helm's -f/--set arguments; `values` (a dict) goes through a temporary file, removed by the caller."""
    args, tmp = [], None
    for f in files:
        args += ["-f", f]
    if values is not None:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(values, tmp)
        tmp.close()
        args += ["-f", tmp.name]
    for s in sets:
        args += ["--set", s]
    return args, tmp


def render(values=None, files=(), sets=(), notes=False, chart=CHART):
    """`helm template` the chart; returns (documents, notes_text). Raises RenderError with helm's
    message. NOTES.txt is not part of `helm template`: with notes=True it comes from
    `helm install --dry-run=client`, which helm 4 runs without a cluster; helm 3's needs a reachable
    cluster, so there notes_text is None."""
    args, tmp = value_args(values, files, sets)
    try:
        p = helm("template", RELEASE, chart, *args)
        text = None
        if notes and p.returncode == 0 and Helm.major >= 4:
            n = helm("install", RELEASE, chart, "--dry-run=client", *args)
            if n.returncode != 0:
                raise RenderError(n.stderr.strip())
            text = n.stdout.split("\nNOTES:\n", 1)[1]
    finally:
        if tmp:
            os.unlink(tmp.name)
    if p.returncode != 0:
        raise RenderError(p.stderr.strip())
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    return docs, text


def k8s_validate(doc, where):
    """Validates one manifest at every version of KUBE_VERSIONS; False for a CRD kind it cannot check."""
    if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS:
        return False
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            raise AssertionError(f"{where}: Kubernetes {version}: {doc.get('kind')}/{doc['metadata'].get('name')}: "
                                 f"{path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            raise AssertionError(f"{where}: Kubernetes {version}: {e.message}")
    return True


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(docs):
    dep = by_kind(docs, "Deployment")
    if dep:
        return dep[0]["spec"]["template"]["spec"]
    return one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container(containers, name):
    for c in containers or []:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in {[c['name'] for c in containers or []]}")


def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def scenario(name):
    return os.path.join(CHART, "ci", name)


_cache = {}


def rendered(name):
    key = (Helm.path, name)
    if key not in _cache:
        _cache[key] = render(files=[scenario(name)], notes=True)
    return _cache[key]


def expect_render_error(values, needle, where=None):
    """Rendering fails with the chart's own message (`fail`/`required`), at `where` if given."""
    try:
        render(values=values)
    except RenderError as e:
        assert needle in str(e), f"error does not say {needle!r}: {e}"
        assert where is None or f"execution error at (lockwrap/templates/{where}" in str(e), \
            f"error not raised in {where}: {e}"
        return
    raise AssertionError(f"rendering succeeded, expected an error containing {needle!r}")


SCHEMA_FAILURE = "values don't meet the specifications of the schema(s) in the following chart(s):\nlockwrap:"


def expect_schema_error(values, by_major):
    """helm rejects the values against values.schema.json with its own message, which differs
    between helm 3 (gojsonschema) and helm 4 (santhosh-tekuri/jsonschema): by_major = {3: …, 4: …}."""
    needle = by_major[Helm.major]
    # Any draft-07 validator rejects them too (helm validates the values coalesced with the defaults).
    assert schema_errors(deep_merge(DEFAULTS, values)), f"draft-07 accepts {values}"
    try:
        render(values=values)
    except RenderError as e:
        assert SCHEMA_FAILURE in str(e), f"not a schema failure: {e}"
        assert f"- {needle}" in str(e), f"schema error does not say {needle!r}: {e}"
        return
    raise AssertionError(f"rendering succeeded, expected the schema error {needle!r}")


# The values the chart has no default for: the lockwrap image (no public registry serves it), the
# app's image and command, the Consul address.
BASE = {"consul": {"address": "consul:8500"}, "image": {"repository": "registry.example/lockwrap"},
        "app": {"image": {"repository": "example/app", "tag": "1.0"}, "command": ["/app"]}}

# Containers running lockwrap's own image; the others (app, lockwrap-job) run the app's image.
LOCKWRAP_CONTAINERS = {"lockwrap-install", "lockwrap"}


def with_base(extra):
    return deep_merge(BASE, extra)


# ---------------------------------------------------------------------------------------------
# every scenario: helm lint, render, Kubernetes validation, NOTES, shared invariants


def scenario_tests(path):
    name = os.path.basename(path)

    def lint_strict():
        # --strict turns warnings into failures; the chart must not even get an [INFO] remark.
        p = helm("lint", "--strict", CHART, "-f", path)
        assert p.returncode == 0, p.stdout + p.stderr
        remarks = [line for line in p.stdout.splitlines() if line.startswith("[")]
        assert not remarks, remarks

    def renders_valid_manifests():
        docs, _ = rendered(name)
        assert docs, "nothing rendered"
        checked = [d for d in docs if k8s_validate(d, name)]
        # Only the Prometheus Operator kinds lack schemas; their tests check their structure.
        assert len(docs) - len(checked) == len(by_kind(docs, "ServiceMonitor") + by_kind(docs, "PrometheusRule"))

    def notes_render():
        _, notes = rendered(name)
        if notes is None:
            raise Skip("helm 3's install --dry-run needs a reachable cluster to print NOTES.txt")
        assert "lockwrap" in notes and "helm test" in notes, "NOTES.txt did not render"

    def invariants():
        docs, _ = rendered(name)
        values = deep_merge(DEFAULTS, load_yaml(path))
        spec = pod_spec(docs)
        lw = values["lockwrap"]
        assert spec["terminationGracePeriodSeconds"] > lw["killGraceSeconds"] + lw["releaseAllowanceSeconds"]
        assert spec["automountServiceAccountToken"] is False
        # The pod level sets nothing that would change the app's user (it keeps its own).
        assert not {"runAsUser", "runAsGroup", "runAsNonRoot"} & set(spec.get("securityContext", {}))
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            if c["name"] not in LOCKWRAP_CONTAINERS:
                assert sc == values["app"]["securityContext"], f"{c['name']}: not the app's own securityContext"
                continue
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532, f"{c['name']}: not uid 65532"
            assert sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: root FS not read-only"
            assert sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: privilege escalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{c['name']}: capabilities kept"
            argv = c.get("command", []) + c.get("args", [])
            if "run" in argv[1:2] or "sidecar" in argv[:1]:
                env = env_of(c)
                assert env["CONSUL_HTTP_ADDR"] == values["consul"]["address"]
                # Pods talk to a remote agent/server: its serfHealth must not bind the session.
                assert env["LOCKWRAP_SESSION_CHECKS"] == lw["sessionChecks"]
                assert "CONSUL_HTTP_TOKEN" not in env, "token must come from a file"
                assert not any(a.startswith("--consul-token") for a in argv), "token in args"
        # The token never appears in plain text anywhere (only base64 in its Secret).
        token = values["consul"]["token"].get("value")
        if token:
            dump = yaml.safe_dump_all(docs)
            assert token not in dump, "token in plain text in the manifests"
        for d in docs:
            labels = d["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/managed-by") == "Helm", f"{d['kind']} lacks standard labels"

    for suffix, fn in (("lint_strict", lint_strict), ("renders_valid_k8s", renders_valid_manifests),
                       ("notes", notes_render), ("invariants", invariants)):
        fn.__name__ = f"{name}: {suffix}"
        TESTS.append((fn.__name__, fn, True))


for _path in SCENARIOS:
    scenario_tests(_path)


# ---------------------------------------------------------------------------------------------
# what each mode renders


@test
def wrapper_mode_wraps_the_app_command_and_readiness_holder_probes_readyz():
    docs, _ = rendered("wrapper-deployment-values.yaml")
    values = load_yaml(scenario("wrapper-deployment-values.yaml"))
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    spec = dep["spec"]["template"]["spec"]
    app = container(spec["containers"], "app")
    cmd = app["command"]
    assert cmd[:2] == ["/lockwrap/lockwrap", "run"], cmd
    assert cmd[cmd.index("--key") + 1] == "service/release-name-lockwrap/leader"
    assert cmd[cmd.index("--http-addr") + 1] == "0.0.0.0:8480"
    assert cmd[cmd.index("--") + 1:] == values["app"]["command"], cmd
    assert "args" not in app
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8480}
    assert app["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8480}
    env = env_of(app)
    assert env["LOCKWRAP_SESSION_TTL"] == "20s" and env["LOCKWRAP_LOCK_DELAY"] == "10s"
    assert env["LOCKWRAP_KILL_GRACE"] == "8s" and env["CONSUL_DATACENTER"] == "dc1"
    install = container(spec["initContainers"], "lockwrap-install")
    assert install["image"] == "registry.example/lockwrap:0.1.0"
    assert install["command"] == ["/lockwrap", "install", "/shared/lockwrap"]
    assert {"name": "lockwrap-bin", "mountPath": "/shared"} in install["volumeMounts"]
    assert {"name": "lockwrap-bin", "mountPath": "/lockwrap", "readOnly": True} in app["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in app["volumeMounts"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in vols["lockwrap-bin"] and "emptyDir" in vols["tmp"]
    ports = {p["name"]: p["containerPort"] for p in app["ports"]}
    assert ports == {"http": 8080, "lockwrap": 8480}
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == "8480" and ann["example.com/team"] == "platform"
    svc = one(docs, "Service")
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("http", 80, 8080), ("lockwrap", 8480, 8480)}
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == "100%"


@test
def readiness_holder_pdb_lets_the_not_ready_standbys_and_the_holder_be_evicted():
    docs, _ = rendered("wrapper-deployment-values.yaml")
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 3, pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


@test
def minimal_values_derive_the_key_from_the_release_and_create_a_service_account():
    docs, notes = rendered("minimal-values.yaml")
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    sa = one(docs, "ServiceAccount")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    cmd = container(dep["spec"]["template"]["spec"]["containers"], "app")["command"]
    assert "service/release-name-lockwrap/leader" in cmd
    assert notes is None or "service/release-name-lockwrap/leader" in notes
    docs2, _ = render(files=[scenario("minimal-values.yaml")], sets=["fullnameOverride=billing"])
    cmd2 = container(pod_spec(docs2)["containers"], "app")["command"]
    assert "service/billing/leader" in cmd2


@test
def sidecar_mode_runs_a_native_sidecar_with_leader_endpoint_and_status_file():
    docs, _ = rendered("sidecar-deployment-values.yaml")
    spec = pod_spec(docs)
    side = container(spec["initContainers"], "lockwrap")
    assert side["restartPolicy"] == "Always"
    args = side["args"]
    assert args[:3] == ["sidecar", "--key", "service/release-name-lockwrap/leader"], args
    assert args[args.index("--http-addr") + 1] == "0.0.0.0:8480"
    assert args[args.index("--status-file") + 1] == "/var/run/lockwrap/status.json"
    assert "-v" in args
    assert env_of(side)["LOCKWRAP_WEBHOOK"].startswith("http://")
    assert side["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "lockwrap-status", "mountPath": "/var/run/lockwrap"} in side["volumeMounts"]
    app = container(spec["containers"], "app")
    assert "command" not in app, "sidecar mode must keep the image's ENTRYPOINT"
    assert app["args"] == ["--leader-url", "http://localhost:8480/leader"]
    assert app["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 9000}
    assert {"name": "lockwrap-status", "mountPath": "/var/run/lockwrap", "readOnly": True} in app["volumeMounts"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["lockwrap-status"]["emptyDir"]["medium"] == "Memory"
    assert "lockwrap-bin" not in vols
    svc = one(docs, "Service")
    assert {p["name"] for p in svc["spec"]["ports"]} == {"api", "lockwrap"}
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@test
def sidecar_classic_mode_gates_app_readiness_on_the_sidecar_readyz():
    docs, _ = rendered("sidecar-classic-gated-values.yaml")
    spec = pod_spec(docs)
    assert "initContainers" not in spec
    side = container(spec["containers"], "lockwrap")
    assert "restartPolicy" not in side and "--exit-on-loss" in side["args"]
    app = container(spec["containers"], "app")
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8480}
    assert "livenessProbe" not in app
    # Only the holder is Ready: the automatic maxUnavailable lets the holder be evicted.
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 2
    assert "annotations" not in one(docs, "Deployment")["spec"]["template"]["metadata"]


@test
def init_mode_runs_the_job_under_the_lock_before_an_unwrapped_app():
    docs, _ = rendered("init-deployment-values.yaml")
    spec = pod_spec(docs)
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["lockwrap-install", "lockwrap-job"], names
    job = container(spec["initContainers"], "lockwrap-job")
    cmd = job["command"]
    assert cmd[:2] == ["/lockwrap/lockwrap", "run"]
    assert cmd[cmd.index("--timeout") + 1] == "600s"
    assert cmd[cmd.index("--") + 1:] == ["/app/shop", "migrate", "--to", "latest"]
    assert "--http-addr" not in cmd
    assert job["image"] == "example/shop:5.2.0"
    assert env_of(job)["CONSUL_HTTP_ADDR"] == "consul-server.consul.svc:8500"
    assert "DATABASE_URL" in [e["name"] for e in job["env"]]
    app = container(spec["containers"], "app")
    assert app["command"] == ["/app/shop"] and app["args"] == ["serve", "--port", "8080"]
    assert "env" not in app
    assert app["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "affinity" not in spec
    svc = one(docs, "Service")
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@test
def cronjob_skip_wraps_every_run_non_blocking_and_a_skipped_run_succeeds():
    docs, notes = rendered("cronjob-skip-values.yaml")
    assert not by_kind(docs, "Deployment") and not by_kind(docs, "Service")
    assert not by_kind(docs, "PodDisruptionBudget")
    cj = one(docs, "CronJob")
    assert cj["spec"]["schedule"] == "0 3 * * *" and cj["spec"]["timeZone"] == "Europe/Berlin"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    job = cj["spec"]["jobTemplate"]["spec"]
    # A skipped run exits 0 (--locked-exit-code 0, README "Exit codes"): no failed Job, no rule
    # that fails the Job on an exit code (the app's own 100 is an ordinary failure).
    assert all(r["action"] != "FailJob" for r in job["podFailurePolicy"]["rules"])
    spec = job["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    app = container(spec["containers"], "app")
    cmd = app["command"]
    assert cmd[:2] == ["/lockwrap/lockwrap", "run"] and "--non-blocking" in cmd
    assert cmd[cmd.index("--locked-exit-code") + 1] == "0"
    assert cmd.index("--locked-exit-code") < cmd.index("--")
    assert cmd[cmd.index("--key") + 1] == "jobs/nightly-report"
    assert cmd[cmd.index("--") + 1:] == ["/usr/local/bin/nightly-report", "--all-tenants"]
    assert "--http-addr" not in cmd and "readinessProbe" not in app and "livenessProbe" not in app
    assert "CONSUL_HTTP_SSL" not in env_of(app), "the address already says https://"
    assert notes is None or "create job --from=cronjob/" in notes


@test
def cronjob_wait_waits_with_a_timeout_instead_of_skipping():
    docs, _ = rendered("cronjob-wait-values.yaml")
    cj = one(docs, "CronJob")
    assert "startingDeadlineSeconds" not in cj["spec"]
    job = cj["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 3000 and job["backoffLimit"] == 1
    assert all(r["action"] != "FailJob" for r in job["podFailurePolicy"]["rules"])
    cmd = container(job["template"]["spec"]["containers"], "app")["command"]
    assert "--non-blocking" not in cmd and cmd[cmd.index("--timeout") + 1] == "600s"
    assert "--locked-exit-code" not in cmd, "a run that waited in vain is a failed run"


@test
def tls_and_token_come_from_mounted_secrets():
    docs, _ = rendered("tls-token-secret-values.yaml")
    assert not by_kind(docs, "Secret") and not by_kind(docs, "ServiceAccount")
    spec = pod_spec(docs)
    assert spec["serviceAccountName"] == "scheduler"
    app = container(spec["containers"], "app")
    env = env_of(app)
    tls_dir = "/var/run/secrets/lockwrap/consul-tls"
    assert env["CONSUL_HTTP_SSL"] == "true"
    assert env["CONSUL_CACERT"] == f"{tls_dir}/ca.crt"
    assert env["CONSUL_CLIENT_CERT"] == f"{tls_dir}/tls.crt"
    assert env["CONSUL_CLIENT_KEY"] == f"{tls_dir}/tls.key"
    assert env["CONSUL_TLS_SERVER_NAME"] == "server.eu-west-1.consul"
    assert env["CONSUL_DATACENTER"] == "eu-west-1"
    assert env["CONSUL_HTTP_TOKEN_FILE"] == "/var/run/secrets/lockwrap/consul-token/token"
    assert "CONSUL_HTTP_SSL_VERIFY" not in env
    mounts = {m["name"]: m for m in app["volumeMounts"]}
    assert mounts["consul-tls"]["mountPath"] == tls_dir and mounts["consul-tls"]["readOnly"]
    assert mounts["consul-token"]["mountPath"] == "/var/run/secrets/lockwrap/consul-token"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["consul-tls"]["secret"]["secretName"] == "consul-client-tls"
    assert vols["consul-token"]["secret"]["secretName"] == "lockwrap-consul-acl"
    assert vols["consul-token"]["secret"]["items"] == [{"key": "secret-id", "path": "token"}]


@test
def created_token_secret_is_mounted_and_rolls_the_pods_on_change():
    docs, _ = rendered("token-create-values.yaml")
    values = load_yaml(scenario("token-create-values.yaml"))
    sec = one(docs, "Secret")
    assert sec["metadata"]["name"] == "lab-singleton-consul-token"
    assert base64.b64decode(sec["data"]["token"]).decode() == values["consul"]["token"]["value"]
    dep = one(docs, "Deployment")
    assert dep["metadata"]["name"] == "lab-singleton"
    assert "checksum/consul-token" in dep["spec"]["template"]["metadata"]["annotations"]
    spec = dep["spec"]["template"]["spec"]
    env = env_of(container(spec["containers"], "app"))
    assert env["CONSUL_HTTP_SSL_VERIFY"] == "false" and "CONSUL_HTTP_SSL" not in env
    assert "CONSUL_CACERT" not in env
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["consul-token"]["secret"]["secretName"] == "lab-singleton-consul-token"
    test_pod = [d for d in by_kind(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert test_pod and "lab-singleton:8480/leader" in test_pod[0]["spec"]["containers"][0]["command"][2]


@test
def hooks_verbosity_and_extra_args_go_before_the_double_dash():
    docs, _ = rendered("hooks-values.yaml")
    dep = one(docs, "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    spec = dep["spec"]["template"]["spec"]
    app = container(spec["containers"], "app")
    cmd = app["command"]
    head = cmd[:cmd.index("--")]
    for flag in ("--on-acquired=/hooks/on-acquired", "--on-lost=/hooks/on-lost",
                 "--on-released=/hooks/on-released", "-vv", "--monitor-retry"):
        assert flag in head, f"{flag} missing before --: {cmd}"
    assert cmd[cmd.index("--") + 1:] == ["/bin/billing"]
    env = env_of(app)
    assert env["LOCKWRAP_HEALTH_CHECK_TTL"] == "10s" and env["LOCKWRAP_LAYOUT"] == "consul-lock"
    assert env["LOCKWRAP_HOOK_TIMEOUT"] == "10s" and env["LOCKWRAP_LOG_FORMAT"] == "text"
    assert env["LOCKWRAP_SESSION_NAME"] == "billing-leader" and env["BILLING_MODE"] == "active"
    assert {"name": "hooks", "mountPath": "/hooks", "readOnly": True} in app["volumeMounts"]
    req = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert req[0]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["priorityClassName"] == "high-priority"


@test
def helm_test_pod_is_a_test_hook_checking_leader_or_consul():
    for name, needle in (("wrapper-deployment-values.yaml", "/leader"),
                         ("init-deployment-values.yaml", "/v1/status/leader"),
                         ("cronjob-skip-values.yaml", "https://consul.example.internal:8501/v1/status/leader"),
                         ("tls-token-secret-values.yaml", "/leader")):
        docs, _ = rendered(name)
        pods = by_kind(docs, "Pod")
        assert len(pods) == 1, name
        pod = pods[0]
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert pod["spec"]["restartPolicy"] == "Never"
        script = pod["spec"]["containers"][0]["command"][2]
        assert needle in script, f"{name}: {script}"
    docs, _ = rendered("wrapper-deployment-values.yaml")
    assert '"isLeader": *true' in by_kind(docs, "Pod")[0]["spec"]["containers"][0]["command"][2]


# ---------------------------------------------------------------------------------------------
# rejected values


@test
def schema_rejects_replicas_given_as_a_word():
    expect_schema_error(with_base({"replicas": "two"}), {
        3: "replicas: Invalid type. Expected: integer, given: string",
        4: "at '/replicas': got string, want integer"})


@test
def schema_rejects_a_missing_consul_address():
    expect_schema_error({"app": {"command": ["/app"]}}, {
        3: "consul: address is required",
        4: "at '/consul': missing property 'address'"})
    expect_schema_error(with_base({"consul": {"address": ""}}), {
        3: "consul.address: String length must be greater than or equal to 1",
        4: "at '/consul/address': minLength: got 0, want 1"})


@test
def schema_rejects_unknown_keys():
    expect_schema_error(with_base({"replicaCount": 2}), {
        3: "(root): Additional property replicaCount is not allowed",
        4: "at '': additional properties 'replicaCount' not allowed"})
    expect_schema_error(with_base({"metrics": {"serviceMonitor": {"intervall": "1m"}}}), {
        3: "metrics.serviceMonitor: Additional property intervall is not allowed",
        4: "at '/metrics/serviceMonitor': additional properties 'intervall' not allowed"})


@test
def schema_rejects_bad_enums():
    expect_schema_error(with_base({"mode": "leader"}), {
        3: 'mode: mode must be one of the following: "wrapper", "sidecar", "init"',
        4: "at '/mode': value must be one of 'wrapper', 'sidecar', 'init'"})
    expect_schema_error(with_base({"workload": "statefulset"}), {
        3: 'workload: workload must be one of the following: "deployment", "cronjob"',
        4: "at '/workload': value must be one of 'deployment', 'cronjob'"})
    expect_schema_error(with_base({"cronjob": {"onLocked": "queue"}}), {
        3: 'cronjob.onLocked: cronjob.onLocked must be one of the following: "skip", "wait"',
        4: "at '/cronjob/onLocked': value must be one of 'skip', 'wait'"})


@test
def schema_rejects_out_of_range_and_malformed_values():
    expect_schema_error(with_base({"lockwrap": {"sessionTTLSeconds": 5}}), {
        3: "lockwrap.sessionTTLSeconds: Must be greater than or equal to 10",
        4: "at '/lockwrap/sessionTTLSeconds': minimum: got 5, want 10"})
    expect_schema_error(with_base({"lockwrap": {"lockDelaySeconds": 61}}), {
        3: "lockwrap.lockDelaySeconds: Must be less than or equal to 60",
        4: "at '/lockwrap/lockDelaySeconds': maximum: got 61, want 60"})
    expect_schema_error(with_base({"lockwrap": {"key": "/leading/slash"}}), {
        3: "lockwrap.key: Does not match pattern",
        4: "at '/lockwrap/key': '/leading/slash' does not match pattern"})
    expect_schema_error(with_base({"metrics": {"prometheusRule": {"noHolder": {"for": "5 minutes"}}}}), {
        3: "metrics.prometheusRule.noHolder.for: Does not match pattern",
        4: "at '/metrics/prometheusRule/noHolder/for': '5 minutes' does not match pattern"})


@test
def lint_strict_fails_on_bad_values():
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(with_base({"replicas": "two"}), f)
        f.flush()
        p = helm("lint", "--strict", CHART, "-f", f.name)
    assert p.returncode != 0, p.stdout
    assert "[ERROR]" in p.stdout and "replicas" in p.stdout, p.stdout


@test
def rendering_fails_when_termination_grace_is_too_short():
    expect_render_error(with_base({"terminationGracePeriodSeconds": 12}),
                        "terminationGracePeriodSeconds (12) must exceed lockwrap.killGraceSeconds + "
                        "lockwrap.releaseAllowanceSeconds (5 + 10 = 15)", where="deployment.yaml")
    expect_render_error(with_base({"terminationGracePeriodSeconds": 15}), "set it to at least 16")
    render(values=with_base({"terminationGracePeriodSeconds": 16}))


@test
def rendering_refuses_timing_lockwrap_would_refuse():
    # The start-up checks of lockwrap's timing model (docs/timing.md) fail the render instead of
    # every pod.
    expect_render_error(with_base({"lockwrap": {"takeoverDelaySeconds": 2}}),
                        "lockwrap.takeoverDelaySeconds (2) must be at least killGraceSeconds + 1 (6)")
    expect_render_error(with_base({"lockwrap": {"sessionChecks": "serfHealth", "lockDelaySeconds": 1,
                                                "takeoverDelaySeconds": 6}}),
                        "lockDelaySeconds + takeover delay (7) must be at least killGraceSeconds + 3 (8) (docs/timing.md); or use sessionChecks")
    # A node force-left under a holder cut off from its agent: lock-delay + takeover delay.
    expect_render_error(with_base({"lockwrap": {"lockDelaySeconds": 0, "takeoverDelaySeconds": 6}}),
                        "lockDelaySeconds + takeover delay (6) must be at least killGraceSeconds + 3 (8): "
                        "a node force-left")
    # The default takeover delay adapts to a short lock-delay: max(G + 1, G + 3 − L).
    docs, _ = render(values=with_base({"lockwrap": {"lockDelaySeconds": 0}}))
    env = env_of(container(pod_spec(docs)["containers"], "app"))
    assert env["LOCKWRAP_TAKEOVER_DELAY"] == "8s", env
    # Accepted with the explicit flag, which reaches lockwrap.
    docs, _ = render(values=with_base({"lockwrap": {"takeoverDelaySeconds": 0, "unsafeAllowOverlap": True}}))
    env = env_of(container(pod_spec(docs)["containers"], "app"))
    assert env["LOCKWRAP_TAKEOVER_DELAY"] == "0s" and env["LOCKWRAP_UNSAFE_ALLOW_OVERLAP"] == "true"
    # Defaults: TTL-only sessions, takeover delay = kill grace + 1 s, no unsafe flag.
    docs, _ = render(values=with_base({}))
    env = env_of(container(pod_spec(docs)["containers"], "app"))
    assert env["LOCKWRAP_SESSION_CHECKS"] == "none" and env["LOCKWRAP_TAKEOVER_DELAY"] == "6s", env
    assert "LOCKWRAP_UNSAFE_ALLOW_OVERLAP" not in env


@test
def consul_scope_and_basic_auth_reach_lockwrap_from_values_and_a_secret():
    docs, _ = rendered("consul-scope-auth-values.yaml")
    app = container(pod_spec(docs)["containers"], "app")
    env = {e["name"]: e for e in app["env"]}
    assert env["CONSUL_NAMESPACE"]["value"] == "team-a"
    assert env["CONSUL_PARTITION"]["value"] == "payments"
    assert env["CONSUL_HTTP_AUTH"]["valueFrom"] == {
        "secretKeyRef": {"name": "consul-proxy-auth", "key": "credentials"}}
    assert "value" not in env["CONSUL_HTTP_AUTH"], "basic auth must come from the Secret"
    # Unset by default: nothing is sent.
    docs, _ = render(values=with_base({}))
    names = {e["name"] for e in container(pod_spec(docs)["containers"], "app")["env"]}
    assert not names & {"CONSUL_NAMESPACE", "CONSUL_PARTITION", "CONSUL_HTTP_AUTH"}, names


@test
def unix_socket_agent_is_mounted_from_the_node_read_only():
    docs, _ = rendered("unix-socket-values.yaml")
    spec = pod_spec(docs)
    mounts = [m for c in spec.get("initContainers", []) + spec["containers"]
              for m in c.get("volumeMounts", []) if m["name"] == "consul-socket"]
    assert mounts and all(m == {"name": "consul-socket", "mountPath": "/var/run/consul",
                                "readOnly": True} for m in mounts), mounts
    vols = [v for v in spec["volumes"] if v["name"] == "consul-socket"]
    # The directory, not the socket file: an agent restart makes a new socket inode.
    assert vols == [{"name": "consul-socket",
                     "hostPath": {"path": "/var/run/consul", "type": "Directory"}}], vols
    # Init mode: the `helm test` pod asks the agent over the same socket.
    docs, _ = render(values=with_base({"consul": {"address": "unix:///run/c/consul.sock"},
                                       "mode": "init", "initJob": {"command": ["/x"]}}))
    test_pod = next(d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test")
    script = test_pod["spec"]["containers"][0]["command"][-1]
    assert '--unix-socket "/run/c/consul.sock"' in script and "http://localhost/v1/status/leader" in script
    assert test_pod["spec"]["volumes"][0]["hostPath"]["path"] == "/run/c"
    # Opt out: the user brings the socket in; no hostPath from the chart.
    docs, _ = render(values=with_base({"consul": {"address": "unix:///run/c/consul.sock",
                                                  "mountSocketFromHost": False}}))
    assert not any(v["name"] == "consul-socket" for v in pod_spec(docs).get("volumes", []))
    # TLS cannot apply to a local socket: refused by the schema.
    expect_schema_error(with_base({"consul": {"address": "unix:///run/c/consul.sock",
                                              "tls": {"enabled": True}}}), {
        3: "consul.tls.enabled: consul.tls.enabled does not match: false",
        4: "at '/consul/tls/enabled': value must be false"})


@test
def fast_failover_preset_sets_the_tested_timing():
    docs, _ = rendered("fast-failover-values.yaml")
    env = env_of(container(pod_spec(docs)["containers"], "app"))
    want = {"LOCKWRAP_SESSION_CHECKS": "none", "LOCKWRAP_HEALTH_CHECK_TTL": "2s",
            "LOCKWRAP_LOCK_DELAY": "0s", "LOCKWRAP_KILL_GRACE": "1s", "LOCKWRAP_TAKEOVER_DELAY": "4s"}
    assert {k: env.get(k) for k in want} == want, env


@test
def schema_rejects_bad_combinations():
    # The cross-field rules draft-07 can say (if/then in values.schema.json); helm 3 adds
    # 'Must validate "then" as "if" was valid', helm 4 nests the failure under "'allOf' failed".
    expect_schema_error({"consul": {"address": "c:8500"}}, {
        3: "app.command: Array must have at least 1 items",
        4: "at '/app/command': minItems: got 0, want 1"})
    # null deletes the default: the property is missing (with_base would drop it before helm sees it).
    expect_schema_error({"consul": {"address": "c:8500"}, "app": {"command": None}}, {
        3: "app: command is required",
        4: "at '/app': missing property 'command'"})
    expect_schema_error(with_base({"workload": "cronjob", "mode": "sidecar"}), {
        3: 'mode: mode does not match: "wrapper"',
        4: "at '/mode': value must be 'wrapper'"})
    expect_schema_error(with_base({"mode": "init"}), {
        3: "initJob.command: Array must have at least 1 items",
        4: "at '/initJob/command': minItems: got 0, want 1"})
    expect_schema_error(dict(BASE, mode=None), {
        3: "(root): mode is required",
        4: "at '': missing property 'mode'"})
    expect_schema_error(dict(BASE, workload=None), {
        3: "(root): workload is required",
        4: "at '': missing property 'workload'"})
    expect_schema_error(with_base({"consul": {"token": {"create": True}}}), {
        3: "consul.token.value: String length must be greater than or equal to 1",
        4: "at '/consul/token/value': minLength: got 0, want 1"})
    expect_schema_error(with_base({"consul": {"tls": {"enabled": True, "clientAuth": True}}}), {
        3: "consul.tls.existingSecret: String length must be greater than or equal to 1",
        4: "at '/consul/tls/existingSecret': minLength: got 0, want 1"})
    expect_schema_error(with_base({"consul": {"tls": {"existingSecret": "consul-ca"}}}), {
        3: "consul.tls.enabled: consul.tls.enabled does not match: true",
        4: "at '/consul/tls/enabled': value must be true"})
    # What the rules allow: a token from an existing Secret, a created one with its value, init mode
    # and sidecar mode without app.command (the image's ENTRYPOINT).
    for ok in ({"consul": {"token": {"create": True, "existingSecret": "acl"}}},
               {"consul": {"token": {"create": True, "value": "s3cr3t"}}},
               {"mode": "init", "app": {"command": []}, "initJob": {"command": ["/migrate"]}},
               {"mode": "sidecar", "app": {"command": []}}):
        render(values=with_base(ok))


@test
def rendering_fails_with_a_clear_message_on_a_bad_key():
    # Key syntax is checked on the key as derived (lockwrap.key, or service/<fullname>/leader).
    expect_render_error(with_base({"lockwrap": {"key": "a//b"}}), "is not a valid key", where="deployment.yaml")
    expect_render_error(with_base({"lockwrap": {"key": "a/../b"}}), "no '.' or '..' segments")
    expect_render_error(with_base({"fullnameOverride": ".."}),
                        "lockwrap.key \"service/../leader\" is not a valid key: no '.' or '..' segments")
    # secret.yaml renders first and runs the same checks, so the message is the workload's.
    expect_render_error(with_base({"consul": {"token": {"create": True, "value": "s3cr3t"}},
                                   "lockwrap": {"key": "a//b"}}), "is not a valid key", where="secret.yaml")


# ---------------------------------------------------------------------------------------------
# monitoring: ServiceMonitor and PrometheusRule (custom resources: structure checked here)


def registered_metrics():
    """Metric names as lockwrap exports them, read from src/telemetry.rs (counters get `_total`)."""
    src = open(os.path.join(ROOT, "src", "telemetry.rs")).read()
    names = set()
    for name, var in re.findall(r'registry\.register\(\s*"(\w+)",\s*"[^"]*",\s*(\w+)\.clone\(\)', src):
        kind = re.search(rf"let {var} = (\w+)", src).group(1)
        names.add(name + "_total" if kind == "Counter" else name)
    assert {"lockwrap_lock_held", "lockwrap_lock_lost_total", "lockwrap_session_renew_failures_total"} <= names, names
    return names


DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


@test
def monitoring_is_off_by_default():
    for name in SCENARIOS:
        if os.path.basename(name) == "monitoring-values.yaml":
            continue
        docs, _ = rendered(os.path.basename(name))
        kinds = {d["kind"] for d in docs}
        assert not kinds & {"ServiceMonitor", "PrometheusRule"}, f"{name}: {kinds}"


@test
def service_monitor_scrapes_every_replica_through_a_headless_service():
    docs, _ = rendered("monitoring-values.yaml")
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = sm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, spec
    assert spec["namespaceSelector"] == {"matchNames": ["default"]}
    (ep,) = spec["endpoints"]
    assert ep == {"port": "lockwrap", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}, ep
    assert DURATION.match(ep["interval"]) and DURATION.match(ep["scrapeTimeout"])
    # Exactly one Service matches its selector: the headless one listing not-Ready pods (standbys).
    sel = spec["selector"]["matchLabels"]
    matching = [d for d in by_kind(docs, "Service") if sel.items() <= d["metadata"]["labels"].items()]
    assert [d["metadata"]["name"] for d in matching] == ["release-name-lockwrap-metrics"], matching
    svc = matching[0]["spec"]
    assert svc["clusterIP"] == "None" and svc["publishNotReadyAddresses"] is True
    assert ep["port"] in [p["name"] for p in svc["ports"]]
    dep = one(docs, "Deployment")
    assert svc["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    app = container(dep["spec"]["template"]["spec"]["containers"], "app")
    assert {"name": "lockwrap", "containerPort": 8480, "protocol": "TCP"} in app["ports"]
    assert "annotations" not in dep["spec"]["template"]["metadata"], "podAnnotations: false"


@test
def prometheus_rule_alerts_on_no_holder_lost_lock_and_renew_failures():
    docs, _ = rendered("monitoring-values.yaml")
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (group,) = rule["spec"]["groups"]
    assert group["name"] == "release-name-lockwrap.lockwrap"
    alerts = {r["alert"]: r for r in group["rules"]}
    assert list(alerts) == ["LockwrapNoHolder", "LockwrapMultipleHolders", "LockwrapLockLost",
                            "LockwrapSessionRenewFailures", "LockwrapAppExitedNonZero"], list(alerts)
    metrics = registered_metrics()
    sel = '{namespace="default", job="release-name-lockwrap-metrics"}'
    for name, r in alerts.items():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert isinstance(r["expr"], str) and r["labels"]["severity"], r
        assert "for" not in r or DURATION.match(r["for"]), r
        assert r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("{") == r["expr"].count("}"), r
        used = set(re.findall(r"\blockwrap_\w+", r["expr"]))
        assert used and used <= metrics, f"{name}: {used - metrics} not exported by src/telemetry.rs"
        if name.startswith("Lockwrap") and name != "LockwrapAppExitedNonZero":
            assert sel in r["expr"], f"{name} does not select the release's series: {r['expr']}"
            assert r["annotations"]["summary"], r
    assert alerts["LockwrapNoHolder"]["expr"].startswith("(sum(lockwrap_lock_held{")
    assert alerts["LockwrapNoHolder"]["expr"].endswith("or vector(0)) < 1"), "no scraped holder must alert too"
    assert alerts["LockwrapNoHolder"]["for"] == "10m" and alerts["LockwrapNoHolder"]["labels"]["severity"] == "critical"
    assert "[15m])) > 0" in alerts["LockwrapLockLost"]["expr"]
    assert alerts["LockwrapSessionRenewFailures"]["expr"].endswith("[10m])) >= 5")
    # Prometheus' templates reach Prometheus unexpanded.
    assert "{{ $labels.pod }}" in alerts["LockwrapLockLost"]["annotations"]["summary"]
    assert "{{ $value }}" in alerts["LockwrapSessionRenewFailures"]["annotations"]["description"]


@test
def prometheus_rule_alerts_can_be_turned_off_and_selected_differently():
    docs, _ = render(values=with_base({"metrics": {"prometheusRule": {
        "enabled": True, "selector": 'kubernetes_pod_name=~"billing-.*"',
        "multipleHolders": {"enabled": False}, "renewFailures": {"enabled": False}}}}))
    rules = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["LockwrapNoHolder", "LockwrapLockLost"]
    assert 'lockwrap_lock_held{kubernetes_pod_name=~"billing-.*"}' in rules[0]["expr"]
    assert not by_kind(docs, "ServiceMonitor"), "the rule alone needs no ServiceMonitor"


@test
def service_monitor_needs_lockwraps_http_server():
    # A cross-field rule of values.schema.json: lockwrap serves HTTP in wrapper and sidecar Deployments.
    expect_schema_error(with_base({"workload": "cronjob", "metrics": {"serviceMonitor": {"enabled": True}}}), {
        3: 'workload: workload does not match: "deployment"',
        4: "at '/workload': value must be 'deployment'"})
    expect_schema_error(with_base({"mode": "init", "initJob": {"command": ["/migrate"]},
                                   "metrics": {"serviceMonitor": {"enabled": True}}}), {
        3: 'mode: mode must be one of the following: "wrapper", "sidecar"',
        4: "at '/mode': value must be one of 'wrapper', 'sidecar'"})
    docs, _ = render(values=with_base({"mode": "sidecar", "metrics": {"serviceMonitor": {"enabled": True}}}))
    assert one(docs, "ServiceMonitor")


# ---------------------------------------------------------------------------------------------
# the chart as written works (issue 19): pullable images, finishing rollouts, evictable holders,
# logs at acquisition, true failover figures, alerts with data, the app's own securityContext


def documented_install(path):
    """The arguments after `helm install NAME charts/lockwrap` in a document's example."""
    lines = open(os.path.join(ROOT, path)).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("helm install ") and "charts/lockwrap" in line)
    command = ""
    for line in lines[start:]:
        command += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            break
    argv = shlex.split(command)
    return argv[argv.index("charts/lockwrap") + 1:]


@test
def documented_install_commands_render_pullable_images():
    for path in ("README.md", "docs/kubernetes.md"):
        argv = documented_install(path)
        p = helm("template", RELEASE, CHART, *argv)
        assert p.returncode == 0, f"{path}: {p.stderr}"
        docs = [d for d in yaml.safe_load_all(p.stdout) if d]
        spec = pod_spec(docs)
        sets = dict(a.split("=", 1) for a in argv[1::2] if "=" in a)
        for c in spec.get("initContainers", []) + spec["containers"]:
            repo, _, tag = c["image"].rpartition(":")
            want = sets["image.repository"] if c["name"] in LOCKWRAP_CONTAINERS else sets["app.image.repository"]
            assert repo == want, f"{path}: {c['name']} runs {c['image']}"
            if c["name"] not in LOCKWRAP_CONTAINERS:
                assert tag == sets["app.image.tag"], f"{path}: a default tag leaked into {c['image']}"


@test
def images_without_a_repository_or_tag_are_refused_with_what_to_set():
    no_image = with_base({})
    del no_image["image"]
    expect_render_error(no_image, "image.repository is required: no public registry serves the lockwrap image")
    expect_render_error(with_base({"app": {"image": {"repository": "", "tag": ""}}}),
                        "app.image.repository is required")
    expect_render_error(with_base({"app": {"image": {"tag": ""}}}),
                        'app.image.tag is required with app.image.repository "example/app"')
    expect_render_error(with_base({"app": {"image": {"repository": "r.example:5000/app:2"}}}),
                        "already carries a tag or digest")
    # A registry port is not a tag; a tag or digest in the repository stands alone.
    for repo, image in (("r.example:5000/app:2", "r.example:5000/app:2"),
                        ("r.example/app@sha256:" + "a" * 64, "r.example/app@sha256:" + "a" * 64)):
        docs, _ = render(values=with_base({"app": {"image": {"repository": repo, "tag": ""}}}))
        assert container(pod_spec(docs)["containers"], "app")["image"] == image
    docs, _ = render(values=with_base({"app": {"image": {"repository": "r.example:5000/app"}}}))
    assert container(pod_spec(docs)["containers"], "app")["image"] == "r.example:5000/app:1.0"
    # init mode: the job's own image, or the app's.
    init = {"mode": "init", "initJob": {"command": ["/migrate"], "image": {"repository": "example/migrate", "tag": "3"}}}
    docs, _ = render(values=with_base(init))
    assert container(pod_spec(docs)["initContainers"], "lockwrap-job")["image"] == "example/migrate:3"
    expect_render_error(with_base(dict(init, initJob={"command": ["/m"], "image": {"repository": "example/m"}})),
                        "initJob.image.tag is required")


@test
def readiness_running_is_the_default_so_rollouts_finish():
    docs, _ = render(values=with_base({}))
    dep = one(docs, "Deployment")
    app = container(dep["spec"]["template"]["spec"]["containers"], "app")
    assert app["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8480}, app["readinessProbe"]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    # Sidecar mode: the app's readiness follows the sidecar's /readyz only with readiness: holder.
    docs, _ = render(values=with_base({"mode": "sidecar"}))
    assert "readinessProbe" not in container(pod_spec(docs)["containers"], "app")
    docs, _ = render(values=with_base({"mode": "sidecar", "lockwrap": {"readiness": "holder"}}))
    assert container(pod_spec(docs)["containers"], "app")["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 2
    # A wrapped app serving a port runs on the holder only: every replica Ready would be wrong.
    expect_render_error(with_base({"app": {"port": 8080}}), "app.port in wrapper mode needs lockwrap.readiness: holder")
    expect_schema_error(with_base({"lockwrap": {"readiness": "leader"}}), {
        3: 'lockwrap.readiness: lockwrap.readiness must be one of the following: "running", "holder"',
        4: "at '/lockwrap/readiness': value must be one of 'running', 'holder'"})
    expect_schema_error(with_base({"sidecar": {"gateReadiness": True}}), {
        3: "sidecar: Additional property gateReadiness is not allowed",
        4: "at '/sidecar': additional properties 'gateReadiness' not allowed"})


@test
def the_wait_strategies_the_docs_name_exist_in_this_helm():
    # No Kubernetes API server runs here, so `--wait` itself cannot run: this checks the flags and
    # what each helm says it waits for, as docs/kubernetes.md ("Probes, readiness and rollouts") states.
    out = helm("install", "--help").stdout
    wait = next(line for line in out.splitlines() if line.strip().startswith("--wait "))
    if Helm.major >= 4:
        assert "'watcher'" in wait and "'legacy'" in wait, wait
    else:
        assert "minimum number of Pods of a Deployment" in wait, wait
    # With readiness: holder, helm 3's (and helm 4's legacy) check needs replicas - maxUnavailable
    # Ready pods: 0 with the default strategy, so the one Ready holder is enough.
    docs, _ = rendered("wrapper-deployment-values.yaml")
    assert one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == "100%"


@test
def a_pdb_that_makes_the_holder_unevictable_is_refused():
    holder = {"lockwrap": {"readiness": "holder"}, "mode": "sidecar"}
    for bad in (1, "50%"):
        expect_render_error(with_base(dict(holder, podDisruptionBudget={"maxUnavailable": bad})),
                            "is below replicas (2) while only the holder is Ready")
    for fine in (2, "100%"):
        render(values=with_base(dict(holder, podDisruptionBudget={"maxUnavailable": fine})))
    # Every replica Ready: maxUnavailable 1 is an ordinary budget.
    render(values=with_base({"mode": "sidecar", "podDisruptionBudget": {"maxUnavailable": 1}}))


@test
def verbosity_counts_like_lockwraps_v_and_the_default_logs_acquisitions():
    # src/logging.rs: no -v = warnings only; -v = info, where acquisitions are logged.
    def head(values):
        docs, _ = render(values=with_base(values))
        cmd = container(pod_spec(docs)["containers"], "app")["command"]
        return [a for a in cmd[:cmd.index("--")] if re.fullmatch(r"-v+", a)]
    assert head({}) == ["-v"]
    assert head({"lockwrap": {"verbosity": 0}}) == []
    assert head({"lockwrap": {"verbosity": 3}}) == ["-vvv"]
    src = open(os.path.join(ROOT, "src", "logging.rs")).read()
    assert '(false, 0) => format!("lockwrap=warn,' in src and '(false, 1) => "lockwrap=info,' in src, \
        "src/logging.rs changed its levels"


@test
def notes_give_failover_with_lock_delay_and_takeover_delay():
    if Helm.major < 4:
        raise Skip("helm 3's install --dry-run needs a reachable cluster to print NOTES.txt")
    def notes(values):
        return render(values=with_base(values), notes=True)[1]
    # docs/timing.md: TTL…2×TTL + L + T, T = kill grace + 1 s by default.
    assert "36–51s later" in notes({}), notes({})
    assert "40–55s later" in notes({"lockwrap": {"takeoverDelaySeconds": 10}})
    # The health check path: ≈ D + L + T; fastFailover: 2 + 0 + 4.
    assert "about 6s later" in notes({"lockwrap": {"fastFailover": True}})
    assert "about 26s later" in notes({"lockwrap": {"healthCheckTTLSeconds": 5}})
    assert "helm 4's\ndefault --wait" in notes({"lockwrap": {"readiness": "holder"}, "app": {"port": 80}})


@test
def no_holder_alert_needs_scraped_series():
    # Without the ServiceMonitor nothing matches the default selector: "no data" must not read as
    # "no holder" for ever.
    docs, _ = render(values=with_base({"metrics": {"prometheusRule": {"enabled": True}}}))
    alerts = [r["alert"] for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]]
    assert "LockwrapNoHolder" not in alerts and "LockwrapLockLost" in alerts, alerts
    docs, _ = render(values=with_base({"metrics": {"prometheusRule": {"enabled": True},
                                                   "serviceMonitor": {"enabled": True}}}))
    alerts = [r["alert"] for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]]
    assert alerts[0] == "LockwrapNoHolder", alerts


@test
def the_app_keeps_its_own_security_context():
    for mode in ("wrapper", "sidecar", "init"):
        extra = {"mode": mode, "initJob": {"command": ["/migrate"]}}
        docs, _ = render(values=with_base(extra))
        spec = pod_spec(docs)
        assert "securityContext" not in container(spec["containers"], "app"), mode
        assert "runAsUser" not in spec["securityContext"], mode
        mine = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] in LOCKWRAP_CONTAINERS]
        assert mine and all(c["securityContext"]["runAsUser"] == 65532 for c in mine), mode
        if mode == "init":
            assert "securityContext" not in container(spec["initContainers"], "lockwrap-job")
    own = {"runAsUser": 101, "readOnlyRootFilesystem": False}
    docs, _ = render(values=with_base({"app": {"securityContext": own}}))
    assert container(pod_spec(docs)["containers"], "app")["securityContext"] == own


@test_once
def cronjob_docs_promise_mutual_exclusion_not_once_only():
    example = open(os.path.join(ROOT, "examples", "k8s", "cronjob.yaml")).read()
    assert "runs once" not in example and "mutual exclusion, not once-only" in example
    doc = open(os.path.join(ROOT, "docs", "kubernetes.md")).read()
    assert "mutual exclusion, not once per schedule" in doc


# ---------------------------------------------------------------------------------------------
# helm package, and the two helms agree


@test
def helm_package_produces_the_chart_archive_that_renders_the_same():
    out = tempfile.mkdtemp()
    try:
        p = helm("package", CHART, "--destination", out)
        assert p.returncode == 0, p.stderr
        chart = load_yaml(os.path.join(CHART, "Chart.yaml"))
        archive = os.path.join(out, f"lockwrap-{chart['version']}.tgz")
        assert os.path.exists(archive), os.listdir(out)
        import tarfile
        with tarfile.open(archive) as t:
            names = set(t.getnames())
        for f in ("Chart.yaml", "values.yaml", "values.schema.json", "templates/NOTES.txt",
                  "templates/tests/test-connection.yaml", "ci/minimal-values.yaml"):
            assert f"lockwrap/{f}" in names, f"{f} missing from the archive"
        shown = helm("show", "chart", archive, check=True).stdout
        assert f"version: {chart['version']}" in shown
        for name in ("minimal-values.yaml", "monitoring-values.yaml"):
            docs, _ = render(files=[scenario(name)], chart=archive)
            assert docs == rendered(name)[0], f"{name}: the archive renders differently"
    finally:
        shutil.rmtree(out, ignore_errors=True)


@test_once
def helm_3_and_helm_4_render_the_same_manifests():
    if len(HELMS) < 2:
        raise Skip(f"needs two helms, have {HELMS}")
    outputs, current = {}, Helm.path
    for path in HELMS:
        Helm.use(path)
        outputs[Helm.name] = {os.path.basename(s): rendered(os.path.basename(s))[0] for s in SCENARIOS}
    Helm.use(current)
    (a, da), (b, db) = list(outputs.items())[:2]
    differ = [n for n in da if da[n] != db[n]]
    assert not differ, f"{a} and {b} render differently: {differ}"


# ---------------------------------------------------------------------------------------------
# chart conventions


@test_once
def chart_yaml_follows_helm_v2_conventions():
    chart = load_yaml(os.path.join(CHART, "Chart.yaml"))
    assert chart["apiVersion"] == "v2" and chart["name"] == "lockwrap" and chart["type"] == "application"
    assert re.match(r"^\d+\.\d+\.\d+$", chart["version"]) and chart["appVersion"]
    helpers = open(os.path.join(CHART, "templates", "_helpers.tpl")).read()
    for name in ("name", "fullname", "chart", "labels", "selectorLabels", "serviceAccountName"):
        assert f'define "lockwrap.{name}"' in helpers, f"_helpers.tpl lacks lockwrap.{name}"
    assert os.path.exists(os.path.join(CHART, "templates", "NOTES.txt"))
    assert os.path.exists(os.path.join(CHART, "templates", "tests", "test-connection.yaml"))


@test_once
def helpers_are_split_by_concern():
    # _helpers.tpl keeps names and labels; the pod, the containers, the env and the checks have their
    # own partials; `fail` is left for what values.schema.json cannot say, all of it in _validate.tpl.
    tdir = os.path.join(CHART, "templates")
    defines = {os.path.basename(f): set(re.findall(r'define "lockwrap\.(\w+)"', open(f).read()))
               for f in glob.glob(os.path.join(tdir, "_*.tpl"))}
    want = {"_pod.tpl": {"podTemplate"}, "_containers.tpl": {"appContainer", "sidecarContainer",
            "initJobContainer", "installContainer"}, "_env.tpl": {"env", "timing"},
            "_validate.tpl": {"validate"}}
    for f, names in want.items():
        assert names <= defines.get(f, set()), f"{f} lacks {names - defines.get(f, set())}"
    assert not defines["_helpers.tpl"] & set().union(*want.values()), defines["_helpers.tpl"]
    failing = [os.path.relpath(f, tdir) for f in glob.glob(os.path.join(tdir, "**", "*"), recursive=True)
               if os.path.isfile(f) and "fail " in open(f).read()]
    assert failing == ["_validate.tpl"], failing


def walk_schema(node, path):
    yield path, node
    for k, sub in node.get("properties", {}).items():
        yield from walk_schema(sub, path + [k])


@test_once
def every_schema_property_has_a_description_and_type():
    assert SCHEMA["$schema"].startswith("http://json-schema.org/draft-07/")
    missing = [".".join(p) for p, n in walk_schema(SCHEMA, []) if p and not n.get("description")]
    assert not missing, f"properties without description: {missing}"
    untyped = [".".join(p) for p, n in walk_schema(SCHEMA, []) if p and "type" not in n and "anyOf" not in n]
    assert not untyped, f"properties without type: {untyped}"
    assert "address" in SCHEMA["properties"]["consul"]["required"]


def leaf_paths(values, schema, path=()):
    """Paths of values.yaml keys that the chart owns (its schema declares their children)."""
    for k, v in values.items():
        sub = schema.get("properties", {}).get(k)
        assert sub is not None, f"values.yaml key {'.'.join(path + (k,))} is not in values.schema.json"
        yield path + (k,)
        if isinstance(v, dict) and "properties" in sub:
            yield from leaf_paths(v, sub, path + (k,))


@test_once
def every_value_is_in_the_schema_and_commented_in_values_yaml():
    paths = set(leaf_paths(DEFAULTS, SCHEMA))
    # Defaults plus the one required value must pass the schema.
    errs = schema_errors(deep_merge(DEFAULTS, BASE))
    assert not errs, errs
    # Walk values.yaml text: each chart-owned key must have a comment line right above it.
    # A `# --` comment documents the value as a whole (e.g. a probe timing map): its children need none.
    stack, uncommented, prev, whole, block = [], [], "", set(), []
    for line in open(os.path.join(CHART, "values.yaml")):
        m = re.match(r"^( *)([A-Za-z][\w]*):", line)
        if m and not line.lstrip().startswith("- "):
            depth = len(m.group(1)) // 2
            stack = stack[:depth] + [m.group(2)]
            path = tuple(stack)
            if block and block[0].lstrip().startswith("# --"):
                whole.add(path)
            covered = any(path[:i] in whole for i in range(1, len(path)))
            if path in paths and not covered and not prev.lstrip().startswith("#"):
                uncommented.append(".".join(stack))
        if line.strip():
            block = block + [line] if line.lstrip().startswith("#") else []
            prev = line
    assert not uncommented, f"values.yaml keys without a comment: {uncommented}"


# ---------------------------------------------------------------------------------------------
# examples/


EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "k8s", "*.yaml")))


@test_once
def example_manifests_are_valid_kubernetes():
    assert len(EXAMPLES) >= 4, EXAMPLES
    kinds = set()
    for path in EXAMPLES:
        for d in yaml.safe_load_all(open(path)):
            if d:
                k8s_validate(d, os.path.relpath(path, ROOT))
                kinds.add(d["kind"])
    assert {"Deployment", "CronJob", "Job"} <= kinds, kinds


def all_containers(doc):
    """Every container and init container of a workload or pod manifest."""
    spec = doc.get("spec", {})
    for key in ("jobTemplate", "template"):  # CronJob -> Job -> pod; Deployment/Job -> pod
        if key in spec:
            spec = spec[key].get("spec", {})
    return spec.get("initContainers", []) + spec.get("containers", [])


@test_once
def example_manifests_use_the_documented_lockwrap_surface():
    text = {os.path.basename(p): open(p).read() for p in EXAMPLES}
    joined = "\n".join(text.values())
    assert "/lockwrap/lockwrap" in joined and "- run" in joined and "- sidecar" in joined
    assert "CONSUL_HTTP_TOKEN_FILE" in joined and "CONSUL_HTTP_TOKEN\n" not in joined
    assert "--non-blocking" in joined and "/readyz" in joined
    # The lockwrap flags (before `--`) of every container that runs lockwrap, and of the CI example.
    flags = set()
    for path in EXAMPLES:
        for d in yaml.safe_load_all(open(path)):
            for c in all_containers(d):
                argv = c.get("command", []) + c.get("args", [])
                if argv[:1] == ["/lockwrap/lockwrap"] or argv[:1] in (["run"], ["sidecar"]):
                    head = argv[:argv.index("--")] if "--" in argv else argv
                    flags |= {a.split("=")[0] for a in head if a.startswith("--")}
    ci = open(os.path.join(ROOT, "examples", "ci", "deploy-step.sh")).read()
    flags |= set(re.findall(r"^\s+(--[a-z][a-z-]+)", ci, re.M))
    assert "--session-checks" in flags and "--http-addr" in flags and "--status-file" in flags, flags
    surface = open(os.path.join(ROOT, "docs", "cli-surface.md")).read()
    unknown = sorted(f for f in flags if f"`{f}" not in surface)
    assert not unknown, f"flags not in docs/cli-surface.md: {unknown}"
    envs = set(re.findall(r"\b(LOCKWRAP_[A-Z_]+)\b", joined))
    known = {"LOCKWRAP_KEY", "LOCKWRAP_SESSION", "LOCKWRAP_FENCING_TOKEN", "LOCKWRAP_CONFIG"}
    for e in envs - known:
        flag = "--" + e[len("LOCKWRAP_"):].lower().replace("_", "-")
        assert flag in surface, f"{e} maps to {flag}, which docs/cli-surface.md does not list"


@test_once
def example_scripts_parse_and_hooks_are_executable():
    scripts = glob.glob(os.path.join(ROOT, "examples", "ci", "*.sh")) + \
        glob.glob(os.path.join(ROOT, "examples", "hooks", "*"))
    assert len(scripts) >= 4, scripts
    for s in scripts:
        if s.endswith(".md"):
            continue
        assert os.access(s, os.X_OK), f"{s} is not executable"
        shell = "bash" if open(s).readline().strip().endswith("bash") else "sh"
        p = subprocess.run([shell, "-n", s], capture_output=True, text=True)
        assert p.returncode == 0, f"{s}: {p.stderr}"


@test_once
def example_hooks_log_the_key_and_fencing_token():
    env = dict(os.environ, LOCKWRAP_KEY="service/x/leader", LOCKWRAP_SESSION="abc-123",
               LOCKWRAP_FENCING_TOKEN="42", HOOK_LOG="")
    for hook in ("on-acquired", "on-lost", "on-released"):
        p = subprocess.run([os.path.join(ROOT, "examples", "hooks", hook), "service/x/leader"],
                           capture_output=True, text=True, env=env, timeout=30)
        assert p.returncode == 0, f"{hook}: {p.returncode} {p.stderr}"
        out = p.stdout + p.stderr
        assert "service/x/leader" in out and "42" in out, f"{hook} output: {out!r}"


# ---------------------------------------------------------------------------------------------
# the chart's timing refusals against lockwrap's own (needs LOCKWRAP_BIN; skipped otherwise)

TIMING_GRID = [
    {"lockDelaySeconds": l, "killGraceSeconds": g, "takeoverDelaySeconds": t,
     "sessionChecks": c, "healthCheckTTLSeconds": d}
    for l in (0, 2, 15) for g in (1, 5, 20) for t in (None, 3, 8, 30)
    for c, d in (("none", 0), ("serfHealth", 0), ("none", 2))
]


@test_once
def real_binary_refuses_exactly_the_timing_the_chart_refuses():
    # docs/timing.md: the chart mirrors lockwrap's start-up refusals at render time. Over a grid
    # of settings, the render fails exactly when lockwrap, given the same settings as env, exits
    # 2 (unsafe timing from env) before it touches Consul; an accepted render's env is accepted
    # by lockwrap (which then fails to reach the closed port: exit 8).
    lockwrap = os.environ.get("LOCKWRAP_BIN")
    if not lockwrap:
        raise Skip("set LOCKWRAP_BIN (make static-test does)")
    disagree = []
    for lw in TIMING_GRID:
        values = with_base({"lockwrap": dict(lw), "terminationGracePeriodSeconds": 60})
        try:
            docs, _ = render(values=values)
            env = env_of(container(pod_spec(docs)["containers"], "app"))
            env = {k: v for k, v in env.items() if k.startswith("LOCKWRAP_") and v is not None}
            chart_ok = True
        except RenderError as e:
            assert "must be at least" in str(e), f"{lw}: {e}"
            env = {"LOCKWRAP_LOCK_DELAY": f"{lw['lockDelaySeconds']}s",
                   "LOCKWRAP_KILL_GRACE": f"{lw['killGraceSeconds']}s",
                   "LOCKWRAP_SESSION_CHECKS": lw["sessionChecks"]}
            if lw["healthCheckTTLSeconds"]:
                env["LOCKWRAP_HEALTH_CHECK_TTL"] = f"{lw['healthCheckTTLSeconds']}s"
            if lw["takeoverDelaySeconds"] is not None:
                env["LOCKWRAP_TAKEOVER_DELAY"] = f"{lw['takeoverDelaySeconds']}s"
            chart_ok = False
        env.pop("LOCKWRAP_KEY", None)
        p = subprocess.run([lockwrap, "run", "--consul-addr", "127.0.0.1:1", "--non-blocking",
                            "--key", "grid/k", "--", "true"],
                           env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
                           timeout=30)
        lockwrap_ok = p.returncode != 2
        assert p.returncode in (2, 8), f"{lw}: exit {p.returncode}: {p.stderr}"
        if chart_ok != lockwrap_ok:
            disagree.append((lw, chart_ok, p.returncode, p.stderr.strip()))
    assert not disagree, "\n".join(map(str, disagree))


# ---------------------------------------------------------------------------------------------
# the rendered command line against the real binary (run by `make static-test`, which sets
# LOCKWRAP_BIN and CONSUL_BIN; skipped otherwise)


@test_once
def real_binary_runs_the_wrapper_command_line_with_one_ready_holder():
    lockwrap, consul = os.environ.get("LOCKWRAP_BIN"), os.environ.get("CONSUL_BIN")
    if not (lockwrap and consul):
        raise Skip("set LOCKWRAP_BIN and CONSUL_BIN (make static-test does)")
    procs = []
    with DevAgent(consul) as agent:
        try:
            run_replicas_against(lockwrap, agent.http_port, procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        p.kill()


@test_once
def real_binary_cronjob_skip_run_exits_0_without_the_app_when_the_lock_is_taken():
    # README "Exit codes": `onLocked: skip` renders --non-blocking --locked-exit-code 0, so a run
    # that finds the lock taken is a succeeded Job that did not run the app.
    lockwrap, consul = os.environ.get("LOCKWRAP_BIN"), os.environ.get("CONSUL_BIN")
    if not (lockwrap and consul):
        raise Skip("set LOCKWRAP_BIN and CONSUL_BIN (make static-test does)")
    with DevAgent(consul) as agent, tempfile.TemporaryDirectory() as tmp:
        docs, _ = render(files=[scenario("cronjob-skip-values.yaml")],
                         sets=[f"consul.address=127.0.0.1:{agent.http_port}", "consul.tls.enabled=false"])
        spec = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        app = container(spec["containers"], "app")
        env = {"PATH": os.environ["PATH"]}
        for e in app["env"]:
            env[e["name"]] = e.get("value", "test-" + e["name"].lower())
        marker = os.path.join(tmp, "ran")
        argv = list(app["command"])
        argv = [lockwrap] + argv[1:argv.index("--") + 1] + ["touch", marker]
        key = argv[argv.index("--key") + 1]
        held = subprocess.run([lockwrap, "lock", key], env=env, capture_output=True, text=True, timeout=60)
        assert held.returncode == 0, held.stderr
        skipped = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert skipped.returncode == 0, f"exit {skipped.returncode}: {skipped.stderr}"
        assert not os.path.exists(marker), "the app ran without the lock"
        assert "is taken" in skipped.stderr and "--locked-exit-code" in skipped.stderr, skipped.stderr
        freed = subprocess.run([lockwrap, "unlock", key], env=env, capture_output=True, text=True, timeout=60)
        assert freed.returncode == 0, freed.stderr
        ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and os.path.exists(marker), f"exit {ran.returncode}: {ran.stderr}"


def run_replicas_against(lockwrap, consul_port, procs):
    """Two replicas of the minimal scenario's app container: one Ready holder, failover on SIGTERM."""
    docs, _ = render(files=[scenario("minimal-values.yaml")],
                     sets=[f"consul.address=127.0.0.1:{consul_port}", "lockwrap.readiness=holder"])
    app = container(pod_spec(docs)["containers"], "app")
    # The pod's command and env, as the kubelet would run them (downward-API values faked).
    env = {"PATH": os.environ["PATH"]}
    for e in app["env"]:
        env[e["name"]] = e.get("value", "test-" + e["name"].lower())
    http_ports = [free_port(), free_port()]
    logs = [tempfile.TemporaryFile() for _ in http_ports]
    for i, port in enumerate(http_ports):
        argv = list(app["command"])
        argv[0] = lockwrap
        argv[argv.index("--http-addr") + 1] = f"127.0.0.1:{port}"
        env_i = dict(env, POD_NAME=f"pod-{i}")
        procs.append(subprocess.Popen(argv, env=env_i, stdout=subprocess.DEVNULL, stderr=logs[i]))
    probe = app["readinessProbe"]["httpGet"]["path"]

    def ready():
        return [i for i, p in enumerate(http_ports) if http_get(p, probe)[0] == 200]
    holders = wait_until(ready, 30, 0.05, "a holder answering /readyz")
    assert len(holders) == 1, f"two replicas ready: {holders}"
    holder, standby = holders[0], 1 - holders[0]
    assert http_get(http_ports[standby], probe)[0] == 503
    # /healthz is the liveness probe, and the readiness probe of the default `readiness: running`:
    # holder and standby both pass it, so every replica is Ready and rollouts finish.
    assert all(http_get(p, app["livenessProbe"]["httpGet"]["path"])[0] == 200 for p in http_ports)
    leader = json.loads(http_get(http_ports[holder], "/leader")[1])
    assert leader["isLeader"] is True and leader["holder"]["pod"] == f"pod-{holder}", leader
    # The default readiness (`running`): every replica passes its probe, so rollouts finish.
    default_docs, _ = render(files=[scenario("minimal-values.yaml")],
                             sets=[f"consul.address=127.0.0.1:{consul_port}"])
    running = container(pod_spec(default_docs)["containers"], "app")["readinessProbe"]["httpGet"]["path"]
    assert running == "/healthz" and all(http_get(p, running)[0] == 200 for p in http_ports)
    # The default verbosity logs the acquisition (JSON lines on stderr).
    def logged_acquisition():
        logs[holder].seek(0)
        return [line for line in logs[holder].read().decode().splitlines() if '"event":"acquired"' in line]
    wait_until(logged_acquisition, 10, 0.05,
               "the holder to log its acquisition at the chart's default verbosity")
    # A pod deletion: SIGTERM to the holder; the standby takes over (no lock-delay after a release).
    procs[holder].send_signal(signal.SIGTERM)
    procs[holder].wait(timeout=30)
    wait_until(lambda: ready() == [standby], 20, 0.05, "the standby to take over")


# ---------------------------------------------------------------------------------------------


def main():
    if not HELMS:
        print("FAIL no helm: run scripts/ensure-helm.sh or set CHART_HELMS")
        return 1
    tally = Tally()
    for i, path in enumerate(HELMS):
        Helm.use(path)
        print(f"# {Helm.name} ({path}); Kubernetes schemas {', '.join(KUBE_VERSIONS)}")
        tests = [(name, fn) for name, fn, per_helm in TESTS if per_helm]
        run_tests(tests, sys.argv[1:], prefix=f"helm{Helm.major}: ", tally=tally)
        if i == 0:  # the helm-independent tests, once
            run_tests([(name, fn) for name, fn, per_helm in TESTS if not per_helm], sys.argv[1:],
                      tally=tally)
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
