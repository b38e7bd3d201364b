"""The test laboratory: everything tests, benchmarks and scripts use to start, build and talk to the parts the
product meets (control plane, kubelets, Prometheus, exporters, KEDA, the real scheduler), never shipped.
lab/README.md maps "I need X" to the module. Standard library only here: `scripts/kube.sh` imports
`lab.kube.cluster` with a system python3 that has no aiohttp."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
