"""The kit: what every service stands on, and nothing above it. The Kubernetes client and reflector
(`kube`), JSON logging (`logs`), CLI argument helpers (`cliargs`), the free-port helper (`ports`), the
bounded HTTPS listener both services serve on (`listener`, with `plainhttp`), metav1.Status and the one error
middleware (`status`), and the Kubernetes Quantity parser (`quantity`).

Layering: core < topology (extender/topology) < services (adapter, extender, agent) < apps (demo,
simulate, the CLI). Nothing here imports from above. Standard library only at import time for this package
and `ports` (scripts/kube.sh's lab imports `toposcale.core.ports` with the system python3)."""
