"""Speed benchmark: tinygemma vs llama.cpp on the same GGUF, same machine, same thread count.

    pip install llama-cpp-python==0.3.36 matplotlib     # once (llama.cpp compiles for several minutes)
    python bench/speed.py --reps 3                      # default model, all cores
    python bench/speed.py --model some.gguf --threads 4 --engines tinygemma

Prints a table of medians (load time, peak RSS, prefill 128/512, single-stream decode, aggregate decode
at 1/4/8/16/25 sequences, and the ratio tinygemma/llama.cpp) and writes bench/results/speed.json and
speed.png. `python bench/speed.py --help` lists every flag; `tinygemma bench` is the same command.
"""

from tinygemma.bench.speed import main

if __name__ == "__main__":
    main()
