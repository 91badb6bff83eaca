"""Benchmarks: tinygemma against llama.cpp on the same GGUF, machine and thread count (see bench/speed.py)."""
