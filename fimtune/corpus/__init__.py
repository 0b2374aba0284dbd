"""Corpus building: walk, filter, dedup, spans, context, split, write. Only pipeline.py knows the order."""
