"""Autoscaling: toposcale's desired-replicas algorithm and the trace-driven benchmark of scaling policies."""
