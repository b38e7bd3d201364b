"""The node agent (`toposcale agent`): NVML discovery, kubelet pod-resources, Node annotation publishing."""
