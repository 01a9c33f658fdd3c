"""Benchmarks of adapt: measured speed and the ODinW reproduction (see README.md here)."""
