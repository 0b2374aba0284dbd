"""PretrainConfig: every setting of `fimtune pretrain`; 0 or empty means "the preset's default"."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from fimtune.config import ConfigError, check, setting
from fimtune.models import DTYPES
from fimtune.pretrain.fim import FimSettings, FimSettingsError
from fimtune.pretrain.presets import PresetError, get_preset


def _names(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


@dataclass
class PretrainConfig:
    """Everything `fimtune pretrain` does; the effective values are written to <out>/pretrain_config.json."""

    preset: str = setting(
        "micro",
        help="model preset: micro (~1M parameters, minutes), nano (~6M, the built-in base, hours on a 2-core CPU) or "
        "pico (~25M, GPU)",
        flag=True,
    )
    out: str = setting(
        "", help="run folder: model/, data/, checkpoints/, loss_curve.*, pretrain_report.json", flag=True
    )
    sources: list[str] = setting(help="site-packages folders to read (default: this Python's)", factory=list, flag=True)
    node_modules: list[str] = setting(
        help="node_modules folders whose JS/TS packages to read as well", factory=list, flag=True
    )
    holdout: list[str] = setting(
        help="packages held out for evaluation, comma-separated", factory=list, flag=True, parse=_names, metavar="NAMES"
    )
    holdout_count: int = setting(
        3, help="without --holdout: a seeded choice of N mid-sized packages is held out", flag=True, at_least=0
    )
    max_data_mb: float = setting(
        -1.0, help="training source text cap in MB (0: all; default per preset)", flag=True, at_least=-1
    )
    max_package_mb: float = setting(
        -1.0,
        help="a package larger than N MB gives a seeded sample of its files up to N MB (0: whole packages only; "
        "default per preset)",
        flag=True,
        at_least=-1,
    )
    tokenizer_mb: float = setting(0.0, help="text the tokenizer is trained on, in MB (0: preset default)", at_least=0)
    vocab_size: int = setting(
        0, help="BPE vocabulary size (default per preset)", flag=True, zero="preset", at_least=256
    )
    seq_len: int = setting(0, help="tokens per row (default per preset)", flag=True, zero="preset", at_least=16)
    batch_tokens: int = setting(
        0, help="tokens per micro-batch per device (default per preset)", flag=True, zero="preset", at_least=16
    )
    grad_accum: int = setting(
        0, help="micro-batches per optimizer step (default per preset)", flag=True, zero="preset", at_least=1
    )
    lr: float = setting(
        0.0, help="peak learning rate, cosine schedule (default per preset)", flag=True, zero="preset", above=0
    )
    warmup_ratio: float = setting(0.05, help="share of the steps spent warming up", at_least=0, below=1)
    weight_decay: float = setting(0.1, help="AdamW weight decay", at_least=0)
    max_steps: int = setting(
        0, help="optimizer steps: the schedule's length (default per preset)", flag=True, zero="preset", at_least=1
    )
    eval_steps: int = setting(
        0,
        help="held-out loss and a checkpoint every N steps (default per preset)",
        flag=True,
        zero="preset",
        at_least=1,
    )
    eval_rows: int = setting(0, help="held-out rows evaluated (default per preset)", zero="preset", at_least=1)
    logging_steps: int = setting(10, help="steps between loss records", at_least=1)
    max_minutes: float = setting(
        0.0,
        help="end this call after N minutes, with a checkpoint (continue with --resume)",
        flag=True,
        zero="no limit",
        above=0,
    )
    train_minutes: float = setting(
        0.0,
        help="size the schedule (max steps) to N minutes of training in all, from a timed probe of a few steps",
        flag=True,
        zero="max_steps decides",
        above=0,
    )
    fim: FimSettings = field(default_factory=FimSettings)
    init_from: str = setting(
        "",
        help="start from a model fimtune pretrained (a model folder, or `nano`): its tokenizer and weights, with a "
        "new schedule and new data; the preset must have its architecture",
        flag=True,
        metavar="MODEL",
    )
    seed: int = setting(0, help="seed for data choice, FIM cuts, order and weights", flag=True)
    threads: int = setting(0, help="torch CPU threads", flag=True, zero="torch's choice", at_least=1)
    dtype: str = setting(
        "auto",
        help="compute dtype: auto (default) is bf16 autocast with fp32 master weights where torch reports bf16 "
        "matrix support (CPU or GPU), else fp32",
        flag=True,
        choices=DTYPES,
    )
    resume: bool = setting(False, help="continue the run in --out from its checkpoint", flag=True)

    def effective(self) -> PretrainConfig:
        """A copy with every preset default filled in; validates."""
        check(self)
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
        if cfg.batch_tokens < cfg.seq_len:
            raise ConfigError(f"batch_tokens: at least seq_len ({cfg.seq_len}), not {cfg.batch_tokens}")
        if self.train_minutes and self.max_steps:
            raise ConfigError("max_steps and train_minutes: give one of them (train_minutes sizes max_steps)")
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
