"""`fimtune train`: its flags and the command function (torch and friends are imported inside the command)."""

from __future__ import annotations

import argparse
from typing import Any

from fimtune.console import say as _say


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="LoRA / QLoRA fine-tuning of a code model on a corpus",
        description="Fine-tune a base model with LoRA (or QLoRA with --quantize 4bit) on a corpus built by "
        "`fimtune build-corpus`. Settings come from --config (YAML, see TrainConfig in fimtune/train/config.py) "
        "and flags override them. Runs unchanged under `accelerate launch` on many devices.",
    )
    p.add_argument("--corpus", help="corpus folder written by `fimtune build-corpus`")
    p.add_argument(
        "--base-model",
        help="model folder, Hugging Face model id, or a built-in model: `nano` (default when installed), "
        "`pico`, `tiny` (random weights, for tests)",
    )
    p.add_argument("--out", help="run folder: adapter, fimtune.json, train_report.json, checkpoints/")
    p.add_argument("--config", help="YAML with defaults for every setting")
    p.add_argument("--template", help="FIM template name, or auto (default: detected from the tokenizer)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int, help="optimizer steps (default: train for --epochs)")
    steps.add_argument("--epochs", type=float, help="passes over the training split (default: 1)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 2e-4)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default: 16)")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha (default: 32)")
    p.add_argument("--lora-dropout", type=float, help="LoRA dropout (default: 0.05)")
    p.add_argument("--rslora", action="store_true", default=None, help="rank-stabilized LoRA scaling (alpha/sqrt(r))")
    p.add_argument("--target-modules", nargs="+", help="module names for LoRA (default: all-linear)")
    p.add_argument("--quantize", choices=["none", "8bit", "4bit"], help="load the base quantized (4bit: QLoRA, NF4)")
    p.add_argument("--attention", choices=["auto", "flash_attention_2", "sdpa", "eager"], help="attention kernel")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        help="compute dtype: auto (default) is bf16 autocast where torch reports bf16 matrix support, else fp32",
    )
    p.add_argument(
        "--seq-len", type=int, help="longest rendered example in tokens (default: the base model's limit, at most 2048)"
    )
    p.add_argument("--batch-tokens", type=int, help="tokens per micro-batch per device (default: 16384)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default: 1)")
    p.add_argument(
        "--packing",
        choices=["auto", "padding_free", "padded"],
        help="padding-free packing or length-grouped padded batches (default auto: padding-free with flash-attn)",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", default=None, help="trade compute for memory")
    p.add_argument("--eval-steps", type=int, help="evaluate and save a checkpoint every N steps (default: 50)")
    p.add_argument("--seed", type=int, help="seed for data order and adapter init (default: 0)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the run's last checkpoint")
    p.add_argument("--merge", action="store_true", default=None, help="also write the merged model to RUN/merged")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from fimtune.config import load_config, to_dict
    from fimtune.console import CommandError
    from fimtune.train.config import TrainConfig

    overrides: dict[str, Any] = {
        "corpus": args.corpus,
        "base_model": args.base_model,
        "out": args.out,
        "template": args.template,
        "max_steps": args.max_steps,
        "epochs": args.epochs,
        "lr": args.lr,
        "lora.r": args.lora_r,
        "lora.alpha": args.lora_alpha,
        "lora.dropout": args.lora_dropout,
        "lora.rslora": args.rslora,
        "lora.target_modules": args.target_modules,
        "quantize": args.quantize,
        "attention": args.attention,
        "dtype": args.dtype,
        "seq_len": args.seq_len,
        "batch_tokens": args.batch_tokens,
        "grad_accum": args.grad_accum,
        "packing": args.packing,
        "gradient_checkpointing": args.gradient_checkpointing,
        "eval_steps": args.eval_steps,
        "seed": args.seed,
        "resume": args.resume,
        "merge": args.merge,
    }
    if args.max_steps is not None and args.max_steps < 1:
        raise CommandError(f"--max-steps: at least 1, not {args.max_steps} (to train whole epochs, give --epochs N)")
    if args.epochs is not None:
        overrides["max_steps"] = 0
    cfg = load_config(TrainConfig, args.config, overrides)
    if not cfg.base_model:
        from fimtune.models import default_base_model

        cfg.base_model = default_base_model()  # the best built-in model installed (`nano` in a checkout)
    cfg.validate()
    from fimtune.train import is_main_process

    main = is_main_process()
    if main:
        _say("effective config:\n  " + yaml.safe_dump(to_dict(cfg), sort_keys=False).replace("\n", "\n  ").rstrip())

    from fimtune.models import ModelError
    from fimtune.train.data import DataError
    from fimtune.train.sft import TrainError, train

    try:
        result = train(cfg)
    except (TrainError, DataError, ModelError) as e:
        raise CommandError(str(e)) from None
    if main:
        r = result.report
        _say(
            f"trained {r['steps']} steps in {r['train_runtime_s']:.0f}s ({r['tokens_per_s']:.0f} tokens/s, "
            f"{100 * r['real_token_share']:.0f}% real tokens); final loss "
            f"{r['loss_curve'][-1]['loss'] if r['loss_curve'] else float('nan'):.3f}"
            + (f", best eval loss {r['best_eval_loss']:.3f}" if r["best_eval_loss"] is not None else "")
        )
        _say(f"adapter: {result.adapter} (beside it: adapter_config.json, fimtune.json, train_report.json)")
        if result.merged:
            _say(f"merged model: {result.merged}")
        _say(
            f"next: compare it with its base on held-out code: `fimtune eval --corpus {cfg.corpus} --run {result.out} "
            f"--compare --limit 50`; complete in the editor: `fimtune serve --run {result.out}`"
        )
    return 0
