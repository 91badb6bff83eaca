"""tinygemma bench: speed of tinygemma vs llama.cpp on the same GGUF, threads and machine (see tinygemma.bench.speed)."""

from __future__ import annotations


def build_parser(p):
    from ..bench.speed import add_arguments

    return add_arguments(p)


def main(args) -> int:
    from ..bench.speed import run

    run(args)
    return 0
