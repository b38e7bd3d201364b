"""A `vllm_desired_replicas` rule's algorithm settings (`desired.algorithm` in the rules file) as the
algorithm's DesiredConfig. The algorithm, toposcale.autoscale.desired, is imported lazily: the rules load
(and are checked here) before any evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def algorithm() -> Any:
    from toposcale.autoscale import desired as algo

    return algo


def check_algorithm(fields: Mapping[str, Any]) -> None:
    """Raise ValueError naming what is wrong when `fields` do not make a DesiredConfig."""
    make_config(fields)


def make_config(fields: Mapping[str, Any]) -> Any:
    """DesiredConfig from a rule's `desired.algorithm` mapping. The prior capacity of one replica at the SLO
    is either `prior: {prompt_tokens_s: N, generation_tokens_s: N}` or `profile: NAME|FILE` (a serving
    profile, toposcale/serving/profiles: the capacity it gives at the rule's tpot_slo_s)."""
    algo = algorithm()
    kwargs = dict(fields)
    try:
        if "profile" in kwargs:
            if "prior" in kwargs:
                raise ValueError("give 'profile' or 'prior', not both")
            from toposcale.serving.profile import load_profile

            profile = load_profile(str(kwargs.pop("profile")))
            tpot = kwargs.get("tpot_slo_s", algo.DesiredConfig().tpot_slo_s)
            kwargs["prior"] = algo.Capacity.from_profile(profile, float(tpot))
        elif "prior" in kwargs:
            prior = kwargs["prior"]
            if not isinstance(prior, Mapping):
                raise ValueError("prior: expected {prompt_tokens_s: N, generation_tokens_s: N}")
            kwargs["prior"] = algo.Capacity(**prior)
        return algo.DesiredConfig(**kwargs)
    except (TypeError, ValueError) as exc:  # an unknown or missing field, a value out of range
        raise ValueError(f"desired.algorithm: {exc}") from None
