"""Errors with one-line messages that the CLI and server show as they are."""


class TinyGemmaError(Exception):
    """Base class: the message is a single line naming the problem."""


class WeightsError(TinyGemmaError, ValueError):
    """A weight file or directory is missing, malformed, or does not match the architecture."""


class ContextLengthError(TinyGemmaError, ValueError):
    """A prompt (plus requested tokens) does not fit the model's context."""


class MissingDependencyError(TinyGemmaError, ImportError):
    """An optional package (an extra such as tinygemma[eval]) is not installed."""
