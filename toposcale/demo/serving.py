"""The demo's replicas run the shared serving model of one vLLM replica (`toposcale.serving.model`: continuous
batching, chunked prefill, KV-cache admission, recompute preemption), with step times from a serving profile
(`rtx4090d-tp4` by default: the seed's Qwen2.5-7B on 4x RTX 4090D, as the demo's 4-GPU replicas), and the
demo's request mix. One implementation serves the demo, the autoscaling benchmark and the tests."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from toposcale.serving.model import Finished, ReplicaModel, Request
from toposcale.serving.profile import Profile, load_profile

__all__ = [
    "DEMO_PROFILE",
    "Finished",
    "ReplicaModel",
    "Request",
    "ServingParams",
    "new_replica",
    "new_request",
]

DEMO_PROFILE = "rtx4090d-tp4"


@dataclass(frozen=True, slots=True)
class ServingParams:
    profile: str = DEMO_PROFILE  # a shipped profile name or a profile file
    max_num_seqs: int | None = None  # overrides of the profile's (tests shrink them to reach the limits)
    kv_capacity_tokens: int | None = None
    prompt_tokens: tuple[int, int] = (200, 1_200)  # the demo's request mix, uniform
    output_tokens: tuple[int, int] = (100, 400)

    def load(self) -> Profile:
        p = load_profile(self.profile)
        changes: dict[str, int] = {}
        if self.max_num_seqs is not None:
            changes["max_num_seqs"] = self.max_num_seqs
        if self.kv_capacity_tokens is not None:
            changes["kv_capacity_tokens"] = self.kv_capacity_tokens
        return dataclasses.replace(p, **changes) if changes else p


def new_replica(params: ServingParams) -> ReplicaModel:
    return ReplicaModel(params.load())


def new_request(rng: random.Random, now: float, params: ServingParams) -> Request:
    prompt, output = rng.randint(*params.prompt_tokens), rng.randint(*params.output_tokens)
    return Request(arrival=now, prompt=prompt, output=output)
