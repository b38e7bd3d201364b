"""Derive a tensor-parallel profile on other GPUs from a measured one, by documented ratios (pure).

Used for `rtx4090d-tp4` (the seed's deployment: Qwen2.5-7B over 4x RTX 4090D, PCIe only, no NVLink), which
cannot be measured here. `scripts/derive_profile.py` re-runs it whenever `h100-tp1.yaml` changes.

Each step time of the parent splits into a weights-read floor (bandwidth-bound) and the rest:
- decode steps are bandwidth-bound (weights + KV read): time x `r_mem`, where `r_mem` = parent HBM bandwidth
  / (tp x target bandwidth) (weights and KV are split tp ways and read in parallel); but never less than
  the step's matmul work at the target's compute (2 x params x batch FLOP over tp x target TFLOP/s at the
  parent's measured efficiency), which decides at large batches on consumer cards;
- prefill and chunked-prefill steps: the weights floor x `r_mem` plus the rest x `r_comp`, where `r_comp`
  = parent bf16 dense TFLOP/s / (tp x target bf16 dense TFLOP/s) (both NVIDIA's spec figures: the parent's
  measured efficiency carries over);
- every step adds the tensor-parallel all-reduces: 2 per layer (after attention and after the MLP), each of
  tokens x hidden x 2 bytes, ring all-reduce time = latency + bytes x 2(tp-1)/tp / bus bandwidth (NCCL's
  "bus bandwidth" definition), tokens = the batch for decode, the chunk for prefill;
- the KV cache per GPU: GPU memory x gpu_memory_utilization - weights / tp - activation reserve, over the
  per-GPU bytes per token (the KV heads are split tp ways).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .profile import Profile

# Qwen2.5-7B (config.json of Qwen/Qwen2.5-7B): what the all-reduce and the compute floor need.
QWEN25_7B_LAYERS = 28
QWEN25_7B_HIDDEN = 3584
QWEN25_7B_PARAMS = 7.62e9
QWEN25_7B_WEIGHTS_BYTES = 15.23e9  # bf16

H100_SXM_HBM_GBS = 3352.0  # NVIDIA H100 SXM5 80GB datasheet: 3.35 TB/s
H100_SXM_BF16_TFLOPS = 989.4  # datasheet, dense (1979 with sparsity)


@dataclass(frozen=True, slots=True)
class TargetGPU:
    name: str
    hbm_gbs: float
    bf16_tflops: float
    memory_mib: int
    tp: int
    bus_gbs: float  # NCCL all-reduce bus bandwidth between the tp GPUs
    allreduce_latency_s: float
    activation_reserve_gb: float  # per GPU, for activations, CUDA graphs, the NCCL buffers
    why: tuple[str, ...]  # the sources of the figures, written into the file's header


RTX4090D_TP4 = TargetGPU(
    name="NVIDIA GeForce RTX 4090 D",
    hbm_gbs=1008.0,  # GDDR6X 384-bit at 21 Gbps, as the RTX 4090 (NVIDIA spec: 1008 GB/s)
    # NVIDIA Ada whitepaper: RTX 4090 bf16 tensor dense with FP32 accumulate 165.2 TFLOP/s at 128 SMs; the
    # 4090 D has 114 SMs at the same boost clock: 165.2 x 114 / 128.
    bf16_tflops=147.1,
    memory_mib=24564,
    tp=4,
    # GeForce cards have no NVLink and no PCIe peer-to-peer: NCCL goes through host shared memory over
    # PCIe 4.0 x16 (32 GB/s per direction); nccl-tests on such 4-GPU boxes report ~10 GB/s bus bandwidth.
    bus_gbs=10.0,
    allreduce_latency_s=30e-6,  # NCCL small-message all-reduce through SHM: tens of microseconds
    activation_reserve_gb=1.5,
    why=(
        "memory bandwidth 1008 GB/s (NVIDIA RTX 4090 D spec) vs H100 SXM 3352 GB/s (datasheet)",
        "bf16 dense tensor 147.1 TFLOP/s (Ada whitepaper RTX 4090 165.2 x 114/128 SMs) vs H100 SXM 989.4",
        "weights and KV heads split 4 ways (tensor parallel 4)",
        "2 all-reduces per layer x 28 layers over PCIe 4.0 x16 without NVLink or P2P: 10 GB/s NCCL bus "
        "bandwidth, 30 us latency each",
        "KV cache per GPU: 24564 MiB x 0.9 - weights/4 - 1.5 GB activation reserve",
    ),
)


@dataclass(frozen=True, slots=True)
class Ratios:
    r_mem: float
    r_comp: float
    efficiency: float  # parent's achieved share of its dense bf16 peak (for the decode compute floor)


def ratios(parent: Profile, target: TargetGPU) -> Ratios:
    r_mem = H100_SXM_HBM_GBS / (target.tp * target.hbm_gbs)
    r_comp = H100_SXM_BF16_TFLOPS / (target.tp * target.bf16_tflops)
    measured = parent.checks.get("bf16_tflops")
    eff = (
        float(measured) / H100_SXM_BF16_TFLOPS if isinstance(measured, int | float) and measured > 0 else 0.6
    )
    return Ratios(r_mem, r_comp, min(eff, 1.0))


def allreduce_s(
    tokens: float, target: TargetGPU, layers: int = QWEN25_7B_LAYERS, hidden: int = QWEN25_7B_HIDDEN
) -> float:
    """All-reduce time of one step carrying `tokens` tokens: 2 per layer."""
    if target.tp <= 1:
        return 0.0
    size = tokens * hidden * 2
    one = target.allreduce_latency_s + size * 2 * (target.tp - 1) / target.tp / (target.bus_gbs * 1e9)
    return 2 * layers * one


def derive(parent: Profile, target: TargetGPU, name: str) -> str:
    """The derived profile as YAML text (comment header included)."""
    r = ratios(parent, target)
    floor = parent.floor_s

    def compute_bound(t: float, tokens: float) -> float:
        return floor * r.r_mem + max(t - floor, 0.0) * r.r_comp + allreduce_s(tokens, target)

    def decode(t: float, batch: float) -> float:
        matmul = 2 * QWEN25_7B_PARAMS * batch / (target.tp * target.bf16_tflops * 1e12 * r.efficiency)
        return max(t * r.r_mem, matmul) + allreduce_s(batch, target)

    prefill = [compute_bound(t, n) for n, t in zip(parent.prefill_tokens, parent.prefill_s, strict=True)]
    chunk = [
        [compute_bound(t, b) for t in row] for b, row in zip(parent.chunk_budget, parent.chunk_s, strict=True)
    ]
    per_gpu_bytes = parent.kv_bytes_per_token / target.tp
    free = (
        target.memory_mib * 2**20 * 0.9
        - QWEN25_7B_WEIGHTS_BYTES / target.tp
        - target.activation_reserve_gb * 1e9
    )
    capacity = int(free / per_gpu_bytes)
    dec = []
    for b, row in zip(parent.decode_batch, parent.decode_s, strict=True):
        cells: list[float | None] = []
        for c, t in zip(parent.decode_context, row, strict=True):
            if b * c > capacity:
                cells.append(None)
            elif t is None:  # the parent's cache was smaller: extrapolate the parent first
                cells.append(decode(parent.decode_time(b, c), b))
            else:
                cells.append(decode(t, b))
        dec.append(cells)

    def flow(values: list[float | None] | tuple[float, ...]) -> str:
        return (
            "["
            + ", ".join(
                "null"
                if v is None
                else (f"{v:.6g}" if isinstance(v, float) and not float(v).is_integer() else str(int(v)))
                for v in values
            )
            + "]"
        )

    parent_line = (parent.header.splitlines() or [f"# {parent.name}"])[0].lstrip("# ")
    lines = [
        f"# Serving profile {name}: {parent.model}, tensor parallel {target.tp}, {target.tp}x {target.name}.",
        "# DERIVED, NOT MEASURED: computed by scripts/derive_profile.py (toposcale/serving/derive.py) from",
        f"# {parent.status} profile {parent.name} ({parent_line}). Ratios used:",
        *[f"#  - {w}" for w in target.why],
        f"# => bandwidth-bound time x {r.r_mem:.3f}, compute-bound time x {r.r_comp:.3f}, decode never",
        f"#    below its matmul work at {r.efficiency:.0%} of the target's peak (the parent's efficiency).",
        "# Re-run scripts/derive_profile.py after h100-tp1.yaml changes.",
        "kind: toposcale.io/serving-profile/v1",
        f"name: {name}",
        "status: derived",
        f"model: {parent.model}",
        f"gpus_per_replica: {target.tp}",
        f"tensor_parallel: {target.tp}",
        "source:",
        f'  gpu: "{target.name}"',
        f'  derived_from: "{parent.name} ({parent.status})"',
        '  command: "python3 scripts/derive_profile.py"',
        "checks:",
        f"  r_mem: {r.r_mem:.4f}",
        f"  r_comp: {r.r_comp:.4f}",
        f"  allreduce_decode_b1_s: {allreduce_s(1, target):.6g}",
        f"  allreduce_prefill_8192_s: {allreduce_s(8192, target):.6g}",
        f"  decode_b1_floor_s: {floor * r.r_mem:.6g}",
        "kv_cache:",
        f"  bytes_per_token: {parent.kv_bytes_per_token}",
        "  gpu_memory_utilization: 0.9",
        f"  capacity_tokens: {capacity}",
        f"max_num_seqs: {parent.max_num_seqs}",
        f"max_num_batched_tokens: {parent.max_num_batched_tokens}",
        "prefill:",
        f"  tokens: {flow(parent.prefill_tokens)}",
        f"  seconds: {flow(prefill)}",
        "chunked_prefill:",
        f"  budget: {flow(parent.chunk_budget)}",
        f"  prior_context: {flow(parent.chunk_prior)}",
        "  seconds:",
        *[f"    - {flow(row)}" for row in chunk],
        "decode:",
        f"  batch: {flow(parent.decode_batch)}",
        f"  context: {flow(parent.decode_context)}",
        "  seconds:",
        *[f"    - {flow(row)}" for row in dec],
    ]
    assert all(math.isfinite(v) for v in prefill)
    return "\n".join(lines) + "\n"
