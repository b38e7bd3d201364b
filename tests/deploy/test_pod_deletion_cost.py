"""deploy/examples/qwen/pod-deletion-cost (issue 29, section 3): the adapter's RBAC grows by exactly `patch`
on pods, in the example's serving namespace, for the adapter's ServiceAccount, and the flag that needs it
exists."""

from __future__ import annotations

from toposcale.adapter import cli

from .conftest import Build


def test_the_component_grants_exactly_patch_on_pods_in_the_serving_namespace(
    builds: dict[str, Build],
) -> None:
    plain, b = builds["examples/qwen"], builds["examples/qwen+pod-deletion-cost"]
    added = [o for o in b.objects if o not in plain.objects]
    assert sorted(o["kind"] for o in added) == ["Role", "RoleBinding"]
    serving = plain.one("Deployment", "vllm-qwen")["metadata"]["namespace"]
    role, binding = b.one("Role"), b.one("RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == serving
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    adapter = builds["adapter/self-signed"].one("Deployment", "toposcale-adapter")
    sa = adapter["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": adapter["metadata"]["namespace"]}
    ]


def test_the_flag_is_off_unless_given() -> None:
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    assert p.parse_args([]).pod_deletion_cost == []
    assert p.parse_args(["--pod-deletion-cost", "llm/app=vllm"]).pod_deletion_cost == ["llm/app=vllm"]
