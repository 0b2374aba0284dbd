"""The adapter put on a base model for tuning (the base itself comes from `fimtune.models`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft import LoraConfig

    from fimtune.train.config import LoraSettings


def lora_config(settings: LoraSettings) -> LoraConfig:
    """LoRA on every linear layer but the output head by default ("all-linear"); rsLoRA on request."""
    from peft import LoraConfig

    targets: str | list[str] = (
        "all-linear" if settings.target_modules == ["all-linear"] else list(settings.target_modules)
    )
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_rslora=settings.rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
