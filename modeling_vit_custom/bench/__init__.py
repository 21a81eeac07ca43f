"""Measurement against timm: the timing, FLOP and memory harness, and the reports the benchmark scripts print."""
