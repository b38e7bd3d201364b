"""`toposcale simulate`: replay one GPU workload over a fleet under several placement policies, side by side.

Data flows fleet + workload (sources) -> replay (model: nodes, free-GPU masks, events) -> report (table, JSON,
figure). The `toposcale` policy and the device-plugin prediction are the extender's own code, imported.
"""
