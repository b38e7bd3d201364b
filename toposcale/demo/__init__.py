"""`toposcale demo`: the whole loop on one machine, no cluster and no GPU.

Simulated vLLM replicas serve real-format `/metrics`; the real adapter scrapes them; an HPA loop reads the
adapter's external metrics API and applies the controller's rule; a scheduler loop asks the real extender
where each new 4-GPU replica goes over a fleet built from real `nvidia-smi topo -m` captures.
"""
