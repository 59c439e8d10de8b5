"""Built-in workloads: digits_mlp (default, real data), synthetic_cnn (conv throughput/memory), nqm (noisy quadratic model)."""
