"""The benchmark suite (see BENCHMARKS.md): `make bench` or `.venv/bin/python -m bench`."""
