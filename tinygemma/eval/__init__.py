"""Evaluation: perplexity, IFEval (ifeval.py, checks in ifeval_checks.py), classification metrics and slot
extraction (extraction.py: restaurant8k text -> JSON)."""
