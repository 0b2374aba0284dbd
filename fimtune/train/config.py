"""TrainConfig: every setting of `fimtune train`, with defaults; a YAML file gives defaults, flags override."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fimtune.config import ConfigError

if TYPE_CHECKING:
    from fimtune.fim_format import Budgets

QUANTIZE = ("none", "8bit", "4bit")
ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")
PACKING = ("auto", "padding_free", "padded")
DTYPES = ("auto", "fp32", "bf16")
DEFAULT_SEQ_LEN = 2048  # rows when --seq-len is not given and the base model takes at least this many tokens


@dataclass
class LoraSettings:
    """The adapter: rank, scaling, dropout and which linear layers get one ("all-linear": every one but the head)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    rslora: bool = False  # rank-stabilized scaling alpha / sqrt(r) instead of alpha / r


@dataclass
class TrainConfig:
    """Everything `fimtune train` does; recorded in full in the run's fimtune.json."""

    corpus: str = ""
    base_model: str = ""
    out: str = ""
    template: str = "auto"  # auto: detected from the tokenizer and the model type
    max_steps: int = 0  # 0: train for `epochs` instead
    epochs: float = 1.0
    lr: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantize: str = "none"  # none | 8bit | 4bit (QLoRA: NF4 with double quantization)
    attention: str = "auto"  # auto: flash_attention_2 when flash-attn is installed and a GPU is present, else sdpa
    # auto: bf16 autocast (fp32 master weights on a CPU) where torch reports bf16 matrix support, else fp32
    dtype: str = "auto"  # auto | fp32 | bf16
    seq_len: int = 0  # longest rendered example: the FIM budgets' max_tokens (0: the base's limit, at most 2048)
    context_share: float = 0.3  # share of the prompt room that cross-file context may take
    prefix_share: float = 0.75  # share of the code room that goes to the prefix (the rest to the suffix)
    max_middle_tokens: int = 0  # 0: min(256, seq_len // 4); longer middles are cut (and teach no end token)
    batch_tokens: int = 16384  # tokens per optimizer step per device (seq_len-sized rows)
    grad_accum: int = 1
    # auto: padding-free packing (one flat row, position ids) with a varlen kernel (flash_attention_2), else
    # length-grouped padded batches: without varlen kernels a flat row costs attention over the whole batch.
    packing: str = "auto"  # auto | padding_free | padded
    gradient_checkpointing: bool = False
    eval_steps: int = 50  # evaluate on the test split (and save a checkpoint) every N steps
    eval_examples: int = 256  # test examples evaluated each time (0: all)
    max_train_examples: int = 0  # 0: all
    logging_steps: int = 10
    save_total_limit: int = 2  # checkpoints kept besides the best one
    seed: int = 0
    resume: bool = False
    merge: bool = False

    def validate(self) -> None:
        if not self.corpus:
            raise ConfigError("corpus: give a corpus folder with --corpus (built by `fimtune build-corpus`)")
        if not self.base_model:
            raise ConfigError("base_model: give a model folder, a Hugging Face model id, or `tiny` with --base-model")
        if not self.out:
            raise ConfigError("out: give the run folder with --out")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"quantize: must be one of {', '.join(QUANTIZE)}, not {self.quantize!r}")
        if self.attention not in ATTENTION:
            raise ConfigError(f"attention: must be one of {', '.join(ATTENTION)}, not {self.attention!r}")
        if self.packing not in PACKING:
            raise ConfigError(f"packing: must be one of {', '.join(PACKING)}, not {self.packing!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps: must be 0 (use epochs) or more, not {self.max_steps}")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError(f"epochs: must be more than 0, not {self.epochs}")
        for name, value in (
            ("lr", self.lr),
            ("epochs", self.epochs),
            ("warmup_ratio", self.warmup_ratio),
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
            ("context_share", self.context_share),
            ("prefix_share", self.prefix_share),
            ("lora.dropout", self.lora.dropout),
        ):
            if not math.isfinite(value):
                raise ConfigError(f"{name}: must be a finite number, not {value}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be more than 0, not {self.lr}")
        if self.lora.r < 1 or self.lora.alpha <= 0:
            raise ConfigError(
                f"lora: r must be at least 1 and alpha more than 0 (got r={self.lora.r}, alpha={self.lora.alpha})"
            )
        if not 0.0 <= self.lora.dropout < 1.0:
            raise ConfigError(f"lora.dropout: must be in [0, 1), not {self.lora.dropout}")
        if not self.lora.target_modules:
            raise ConfigError("lora.target_modules: name at least one module, or all-linear")
        if self.seq_len and self.seq_len < 64:
            raise ConfigError(f"seq_len: must be 0 (the base model's limit) or at least 64 tokens, not {self.seq_len}")
        try:
            self.budgets()
        except ValueError as e:  # FimFormatError names the budget
            raise ConfigError(str(e)) from None
        if self.batch_tokens < self.seq_len:
            raise ConfigError(
                f"batch_tokens: must be at least seq_len ({self.seq_len}), not {self.batch_tokens}; "
                "raise --batch-tokens or lower --seq-len"
            )
        if self.grad_accum < 1 or self.eval_steps < 1 or self.logging_steps < 1:
            raise ConfigError("grad_accum, eval_steps and logging_steps: must be at least 1")
        if self.eval_examples < 0 or self.max_train_examples < 0 or self.save_total_limit < 1:
            raise ConfigError("eval_examples and max_train_examples: 0 or more; save_total_limit: 1 or more")

    def budgets(self) -> Budgets:
        """The FIM token budgets every example is rendered with (recorded in fimtune.json for eval and serve);
        with seq_len 0, those of the longest default row (the trainer uses resolved_seq_len's)."""
        from fimtune.fim_format import Budgets

        seq_len = self.seq_len or DEFAULT_SEQ_LEN
        return Budgets(
            max_tokens=seq_len,
            context_share=self.context_share,
            prefix_share=self.prefix_share,
            max_middle_tokens=self.max_middle_tokens or min(256, seq_len // 4),
        )

    def resolved_seq_len(self, limit: int | None) -> int:
        """seq_len, or with 0 the base model's context limit (`limit`, from its config), at most DEFAULT_SEQ_LEN."""
        return self.seq_len or min(DEFAULT_SEQ_LEN, limit or DEFAULT_SEQ_LEN)

    @property
    def rows_per_batch(self) -> int:
        """Sequences (packed rows of up to seq_len tokens) per device per micro-batch."""
        return max(1, self.batch_tokens // self.seq_len)
