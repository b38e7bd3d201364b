"""The demo's traffic loop: requests drawn from the traffic curve, routed to ready replicas, served by their
model, counted against the SLO."""

from __future__ import annotations

import logging
from typing import Any

from .serving import new_request
from .traffic import poisson

logger = logging.getLogger("toposcale.demo")


class TrafficLoop:
    """Traffic in, served out (a mixin of runner.Demo)."""

    def route(self, req: Any) -> None:
        ready = self.ready()
        if ready:
            target = self.rng.choice(ready)
            assert target.sim is not None
            target.sim.model.submit(req)

    def serve(self, now: float, dt: float) -> float:
        rate = self.curve.rate(now)
        ready = self.ready()
        if ready:
            for _ in range(poisson(self.rng, rate * dt)):
                self.route(new_request(self.rng, now, self.params))
        for r in self.replicas.values():
            if r.sim is not None and r.phase in ("Ready", "Terminating"):
                r.sim.model.step(now, dt)
                done = r.sim.model.finished
                self.story.served += len(done)
                self.story.ttft.extend(f.ttft_s for f in done)
                self.story.slo_met += sum(
                    1 for f in done if f.ttft_s <= self.cfg.ttft_slo_s and f.tpot_s <= self.cfg.tpot_slo_s
                )
                r.sim.publish(dt)
        holding = sum(1 for r in self.replicas.values() if r.phase != "Pending")
        self.story.gpu_seconds += holding * self.profile.gpus_per_replica * dt
        for exp in self.exporters.values():
            exp.observe({r.pod: r.sim.gpu_util for r in self.replicas.values() if r.sim is not None})
        return rate
