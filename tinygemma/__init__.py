"""tinygemma: Gemma 3 (270M and up) as a practical on-device language model.

    >>> import tinygemma
    >>> lm = tinygemma.load()                      # embedded Gemma 3 270M (base), or a .gguf / HF directory
    >>> lm.generate("The capital of France is", max_tokens=8)
"""

from .config import Gemma3Config
from .engine import Engine, EngineConfig, GenerationRequest
from .errors import ContextLengthError, TinyGemmaError, WeightsError
from .generate import GenerationChunk
from .lm import LM, load
from .sampling import SamplingParams
from .tokenizer import StreamDecoder, Tokenizer

__version__ = "0.1.0"

__all__ = [
    "load", "LM", "Engine", "EngineConfig", "GenerationRequest", "Tokenizer", "StreamDecoder", "Gemma3Config", "SamplingParams", "GenerationChunk",
    "TinyGemmaError", "WeightsError", "ContextLengthError", "__version__",
]
