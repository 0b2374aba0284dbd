"""Evaluation: completion metrics (metrics.py), the base-vs-tuned run over held-out examples, and its report."""
