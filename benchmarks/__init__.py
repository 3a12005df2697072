"""Benchmarks for jaxvis: run as ``python -m benchmarks.<name> [--tiny | --quick]`` from the
repository root.

See benchmarks/README.md for what each script measures and how FLOPs are counted.
"""
