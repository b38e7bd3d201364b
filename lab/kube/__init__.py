"""The local Kubernetes of the lab: control plane, API client, kubelets, the API stand-in (faults)."""
