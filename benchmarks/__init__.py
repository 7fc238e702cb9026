"""Throughput benchmarks: our OPSD trainer against TRL's SDPO trainer (CPU), and a GPU check."""
