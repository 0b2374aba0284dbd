"""Fine-tuning: data (render + labels), model (load, quantize, LoRA, the `tiny` preset), sft (the recipe)."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """True outside `accelerate launch`/torchrun, and on rank 0 inside (read from the environment, no torch)."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"
