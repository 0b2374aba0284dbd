"""`fimtune pretrain`: its flags and the command function (torch and friends are imported inside the command)."""

from __future__ import annotations

import argparse

from fimtune.console import say as _say


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    from fimtune.config import add_flags
    from fimtune.pretrain.config import PretrainConfig

    p = sub.add_parser(
        "pretrain",
        help="train fimtune's own small FIM code model from scratch on permissively licensed local code",
        description="Train a small Llama-architecture code model from scratch: permissively licensed Python of "
        "installed packages (and JS/TS of node_modules), a byte-level BPE tokenizer trained on it with fimtune's "
        "sentinel tokens, documents FIM-transformed (PSM and SPM) plus left-to-right text, loss on every token. "
        "Writes OUT/model (loadable with --base-model OUT/model), the data manifest, the loss curve and a "
        "report. --max-minutes ends a call on time with a checkpoint; --resume continues it.",
    )
    p.add_argument("--config", help="YAML with defaults for every setting (see PretrainConfig)")
    add_flags(p, PretrainConfig)
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fimtune.config import given_flags, load_config
    from fimtune.console import CommandError
    from fimtune.pretrain.config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, given_flags(args, PretrainConfig))
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
