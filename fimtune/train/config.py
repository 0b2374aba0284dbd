"""TrainConfig: every setting of `fimtune train`, with defaults; a YAML file gives defaults, flags override."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fimtune.config import ConfigError, check, setting
from fimtune.fim_format import TEMPLATES
from fimtune.models import DTYPES

if TYPE_CHECKING:
    from fimtune.fim_format import Budgets

QUANTIZE = ("none", "8bit", "4bit")
ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")
PACKING = ("auto", "padding_free", "padded")
DEFAULT_SEQ_LEN = 2048  # rows when --seq-len is not given and the base model takes at least this many tokens


@dataclass
class LoraSettings:
    """The adapter: rank, scaling, dropout and which linear layers get one ("all-linear": every one but the head)."""

    r: int = setting(16, help="LoRA rank", flag="--lora-r", at_least=1)
    alpha: int = setting(32, help="LoRA alpha", flag="--lora-alpha", above=0)
    dropout: float = setting(0.05, help="LoRA dropout", flag="--lora-dropout", at_least=0, below=1)
    target_modules: list[str] = setting(
        help="module names for LoRA (all-linear: every linear layer but the head)",
        factory=lambda: ["all-linear"],
        flag="--target-modules",
        must="at least one module name, or all-linear",
        test=bool,
    )
    rslora: bool = setting(
        False, help="rank-stabilized LoRA scaling (alpha/sqrt(r) instead of alpha/r)", flag="--rslora"
    )


@dataclass
class TrainConfig:
    """Everything `fimtune train` does; recorded in full in the run's fimtune.json."""

    corpus: str = setting("", help="corpus folder written by `fimtune build-corpus`", flag=True)
    base_model: str = setting(
        "",
        help="model folder, Hugging Face model id, or a built-in model: `nano` (default when installed), `pico`, "
        "`tiny` (random weights, for tests)",
        flag=True,
    )
    out: str = setting("", help="run folder: adapter, fimtune.json, train_report.json, checkpoints/", flag=True)
    template: str = setting(
        "auto",
        help=f"FIM template: {', '.join(TEMPLATES)}, or auto (default: detected from the tokenizer and the model type)",
        flag=True,
        metavar="NAME",
        choices=("auto", *TEMPLATES),
    )
    max_steps: int = setting(0, help="optimizer steps", flag=True, zero="train for epochs instead", at_least=1)
    epochs: float = setting(1.0, help="passes over the training split", flag=True, above=0)
    lr: float = setting(2e-4, help="peak learning rate", flag=True, above=0)
    end_weight: float = setting(
        1.0,
        help="loss weight of the end token that closes each middle, the decision to stop (an empty middle is that "
        "token alone), against 1 for every other middle token",
        flag=True,
        above=0,
        at_most=100,
    )
    lr_scheduler: str = setting("cosine", help="transformers' learning-rate schedule name")
    warmup_ratio: float = setting(0.03, help="share of the steps spent warming up", at_least=0, below=1)
    weight_decay: float = setting(0.0, help="AdamW weight decay", at_least=0)
    max_grad_norm: float = setting(1.0, help="gradient clipping norm", above=0)
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantize: str = setting(
        "none", help="load the base quantized (4bit: QLoRA, NF4 with double quantization)", flag=True, choices=QUANTIZE
    )
    attention: str = setting(
        "auto",
        help="attention kernel (auto: flash_attention_2 when flash-attn is installed and a GPU is present, else sdpa)",
        flag=True,
        choices=ATTENTION,
    )
    dtype: str = setting(
        "auto",
        help="compute dtype: auto (default) is bf16 autocast (fp32 master weights) where torch reports bf16 matrix "
        "support, else fp32",
        flag=True,
        choices=DTYPES,
    )
    seq_len: int = setting(
        0,
        help="longest rendered example in tokens: the FIM budgets' max_tokens (default: the base model's limit, "
        "at most 2048)",
        flag=True,
        zero="the base model's limit",
        at_least=64,
    )
    context_share: float = setting(
        0.3, help="share of the prompt room that cross-file context may take", at_least=0, at_most=1
    )
    prefix_share: float = setting(
        0.75, help="share of the code room that goes to the prefix (the rest to the suffix)", at_least=0, at_most=1
    )
    max_middle_tokens: int = setting(
        0,
        help="longer middles are cut (and teach no end token)",
        zero="min(256, seq_len // 4)",
        at_least=1,
    )
    batch_tokens: int = setting(
        16384, help="tokens per micro-batch per device (seq_len-sized rows)", flag=True, at_least=1
    )
    grad_accum: int = setting(1, help="micro-batches per optimizer step", flag=True, at_least=1)
    # Without varlen kernels a flat row costs attention over the whole batch.
    packing: str = setting(
        "auto",
        help="padding-free packing (one flat row, position ids) or length-grouped padded batches (default auto: "
        "padding-free with flash-attn)",
        flag=True,
        choices=PACKING,
    )
    gradient_checkpointing: bool = setting(False, help="trade compute for memory", flag=True)
    eval_steps: int = setting(
        50, help="evaluate on validation files and save a checkpoint every N steps", flag=True, at_least=1
    )
    eval_examples: int = setting(
        256,
        help="validation examples: whole training files held out to choose the best checkpoint (at most a tenth "
        "of the training examples; the test split stays for fimtune eval)",
        zero="all",
        at_least=1,
    )
    max_train_examples: int = setting(0, help="training examples used", zero="all", at_least=1)
    logging_steps: int = setting(10, help="steps between loss records", at_least=1)
    save_total_limit: int = setting(2, help="checkpoints kept besides the best one", at_least=1)
    seed: int = setting(0, help="seed for data order and adapter init", flag=True)
    resume: bool = setting(False, help="continue from the run's last checkpoint", flag=True)
    merge: bool = setting(False, help="also write the merged model to RUN/merged", flag=True)

    def validate(self) -> None:
        check(self)
        if not self.corpus:
            raise ConfigError("corpus: give a corpus folder with --corpus (built by `fimtune build-corpus`)")
        if not self.base_model:
            raise ConfigError("base_model: give a model folder, a Hugging Face model id, or `tiny` with --base-model")
        if not self.out:
            raise ConfigError("out: give the run folder with --out")
        try:
            self.budgets()
        except ValueError as e:  # FimFormatError names the budget
            raise ConfigError(str(e)) from None
        from transformers.trainer_utils import SchedulerType  # what the Trainer takes, checked before any work

        schedules = [t.value for t in SchedulerType]
        if self.lr_scheduler not in schedules:
            raise ConfigError(f"lr_scheduler: {self.lr_scheduler!r} is not one of {', '.join(schedules)}")
        if self.batch_tokens < self.seq_len:
            raise ConfigError(
                f"batch_tokens: must be at least seq_len ({self.seq_len}), not {self.batch_tokens}; "
                "raise --batch-tokens or lower --seq-len"
            )

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
