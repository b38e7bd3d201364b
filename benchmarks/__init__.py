"""The benchmarks: `python -m benchmarks.bench_<x>` from the checkout (or `python benchmarks/bench_<x>.py`,
which runs the same module). Shared means (fleets, processes, the control plane, peers) come from lab/."""
