"""`fimtune pretrain`: its flags and the command function (torch and friends are imported inside the command)."""

from __future__ import annotations

import argparse
from typing import Any

from fimtune.console import say as _say


def _names(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train fimtune's own small FIM code model from scratch on permissively licensed local code",
        description="Train a small Llama-architecture code model from scratch: permissively licensed Python of "
        "installed packages (and JS/TS of node_modules), a byte-level BPE tokenizer trained on it with fimtune's "
        "sentinel tokens, documents FIM-transformed (PSM and SPM) plus left-to-right text, loss on every token. "
        "Writes OUT/model (loadable with --base-model OUT/model), the data manifest, the loss curve and a "
        "report. --max-minutes ends a call on time with a checkpoint; --resume continues it.",
    )
    p.add_argument(
        "--preset",
        help="model preset: micro (~1M parameters, minutes), nano (~6M, the built-in base, hours on a 2-core CPU) or "
        "pico (~25M, GPU) (default: micro)",
    )
    p.add_argument("--out", help="run folder: model/, data/, checkpoints/, loss_curve.*, pretrain_report.json")
    p.add_argument("--config", help="YAML with defaults for every setting (see PretrainConfig)")
    p.add_argument("--sources", nargs="+", help="site-packages folders to read (default: this Python's)")
    p.add_argument("--node-modules", nargs="+", help="node_modules folders whose JS/TS packages to read as well")
    p.add_argument("--holdout", type=_names, help="packages held out for evaluation, comma-separated")
    p.add_argument("--holdout-count", type=int, help="without --holdout: a seeded choice of N packages (default 3)")
    p.add_argument("--max-data-mb", type=float, help="training source text cap in MB (0: all; default per preset)")
    p.add_argument(
        "--max-package-mb",
        type=float,
        help="a package larger than N MB gives a seeded sample of its files up to N MB (0: whole packages only; "
        "default per preset)",
    )
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default per preset)")
    p.add_argument("--seq-len", type=int, help="tokens per row (default per preset)")
    p.add_argument("--batch-tokens", type=int, help="tokens per micro-batch per device (default per preset)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default per preset)")
    p.add_argument("--lr", type=float, help="peak learning rate, cosine schedule (default per preset)")
    p.add_argument("--max-steps", type=int, help="optimizer steps: the schedule's length (default per preset)")
    p.add_argument("--eval-steps", type=int, help="held-out loss and a checkpoint every N steps")
    p.add_argument("--max-minutes", type=float, help="end this call after N minutes, with a checkpoint")
    p.add_argument(
        "--train-minutes",
        type=float,
        help="size the schedule (max steps) to N minutes of training in all, from a timed probe of a few steps",
    )
    p.add_argument("--fim-rate", type=float, help="share of documents FIM-transformed (default 0.9)")
    p.add_argument("--spm-share", type=float, help="share of FIM documents in SPM order (default 0.5)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        help="compute dtype: auto (default) is bf16 autocast with fp32 master weights where torch reports bf16 "
        "matrix support (CPU or GPU), else fp32",
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start from a model fimtune pretrained (a model folder, or `nano`): its tokenizer and weights, with a "
        "new schedule and new data; the preset must have its architecture",
    )
    p.add_argument("--seed", type=int, help="seed for data choice, FIM cuts, order and weights (default 0)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from its checkpoint")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fimtune.config import load_config
    from fimtune.console import CommandError
    from fimtune.pretrain.config import PretrainConfig

    overrides: dict[str, Any] = {
        "preset": args.preset,
        "out": args.out,
        "sources": args.sources,
        "node_modules": args.node_modules,
        "holdout": args.holdout,
        "holdout_count": args.holdout_count,
        "max_data_mb": args.max_data_mb,
        "max_package_mb": args.max_package_mb,
        "vocab_size": args.vocab_size,
        "seq_len": args.seq_len,
        "batch_tokens": args.batch_tokens,
        "grad_accum": args.grad_accum,
        "lr": args.lr,
        "max_steps": args.max_steps,
        "eval_steps": args.eval_steps,
        "max_minutes": args.max_minutes,
        "train_minutes": args.train_minutes,
        "fim.rate": args.fim_rate,
        "fim.spm_share": args.spm_share,
        "threads": args.threads,
        "dtype": args.dtype,
        "init_from": args.init_from,
        "seed": args.seed,
        "resume": args.resume,
    }
    cfg = load_config(PretrainConfig, args.config, overrides)
    if not cfg.resume:
        cfg.effective()  # bad settings fail here, before torch is imported

    from fimtune.models import ModelError
    from fimtune.pretrain.train import PretrainError, pretrain

    try:
        result = pretrain(cfg)
    except (PretrainError, ModelError) as e:
        raise CommandError(str(e)) from None
    r = result.report
    mfu = f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
    _say(
        f"trained {r['steps']} of {r['max_steps']} steps ({r['tokens_seen'] / 1e6:.2f}M tokens; this call "
        f"{r['call_tokens'] / 1e6:.2f}M at {r['tokens_per_s']:.0f} tokens/s{mfu}); held-out loss "
        f"{r['heldout_loss_start']:.3f} -> {r['heldout_loss_end']:.3f}"
    )
    if not r["finished"]:
        _say(f"stopped early: continue with `fimtune pretrain --out {result.out} --resume [--max-minutes N]`")
    _say(
        f"model: {result.model} (use --base-model {result.model}); loss curve: {result.out}/loss_curve.png; "
        f"what data was used: {result.model}/data_manifest.json"
    )
    return 0
