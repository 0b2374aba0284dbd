"""Named model presets for `fimtune pretrain`: Llama shapes, training defaults, and how the weights are saved."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig


class PresetError(ValueError):
    """An unknown preset name; the message lists the known ones."""


@dataclass(frozen=True, slots=True)
class Preset:
    """A Llama architecture plus the training defaults that suit it (every default can be overridden by a flag)."""

    name: str
    description: str
    vocab_size: int  # BPE vocabulary trained on the data, fimtune's sentinel tokens included
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_embeddings: bool
    seq_len: int
    batch_tokens: int  # tokens per micro-batch per device (seq_len-long rows)
    grad_accum: int  # micro-batches per optimizer step
    lr: float
    max_steps: int  # the length of the cosine schedule; --max-minutes may stop a call earlier (then --resume)
    eval_steps: int
    eval_rows: int  # held-out rows of seq_len tokens evaluated each time
    max_data_mb: float  # cap on training source text (0: all that is found)
    tokenizer_mb: float  # cap on the text the tokenizer is trained on
    save_dtype: str  # dtype of the shipped weights
    max_shard_bytes: int  # safetensors shard size (files of at most 16 MiB)
    # A package larger than this gives a seeded sample of its files up to it (0: whole packages only), so that a
    # few large packages do not make up most of the data.
    max_package_mb: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def param_count(self, vocab_size: int | None = None) -> int:
        """Parameters of the model this preset builds (no biases; RMSNorm weights included)."""
        v, d, i = vocab_size or self.vocab_size, self.hidden_size, self.intermediate_size
        kv = self.num_kv_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv
        layer = attention + 3 * d * i + 2 * d
        head = 0 if self.tie_embeddings else v * d
        return v * d + self.num_layers * layer + d + head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="micro",
            description="about 1M parameters: a few CPU minutes, to try and test pretraining",
            vocab_size=2048,
            hidden_size=128,
            intermediate_size=384,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            tie_embeddings=True,
            seq_len=256,
            batch_tokens=4096,
            grad_accum=1,
            lr=3e-3,
            max_steps=300,
            eval_steps=25,
            eval_rows=64,
            max_data_mb=4.0,
            tokenizer_mb=4.0,
            save_dtype="float32",
            max_shard_bytes=15 * 2**20,
        ),
        Preset(
            name="nano",
            description="about 6.5M parameters: the built-in base, trained for hours on a 2-core CPU in bf16",
            vocab_size=8192,
            hidden_size=256,
            intermediate_size=688,
            num_layers=6,
            num_heads=4,
            num_kv_heads=2,
            tie_embeddings=True,
            seq_len=1024,  # about 3 KB of code: the prompt an editor request gets
            batch_tokens=4096,  # 4 rows per micro-batch
            grad_accum=4,  # 16384 tokens per optimizer step
            lr=2e-3,
            max_steps=1000,
            eval_steps=100,
            eval_rows=128,
            max_data_mb=60.0,  # about one epoch of what two hours on two cores train on
            tokenizer_mb=16.0,
            save_dtype="bfloat16",  # 6.5M x 2 bytes: about 13 MB
            max_shard_bytes=15 * 2**20,
            max_package_mb=3.0,
        ),
        Preset(
            name="pico",
            description="about 25M parameters: the built-in base model, about 20 minutes on one H100/H200",
            vocab_size=16384,
            hidden_size=384,
            intermediate_size=1024,
            num_layers=12,
            num_heads=6,
            num_kv_heads=2,
            tie_embeddings=True,
            seq_len=2048,  # the served default budget (fim_format.Budgets.max_tokens) fits what it was trained on
            batch_tokens=65536,  # 32 rows: activations and fp32 logits stay well inside an H100's 80 GB
            grad_accum=4,  # 262144 tokens per optimizer step
            lr=1.5e-3,
            max_steps=3000,
            eval_steps=250,
            eval_rows=512,
            max_data_mb=400.0,  # bounds the first call's data preparation (a few minutes on 16 cores)
            tokenizer_mb=64.0,
            save_dtype="bfloat16",  # 25M x 2 bytes: about 48 MiB
            max_shard_bytes=15 * 2**20,  # files under 16 MiB, as shipped weights are kept, with room for the header
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(f"{p.name} ({p.description})" for p in PRESETS.values())
        raise PresetError(f"unknown preset {name!r}; known: {known}") from None


def llama_config(preset: Preset, vocab_size: int, eos_id: int, pad_id: int, seq_len: int = 0) -> LlamaConfig:
    """The transformers config of a preset for a tokenizer of `vocab_size` tokens (no BOS: fimtune's template has
    none). Its max_position_embeddings is the row length trained on (`seq_len`, default the preset's), so that
    prompts for the base are budgeted to what it has seen."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=seq_len or preset.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=preset.tie_embeddings,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
