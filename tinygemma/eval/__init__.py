"""Evaluation: perplexity, IFEval (ifeval.py, checks in ifeval_checks.py) and classification metrics."""
