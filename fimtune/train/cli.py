"""`fimtune train`: its flags and the command function (torch and friends are imported inside the command)."""

from __future__ import annotations

import argparse

from fimtune.console import say as _say


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from fimtune.config import add_flags
    from fimtune.train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="LoRA / QLoRA fine-tuning of a code model on a corpus",
        description="Fine-tune a base model with LoRA (or QLoRA with --quantize 4bit) on a corpus built by "
        "`fimtune build-corpus`. Settings come from --config (YAML, see TrainConfig in fimtune/train/config.py) "
        "and flags override them. Runs unchanged under `accelerate launch` on many devices.",
    )
    p.add_argument("--config", help="YAML with defaults for every setting")
    add_flags(p, TrainConfig, exclusive=[("max_steps", "epochs")])
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from fimtune.config import given_flags, load_config, to_dict
    from fimtune.console import CommandError
    from fimtune.train.config import TrainConfig

    flags = given_flags(args, TrainConfig)
    if flags.get("max_steps", 1) < 1:
        raise CommandError(f"--max-steps: at least 1, not {args.max_steps} (to train whole epochs, give --epochs N)")
    if "epochs" in flags:
        flags["max_steps"] = 0  # over a recipe's max_steps
    cfg = load_config(TrainConfig, args.config, flags)
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
