"""An exported GGUF (e.g. a fine-tuned model merged by `tinygemma export`) run greedily by llama.cpp
(llama-cpp-python) and by tinygemma (float32) on restaurant8k-style extraction prompts, side by side.

    tinygemma export r8k_q8.gguf --adapter r8k/adapter --type q8_0
    pip install llama-cpp-python        # bench only
    python bench/export_check.py r8k_q8.gguf
"""

import sys

from llama_cpp import Llama

import tinygemma
from tinygemma.eval.extraction import PROMPT

TEXTS = ["There will be 5 adults and 1 child.", "Can I book a table for 7pm tomorrow under the name Sarah Jones?",
         "we are 4 people, next friday at half past eight"]


def main() -> None:
    path = sys.argv[1]
    llm = Llama(path, n_ctx=512, n_threads=2, verbose=False)
    lm = tinygemma.load(path, dtype="float32")
    for text in TEXTS:
        prompt = PROMPT.format(asked="", text=text)
        ours = lm.generate(prompt, max_tokens=48, temperature=0.0)
        theirs = llm(prompt, max_tokens=48, temperature=0.0)["choices"][0]["text"]
        print(f"{text!r}\n  llama.cpp: {theirs!r}\n  tinygemma: {ours!r}")


if __name__ == "__main__":
    main()
