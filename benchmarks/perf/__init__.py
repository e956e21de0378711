"""Throughput and memory benchmarks (run as modules, e.g. `python -m benchmarks.perf.pretrain_step`)."""
