"""PretrainConfig: every setting of `fimtune pretrain`; 0 or empty means "the preset's default"."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from fimtune.config import ConfigError
from fimtune.pretrain.fim import FimSettings, FimSettingsError
from fimtune.pretrain.presets import PresetError, get_preset


@dataclass
class PretrainConfig:
    """Everything `fimtune pretrain` does; the effective values are written to <out>/pretrain_config.json."""

    preset: str = "micro"
    out: str = ""
    sources: list[str] = field(default_factory=list)  # site-packages folders (default: this Python's)
    node_modules: list[str] = field(default_factory=list)  # node_modules folders for JS/TS
    holdout: list[str] = field(default_factory=list)  # package names held out for evaluation
    holdout_count: int = 3  # without `holdout`: how many mid-sized packages a seeded choice holds out
    max_data_mb: float = -1.0  # training source text cap in MB (-1: preset default, 0: all)
    max_package_mb: float = -1.0  # larger packages give a sample of their files up to N MB (-1: preset, 0: whole)
    tokenizer_mb: float = 0.0  # text the tokenizer is trained on, in MB (0: preset default)
    vocab_size: int = 0
    seq_len: int = 0
    batch_tokens: int = 0
    grad_accum: int = 0
    lr: float = 0.0
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    max_steps: int = 0
    eval_steps: int = 0
    eval_rows: int = 0
    logging_steps: int = 10
    max_minutes: float = 0.0  # stop this call after N minutes (a checkpoint is saved: continue with --resume)
    # Size the schedule to N minutes of training (over all calls): max_steps from a timed probe of a few steps.
    train_minutes: float = 0.0
    fim: FimSettings = field(default_factory=FimSettings)
    # Continue from a model fimtune pretrained (a folder or a built-in name): its tokenizer and weights instead of
    # a new tokenizer and seeded weights; its architecture must be the preset's. A new schedule, data and FIM cuts.
    init_from: str = ""
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: torch's default)
    dtype: str = "auto"  # auto: bf16 autocast where torch reports bf16 matrix support, else fp32 | fp32 | bf16
    resume: bool = False

    def effective(self) -> PretrainConfig:
        """A copy with every preset default filled in; validates."""
        try:
            p = get_preset(self.preset)
        except PresetError as e:
            raise ConfigError(str(e)) from None
        if not self.out:
            raise ConfigError("out: give the run folder with --out")
        init_from, vocab = self._init_from(p.vocab_size)
        cfg = replace(
            self,
            init_from=init_from,
            max_data_mb=p.max_data_mb if self.max_data_mb < 0 else self.max_data_mb,
            max_package_mb=p.max_package_mb if self.max_package_mb < 0 else self.max_package_mb,
            tokenizer_mb=self.tokenizer_mb or p.tokenizer_mb,
            vocab_size=vocab,
            seq_len=self.seq_len or p.seq_len,
            batch_tokens=self.batch_tokens or p.batch_tokens,
            grad_accum=self.grad_accum or p.grad_accum,
            lr=self.lr or p.lr,
            max_steps=self.max_steps or p.max_steps,
            eval_steps=self.eval_steps or p.eval_steps,
            eval_rows=self.eval_rows or p.eval_rows,
        )
        try:
            cfg.fim.validate()
        except FimSettingsError as e:
            raise ConfigError(str(e)) from None
        if cfg.seq_len < 16:
            raise ConfigError(f"seq_len: at least 16, not {cfg.seq_len}")
        if cfg.batch_tokens < cfg.seq_len:
            raise ConfigError(f"batch_tokens: at least seq_len ({cfg.seq_len}), not {cfg.batch_tokens}")
        if cfg.max_steps < 1 or cfg.eval_steps < 1 or cfg.logging_steps < 1 or cfg.grad_accum < 1:
            raise ConfigError("max_steps, eval_steps, logging_steps and grad_accum: at least 1")
        if self.train_minutes and self.max_steps:
            raise ConfigError("max_steps and train_minutes: give one of them (train_minutes sizes max_steps)")
        if cfg.lr <= 0 or cfg.train_minutes < 0 or cfg.max_minutes < 0 or cfg.holdout_count < 0 or cfg.threads < 0:
            raise ConfigError("lr: more than 0; train_minutes, max_minutes, holdout_count and threads: 0 or more")
        if cfg.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"dtype: must be one of auto, fp32, bf16, not {cfg.dtype!r}")
        if not cfg.holdout and cfg.holdout_count == 0:
            raise ConfigError("hold out at least one package (--holdout NAME or --holdout-count N): held-out loss")
        return cfg

    def _init_from(self, preset_vocab: int) -> tuple[str, int]:
        """The starting model's folder (absolute; built-in names resolved) and the vocabulary size it fixes."""
        if not self.init_from:
            return "", self.vocab_size or preset_vocab
        from fimtune.models import BUILTIN_MODELS, ModelError, resolve_builtin

        try:
            folder = resolve_builtin(self.init_from) if self.init_from in BUILTIN_MODELS else Path(self.init_from)
        except ModelError as e:
            raise ConfigError(f"init_from: {e}") from None
        folder = folder.expanduser().resolve()
        missing = [n for n in ("config.json", "tokenizer.json") if not (folder / n).is_file()]
        if missing:
            raise ConfigError(f"init_from: {folder} is not a model folder ({' and '.join(missing)} missing)")
        vocab = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("vocab_size")
        if self.vocab_size and self.vocab_size != vocab:
            raise ConfigError(f"vocab_size: {self.vocab_size}, but init_from {folder} has {vocab} tokens")
        return str(folder), int(vocab)

    @property
    def rows_per_batch(self) -> int:
        return max(1, self.batch_tokens // self.seq_len)
