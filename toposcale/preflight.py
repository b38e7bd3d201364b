"""`toposcale preflight`: before installing, what the install would create cluster-wide and whether that would
take something over.

On a kubeconfig it reads the API server's version, its APIServices, its API discovery (which CRD kinds it
serves) and the cluster-scoped names the install uses, then says:
- the cluster-wide objects the install creates or updates (the APIServices, ClusterRoles and bindings, the
  RoleBindings in kube-system, the Namespace), and which of them exist already, and whose they are;
- who already serves external.metrics.k8s.io and custom.metrics.k8s.io (KEDA, prometheus-adapter, ...): an
  APIService names one backend per group version and the group's preferred version answers every HPA in the
  cluster, so registering ours would take the API over from them: a conflict, naming the owner and the
  variant to use instead;
- whether cert-manager, the Prometheus Operator and KEDA kinds are served (each needed by one variant);
- the kube-scheduler image matching the API server (the second scheduler may not be newer than kube-apiserver
  nor more than one minor older).
Exit 0 when the install can go ahead, 1 on a conflict (0 with --force, which still prints it), 2 on bad flags.

The pure part (`plan`, `check`) works on the wire-format dicts the API server sends; `gather` reads them.
docs/install.md says where this fits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("toposcale.preflight")

Obj = dict[str, Any]
PINNED_SCHEDULER = "registry.k8s.io/kube-scheduler:v1.30.14"  # deploy/ and the chart's default
EXTERNAL = "external.metrics.k8s.io"
CUSTOM = "custom.metrics.k8s.io"
ADAPTER_SERVICE = "toposcale-adapter"

# What deploy/all creates outside its own namespace (tests/deploy checks this against the kustomize build);
# a Helm release named `toposcale` uses the same names, other releases prefix them with <release>-toposcale.
BASE_OBJECTS: list[tuple[str, str, str]] = [
    ("Namespace", "", "toposcale"),
    ("ClusterRole", "", "toposcale-adapter"),
    ("ClusterRole", "", "toposcale-agent"),
    ("ClusterRole", "", "toposcale-extender"),
    ("ClusterRole", "", "toposcale:external-metrics-reader"),
    ("ClusterRoleBinding", "", "toposcale-adapter"),
    ("ClusterRoleBinding", "", "toposcale-adapter:system:auth-delegator"),
    ("ClusterRoleBinding", "", "toposcale-agent"),
    ("ClusterRoleBinding", "", "toposcale-extender"),
    ("ClusterRoleBinding", "", "toposcale-scheduler:system:kube-scheduler"),
    ("ClusterRoleBinding", "", "toposcale-scheduler:system:volume-scheduler"),
    ("ClusterRoleBinding", "", "toposcale:hpa-external-metrics-reader"),
    ("RoleBinding", "kube-system", "toposcale-adapter-auth-reader"),
    ("RoleBinding", "kube-system", "toposcale-scheduler-auth-reader"),
]
EXTERNAL_APISERVICE = ("APIService", "", f"v1beta1.{EXTERNAL}")
CUSTOM_OBJECTS: list[tuple[str, str, str]] = [
    ("APIService", "", f"v1beta2.{CUSTOM}"),
    ("ClusterRole", "", "toposcale:custom-metrics-reader"),
    ("ClusterRoleBinding", "", "toposcale:hpa-custom-metrics-reader"),
]
MONITORS_OBJECTS: list[tuple[str, str, str]] = [
    ("ClusterRole", "", "toposcale:metrics-reader"),
    ("ClusterRoleBinding", "", "toposcale:metrics-reader"),
]

# Kinds a variant needs that a plain cluster lacks: (what, group/version, kinds, needed by)
CRD_KINDS = {
    "cert-manager": ("cert-manager.io/v1", {"Certificate", "Issuer"}),
    "Prometheus Operator": ("monitoring.coreos.com/v1", {"PodMonitor", "ServiceMonitor"}),
    "KEDA": ("keda.sh/v1alpha1", {"ScaledObject", "TriggerAuthentication"}),
}

REST = {
    "Namespace": "/api/v1/namespaces/{name}",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings/{name}",
}


@dataclass(frozen=True)
class Options:
    namespace: str = "toposcale"
    tls: str = "self-signed"  # or cert-manager
    custom_metrics: bool = False
    keda: bool = False
    monitors: bool = False
    scheduler_image: str = PINNED_SCHEDULER


@dataclass
class Cluster:
    """What `gather` read: the server's gitVersion, every APIService, the kinds served per group/version
    (absent: not served), the planned objects that exist already (key -> object)."""

    version: str
    apiservices: list[Obj]
    kinds: dict[str, set[str]]
    existing: dict[tuple[str, str, str], Obj] = field(default_factory=dict)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan(opts: Options) -> list[tuple[str, str, str]]:
    """The cluster-wide objects (kind, namespace, name) the install creates or updates."""
    objs = [("Namespace", "", opts.namespace), *BASE_OBJECTS[1:]]
    if not opts.keda:
        objs.append(EXTERNAL_APISERVICE)
    if opts.custom_metrics:
        objs += CUSTOM_OBJECTS
    if opts.monitors:
        objs += MONITORS_OBJECTS
    return objs


def claimed_groups(opts: Options) -> list[str]:
    groups = [] if opts.keda else [EXTERNAL]
    return [*groups, CUSTOM] if opts.custom_metrics else groups


def backend(apiservice: Obj) -> str:
    svc = (apiservice.get("spec") or {}).get("service")
    if not svc:
        return "kube-apiserver itself (Local)"
    return f"Service {svc.get('namespace')}/{svc.get('name')}"


def owner(apiservice: Obj) -> str:
    """Who serves an APIService, as far as its labels and Service tell: KEDA, prometheus-adapter, toposcale,
    or the Service's name."""
    meta = apiservice.get("metadata") or {}
    text = " ".join(
        [*(f"{k}={v}" for k, v in (meta.get("labels") or {}).items()), backend(apiservice)]
    ).lower()
    for needle, name in (
        ("keda", "KEDA"),
        ("prometheus-adapter", "prometheus-adapter"),
        ("toposcale", "toposcale"),
    ):
        if needle in text:
            return name
    return "another provider"


def is_ours(apiservice: Obj, namespace: str) -> bool:
    svc = (apiservice.get("spec") or {}).get("service") or {}
    return svc.get("namespace") == namespace and svc.get("name") == ADAPTER_SERVICE


_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def minor_of(version: str) -> tuple[int, int, int] | None:
    m = _VERSION.match(version.split(":")[-1])
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def scheduler_advice(server_version: str, image: str) -> tuple[str, str | None]:
    """(the kube-scheduler image for this API server, a warning about `image` or None)."""
    server = minor_of(server_version)
    if server is None:
        return (
            image,
            f"cannot read the API server's version {server_version!r}: check the scheduler image by hand",
        )
    want = f"registry.k8s.io/kube-scheduler:v{server[0]}.{server[1]}.{server[2]}"
    have = minor_of(image)
    if have is None:
        return want, f"scheduler image {image!r} has no version tag to compare"
    if have[:2] > server[:2]:
        return want, (
            f"{image} is newer than the API server (v{server[0]}.{server[1]}): kube-scheduler may not "
            f"be newer than kube-apiserver"
        )
    if server[1] - have[1] > 1 or have[0] != server[0]:
        return want, (
            f"{image} is {server[1] - have[1]} minor versions older than the API server "
            f"(v{server[0]}.{server[1]}): outside kube-scheduler's supported skew (at most one minor "
            f"older)"
        )
    return want, None


def _fix_for(group: str, who: str) -> str:
    if group == EXTERNAL and who == "KEDA":
        return (
            "install toposcale as KEDA's external scaler instead: deploy/adapter/keda (kustomize) or "
            "--set adapter.keda.enabled=true (Helm), checked with `toposcale preflight --keda`"
        )
    if group == EXTERNAL:
        return (
            "remove the other provider's APIService first, or install without the APIService (Helm: --set "
            "adapter.apiService.enabled=false); --force to replace it for the whole cluster"
        )
    return (
        "leave custom metrics off (the default: no --custom-metrics, adapter.customMetrics.enabled=false); "
        "--force to take the group over"
    )


def check(opts: Options, cluster: Cluster) -> Report:
    r = Report()
    # the API groups
    claimed = claimed_groups(opts)
    r.lines.append("API groups:")
    for group in (EXTERNAL, CUSTOM):
        mine = group in claimed
        served = sorted(
            (a for a in cluster.apiservices if (a.get("spec") or {}).get("group") == group),
            key=lambda a: a["metadata"]["name"],
        )
        what = "registers it" if mine else "leaves it alone"
        if not served:
            r.lines.append(f"  {group}: not served; this install {what}")
            continue
        for a in served:
            name = a["metadata"]["name"]
            desc = f"{name} served by {owner(a)} ({backend(a)})"
            if is_ours(a, opts.namespace):
                r.lines.append(f"  {group}: {desc}: this toposcale install's own")
            elif mine:
                r.lines.append(f"  {group}: {desc}: CONFLICT")
                r.conflicts.append(
                    f"{group} is already served by {owner(a)} (APIService {name}, {backend(a)}): registering "
                    f"toposcale's would take the API over for every HPA in the cluster; "
                    f"{_fix_for(group, owner(a))}"
                )
            else:
                r.lines.append(f"  {group}: {desc}: this install {what}")
    # the kinds each variant needs
    r.lines.append("CRD kinds:")
    needs = {
        "cert-manager": opts.tls == "cert-manager",
        "Prometheus Operator": opts.monitors,
        "KEDA": opts.keda,
    }
    for what, (gv, kinds) in CRD_KINDS.items():
        present = kinds <= cluster.kinds.get(gv, set())
        need = needs[what]
        r.lines.append(
            f"  {what} ({gv} {', '.join(sorted(kinds))}): {'served' if present else 'absent'}"
            + ("; this install needs it" if need else "")
        )
        if need and not present:
            hint = {
                "cert-manager": "install cert-manager first, or use the self-signed path (the default)",
                "Prometheus Operator": "install it first, or leave the monitors out (the default)",
                "KEDA": "install KEDA first",
            }[what]
            r.conflicts.append(f"{what} kinds {', '.join(sorted(kinds))} ({gv}) are not served: {hint}")
    # the cluster-wide objects
    r.lines.append("Cluster-wide objects this install creates or updates:")
    for key in plan(opts):
        kind, ns, name = key
        where = f"{kind} {ns + '/' if ns else ''}{name}"
        obj = cluster.existing.get(key)
        if obj is None:
            r.lines.append(f"  {where}: new")
            continue
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get("app.kubernetes.io/part-of") == "toposcale" or (
            kind == "APIService" and is_ours(obj, opts.namespace)
        ):
            r.lines.append(f"  {where}: exists (toposcale's): updated")
        elif kind == "APIService":
            r.lines.append(f"  {where}: exists, {owner(obj)}'s: replaced")  # the conflict above says more
        elif kind == "Namespace":
            r.lines.append(f"  {where}: exists: used")
        else:
            r.lines.append(f"  {where}: exists, not toposcale's: CONFLICT")
            r.conflicts.append(
                f"{where} exists and is not toposcale's (no label app.kubernetes.io/part-of="
                f"toposcale): the install would overwrite it"
            )
    # Pod Security of an existing namespace: the agent needs `privileged`
    ns_obj = cluster.existing.get(("Namespace", "", opts.namespace))
    if ns_obj is not None:
        enforce = ((ns_obj.get("metadata") or {}).get("labels") or {}).get(
            "pod-security.kubernetes.io/enforce"
        )
        if enforce and enforce != "privileged":
            r.warnings.append(
                f"namespace {opts.namespace} enforces Pod Security {enforce!r}: the node agent "
                f"(hostPath, uid 0) needs 'privileged' there (deploy/base sets it)"
            )
    # the scheduler image
    want, warn = scheduler_advice(cluster.version, opts.scheduler_image)
    r.lines.append(f"Scheduler image for this API server ({cluster.version}): {want}")
    r.lines.append(
        f"  kustomize: `kustomize edit set image {want}` in deploy/all; Helm: "
        f"--set scheduler.image.tag={want.rsplit(':', 1)[1]}"
    )
    if warn:
        r.warnings.append(warn)
    return r


# -- I/O


async def gather(api: Any, opts: Options) -> Cluster:
    from toposcale.core import kube

    version = (await kube.get_json(api, "/version") or {}).get("gitVersion", "unknown")
    apiservices = (await kube.get_json(api, "/apis/apiregistration.k8s.io/v1/apiservices") or {}).get(
        "items", []
    )
    kinds: dict[str, set[str]] = {}
    for gv, _ in CRD_KINDS.values():
        doc = await kube.get_json(api, f"/apis/{gv}")
        if doc is not None:
            kinds[gv] = {r.get("kind", "") for r in doc.get("resources", []) if "/" not in r.get("name", "")}
    existing: dict[tuple[str, str, str], Obj] = {}
    by_name = {a["metadata"]["name"]: a for a in apiservices}
    for key in plan(opts):
        kind, ns, name = key
        if kind == "APIService":
            obj = by_name.get(name)
        else:
            obj = await kube.get_json(api, REST[kind].format(name=name, namespace=ns))
        if obj is not None:
            existing[key] = obj
    return Cluster(version, apiservices, kinds, existing)


def render(opts: Options, server: str, report: Report, force: bool) -> str:
    out = [
        f"toposcale preflight: {server}, namespace {opts.namespace}, "
        f"{'KEDA variant' if opts.keda else opts.tls}"
        + (", custom metrics" if opts.custom_metrics else "")
        + (", monitors" if opts.monitors else "")
    ]
    out += report.lines
    out += [f"warning: {w}" for w in report.warnings]
    out += [f"conflict: {c}" for c in report.conflicts]
    if report.conflicts:
        out.append(
            f"{len(report.conflicts)} conflict(s): "
            + ("--force given, going ahead is on you" if force else "do not install as planned")
        )
    else:
        out.append("no conflict: the install can go ahead")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        help="the cluster to check (default: $KUBECONFIG, ~/.kube/config or the pod's service account)",
    )
    parser.add_argument(
        "--namespace", default="toposcale", help="the install's namespace (default toposcale)"
    )
    parser.add_argument(
        "--tls",
        choices=["self-signed", "cert-manager"],
        default="self-signed",
        help="the serving-certificate path: deploy/all (self-signed) or deploy/all-cert-manager "
        "(default self-signed)",
    )
    parser.add_argument(
        "--custom-metrics",
        action="store_true",
        help="the install registers custom.metrics.k8s.io/v1beta2 too (the opt-in component)",
    )
    parser.add_argument(
        "--keda",
        action="store_true",
        help="the KEDA variant: no APIService, toposcale as KEDA's external scaler",
    )
    parser.add_argument(
        "--monitors", action="store_true", help="deploy/monitors too (Prometheus Operator monitors)"
    )
    parser.add_argument(
        "--scheduler-image",
        default=PINNED_SCHEDULER,
        help="the kube-scheduler image the install uses (default %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="exit 0 even on a conflict (still printed)")


def main(args: argparse.Namespace) -> int:
    from kubernetes_asyncio.client.exceptions import ApiException
    from kubernetes_asyncio.config import ConfigException

    from toposcale.core import kube

    opts = Options(
        namespace=args.namespace,
        tls=args.tls,
        custom_metrics=args.custom_metrics,
        keda=args.keda,
        monitors=args.monitors,
        scheduler_image=args.scheduler_image,
    )

    async def run() -> tuple[str, Report]:
        api = await kube.api_client(args.kubeconfig)
        try:
            return api.configuration.host, check(opts, await gather(api, opts))
        finally:
            await api.close()

    try:
        server, report = asyncio.run(run())
    except ConfigException as exc:
        print(f"toposcale preflight: {exc}", file=sys.stderr)
        return 2
    except ApiException as exc:
        print(
            f"toposcale preflight: the API server answered {exc.status} {exc.reason}: {exc.body}",
            file=sys.stderr,
        )
        return 1
    print(render(opts, server, report, args.force))
    return 1 if report.conflicts and not args.force else 0
