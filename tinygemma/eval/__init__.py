"""Evaluation: perplexity (and, later, accuracy and IFEval)."""
