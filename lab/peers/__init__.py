"""The real peers the product meets, started on loopback: Prometheus, exporters, KEDA, the scheduler."""
