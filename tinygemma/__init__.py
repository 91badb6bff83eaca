"""tinygemma: Gemma 3 (270M and up) as a practical on-device language model.

    >>> import tinygemma
    >>> lm = tinygemma.load()                      # embedded Gemma 3 270M (base), or a .gguf / HF directory
    >>> lm.generate("The capital of France is", max_tokens=8)

The names below are imported on first use (PEP 562): `import tinygemma.tokenizer` alone does not import
PyTorch, so helper processes (tokenize_pool) start in a fraction of a second.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "lm", "LM": "lm", "Engine": "engine", "EngineConfig": "engine", "GenerationRequest": "engine",
    "Tokenizer": "tokenizer", "StreamDecoder": "tokenizer", "Gemma3Config": "config",
    "SamplingParams": "sampling", "GenerationChunk": "generate", "TinyGemmaError": "errors",
    "WeightsError": "errors", "ContextLengthError": "errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tinygemma' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
