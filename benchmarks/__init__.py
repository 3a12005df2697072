"""Benchmarks for jaxvis: run as ``python -m benchmarks.<name> [--quick]`` from the repo root.

See benchmarks/README.md for what each script measures and how FLOPs are counted.
"""
