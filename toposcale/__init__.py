"""toposcale: GPU-topology-aware scheduling and KV-cache/queue-aware autoscaling for LLM inference."""

__version__ = "0.1.0"
