"""Pretraining fimtune's own small FIM code models from scratch: data, tokenizer, FIM transform, presets, recipe."""
