"""Throughput stage: examples per second and time per step for every feasible batch size."""
