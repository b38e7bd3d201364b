"""GPU fleet dashboard: NVIDIA DCGM exporter metrics per node and GPU.

Label names are the exporter's own (NVIDIA/dcgm-exporter): `Hostname` (the node: the GPU Operator sets it from
NODE_NAME), `gpu` (index), `UUID`, `modelName`, and `namespace`/`pod`/`container` of the pod holding the GPU.
Framebuffer values are MiB, power W, temperature C; `DCGM_FI_PROF_*` are 0..1 ratios that exist only where the
DCGM profiling (DCP) counters are enabled.
"""

from __future__ import annotations

from typing import Any

from dashboards.grafana import (
    Row,
    bargauge_panel,
    custom_variable,
    dashboard,
    dashboard_links,
    models,
    query,
    query_variable,
    stat_panel,
    status_history_panel,
    table_panel,
    timeseries_panel,
)

UID = "toposcale-gpu-fleet"
SEL = 'Hostname=~"$node", gpu=~"$gpu"'
GPU_LEGEND = "{{Hostname}} GPU {{gpu}}"


# GPUs per node minus those a pod holds (`or ... * 0`: a node with no pod on it still has a used count, 0)
FREE_PER_NODE = (f"count by (Hostname) (DCGM_FI_DEV_GPU_UTIL{{{SEL}}}) - ("
                 f'count by (Hostname) (DCGM_FI_DEV_GPU_UTIL{{{SEL}, pod!=""}}) '
                 f"or count by (Hostname) (DCGM_FI_DEV_GPU_UTIL{{{SEL}}}) * 0)")


def per_gpu(metric: str) -> str:
    """One series per physical GPU: with Kubernetes mapping on, the exporter's namespace/pod/container labels
    change whenever a pod takes or frees the GPU, which would split its history into several series."""
    return f"max by (Hostname, gpu) ({metric}{{{SEL}}})"


def build() -> dict[str, Any]:
    variables = [
        query_variable("node", "Node", "DCGM_FI_DEV_GPU_UTIL", "Hostname"),
        query_variable("gpu", "GPU", 'DCGM_FI_DEV_GPU_UTIL{Hostname=~"$node"}', "gpu"),
        custom_variable("replica_gpus", "GPUs per replica", ["1", "2", "4", "8"], "4"),
    ]
    overview = Row("Fleet", [
        stat_panel("GPUs reporting", [query(f"count(DCGM_FI_DEV_GPU_UTIL{{{SEL}}})", instant=True)],
                   description="GPUs whose DCGM exporter answered the last scrape.", width=4, height=4),
        stat_panel("Mean GPU utilisation", [query(f"avg(DCGM_FI_DEV_GPU_UTIL{{{SEL}}})")],
                   unit="percent", min=0, max=100, width=4, height=4,
                   steps=((None, "blue"), (30, "green"), (90, "orange"))),
        stat_panel("Framebuffer used", [query(
            f"sum(DCGM_FI_DEV_FB_USED{{{SEL}}}) / "
            f"(sum(DCGM_FI_DEV_FB_USED{{{SEL}}}) + sum(DCGM_FI_DEV_FB_FREE{{{SEL}}}))"
        )], unit="percentunit", min=0, max=1, decimals=1, width=4, height=4,
                   steps=((None, "green"), (0.9, "orange"), (0.97, "red"))),
        stat_panel("Power draw", [query(f"sum(DCGM_FI_DEV_POWER_USAGE{{{SEL}}})")],
                   unit="watt", width=4, height=4),
        stat_panel("Hottest GPU", [query(f"max(DCGM_FI_DEV_GPU_TEMP{{{SEL}}})")],
                   unit="celsius", width=4, height=4, steps=((None, "green"), (80, "orange"), (87, "red"))),
        stat_panel("GPUs with an XID error", [query(f"sum(DCGM_FI_DEV_XID_ERRORS{{{SEL}}} != bool 0)")],
                   description="GPUs whose last XID error code is non-zero (DCGM_FI_DEV_XID_ERRORS holds "
                               "the code of the most recent XID, not a count). 48, 63, 64, 74, 79, 94, 95 "
                               "usually mean the GPU needs a reset or a drain.",
                   width=4, height=4, steps=((None, "green"), (1, "red"))),
    ])
    capacity = Row("Room for the next replica", [
        stat_panel("Nodes with $replica_gpus free GPUs", [
            query(f"sum(({FREE_PER_NODE}) >= bool $replica_gpus)"),
        ], description="Nodes where a pod asking $replica_gpus GPUs still fits by count: GPUs the exporter "
                       "maps to no pod. 0 while the HPA wants more replicas means the next one will stay "
                       "Pending. Which of them has a well-connected set is the extender's call (placement "
                       "row of the autoscaling dashboard).",
                   width=6, height=6, decimals=0, steps=((None, "red"), (1, "orange"), (2, "green"))),
        bargauge_panel("Free GPUs per node", [
            query(FREE_PER_NODE, legend="{{Hostname}}", instant=True),
        ], description="GPUs with no pod in the exporter's Kubernetes mapping, per node.",
                       unit="none", min=0, decimals=0, width=18, height=6,
                       steps=((None, "red"), (1, "orange"), (4, "green"))),
    ])
    topology = Row("Topology: GPUs grouped by node", [
        status_history_panel("Utilisation per GPU, grouped by node", [
            query(per_gpu("DCGM_FI_DEV_GPU_UTIL"), legend=GPU_LEGEND),
        ], description="One row per GPU, sorted by node then index, so a node whose GPUs are half idle (a "
                       "tensor-parallel group split across PCIe or sockets) stands out from nodes that are "
                       "uniformly busy.",
                             unit="percent", min=0, max=100, width=24, height=10,
                             steps=((None, "#1f3d7a"), (10, "#2f7ed8"), (40, "green"), (75, "yellow"),
                                    (95, "red"))),
        table_panel("Nodes", [
            query(f"count by (Hostname, modelName) (DCGM_FI_DEV_GPU_UTIL{{{SEL}}})",
                  instant=True, table_format=True),
            query(f"avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL{{{SEL}}})", instant=True, table_format=True),
            query(f"sum by (Hostname) (DCGM_FI_DEV_FB_USED{{{SEL}}}) / (sum by (Hostname) "
                  f"(DCGM_FI_DEV_FB_USED{{{SEL}}}) + sum by (Hostname) (DCGM_FI_DEV_FB_FREE{{{SEL}}}))",
                  instant=True, table_format=True),
            query(f"sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE{{{SEL}}})", instant=True, table_format=True),
            query(f"max by (Hostname) (DCGM_FI_DEV_GPU_TEMP{{{SEL}}})", instant=True, table_format=True),
        ], description="One line per node: GPU count and model, mean utilisation, framebuffer used, power "
                       "and the hottest GPU.",
                    width=24, height=8,
        ).transformations([
            models.DataTransformerConfig(id_val="merge", options={}),
            models.DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True},
                "renameByName": {"Hostname": "Node", "modelName": "Model", "Value #A": "GPUs",
                                 "Value #B": "Mean util %", "Value #C": "FB used",
                                 "Value #D": "Power W", "Value #E": "Max temp C"},
            }),
        ]).override_by_name("FB used", [models.DynamicConfigValue(id_val="unit", value="percentunit")]),
    ])
    each_gpu = Row("Per GPU", [
        timeseries_panel("GPU utilisation", [query(per_gpu("DCGM_FI_DEV_GPU_UTIL"), legend=GPU_LEGEND)],
                         description="DCGM_FI_DEV_GPU_UTIL: share of time a kernel was running (coarse: a "
                                     "GPU running one small kernel all the time reads 100%). SM activity is "
                                     "the finer measure.",
                         unit="percent", min=0, max=100),
        timeseries_panel("SM activity (profiling counters)", [
            query(per_gpu("DCGM_FI_PROF_SM_ACTIVE"), legend=GPU_LEGEND),
        ], description="DCGM_FI_PROF_SM_ACTIVE: fraction of cycles an SM had a warp resident. Needs the DCGM "
                       "profiling counters (DCP): empty on GPUs or exporters without them.",
                         unit="percentunit", min=0, max=1),
        timeseries_panel("Tensor core activity (profiling counters)", [
            query(per_gpu("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), legend=GPU_LEGEND),
        ], description="DCGM_FI_PROF_PIPE_TENSOR_ACTIVE: fraction of cycles the tensor pipe was busy; "
                       "what an LLM spends its FLOPs on. Needs the DCGM profiling counters.",
                         unit="percentunit", min=0, max=1),
        timeseries_panel("Framebuffer used", [
            query(f'{per_gpu("DCGM_FI_DEV_FB_USED")} / '
                  f'({per_gpu("DCGM_FI_DEV_FB_USED")} + {per_gpu("DCGM_FI_DEV_FB_FREE")})',
                  legend=GPU_LEGEND),
        ], description="DCGM_FI_DEV_FB_USED / (used + free). vLLM pre-allocates its KV cache "
                       "(--gpu-memory-utilization): a serving GPU sits near that fraction whatever the load.",
                         unit="percentunit", min=0, max=1),
        timeseries_panel("Framebuffer free", [query(per_gpu("DCGM_FI_DEV_FB_FREE"), legend=GPU_LEGEND)],
                         unit="decmbytes", min=0),
        timeseries_panel("Power draw", [query(per_gpu("DCGM_FI_DEV_POWER_USAGE"), legend=GPU_LEGEND)],
                         unit="watt", min=0),
        timeseries_panel("Temperature", [query(per_gpu("DCGM_FI_DEV_GPU_TEMP"), legend=GPU_LEGEND)],
                         unit="celsius", steps=((None, "green"), (80, "orange"), (87, "red"))),
        timeseries_panel("Last XID error code", [
            query(per_gpu("DCGM_FI_DEV_XID_ERRORS"), legend=GPU_LEGEND),
        ], description="The code of the most recent XID error per GPU (0 = none since the exporter started).",
                         unit="none", min=0, decimals=0),
    ])
    return dashboard(
        uid=UID,
        title="toposcale / GPU fleet",
        description="NVIDIA DCGM exporter: utilisation, memory, power, temperature, SM activity and XID "
                    "errors per node and GPU.",
        tags=["toposcale", "gpu", "dcgm"],
        variables=variables,
        rows=[overview, capacity, topology, each_gpu],
        links=dashboard_links(),
    )
