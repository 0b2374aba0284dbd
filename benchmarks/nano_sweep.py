"""A short sweep of model shapes for the `nano` preset: the same data, the same minutes of training each, side by side.

    python benchmarks/nano_sweep.py --sources .venv/lib/python3.11/site-packages \
        --holdout rich,jinja2,anyio,pydantic --minutes 3 --out /tmp/nano-sweep

Each variant is the `nano` preset with one or two fields changed (vocabulary, depth and width, row length). Every
variant runs `fimtune pretrain` itself with `--train-minutes M`, so its cosine schedule ends inside the time it is
given, and they are compared on held-out loss per byte of source (nats/byte: a per-token loss is not comparable
across vocabularies). Data and tokenizer are prepared once per (vocabulary, row length) and shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> fields of the nano preset that change
VARIANTS: dict[str, dict[str, Any]] = {
    "nano": {},
    "rows-1024": {"seq_len": 1024, "batch_tokens": 4096},
    "deep-narrow": {"hidden_size": 192, "intermediate_size": 512, "num_layers": 10, "num_heads": 3, "num_kv_heads": 1},
    "vocab-4096": {"vocab_size": 4096},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", nargs="+", required=True)
    p.add_argument("--holdout", required=True, help="comma-separated packages held out")
    p.add_argument("--minutes", type=float, default=3.0, help="training minutes per variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", required=True, help="folder for the variants' run folders (deleted first)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import torch

    from fimtune.pretrain.config import PretrainConfig
    from fimtune.pretrain.presets import PRESETS
    from fimtune.pretrain.train import DATA, MODEL, prepare_data, pretrain

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    prepared: dict[tuple[int, int], Path] = {}
    rows: list[dict[str, Any]] = []
    for name in args.variants.split(","):
        preset = dataclasses.replace(PRESETS["nano"], name=f"sweep-{name}", **VARIANTS[name])
        PRESETS[preset.name] = preset
        run = out / name
        cfg = PretrainConfig(
            preset=preset.name,
            out=str(run),
            sources=args.sources,
            holdout=args.holdout.split(","),
            train_minutes=args.minutes,
            threads=args.threads,
        )
        key = (preset.vocab_size, preset.seq_len)
        if key not in prepared:
            data_run = out / f"data-v{key[0]}-s{key[1]}"
            data_run.mkdir()
            prepare_data(cfg.effective(), preset, data_run)
            prepared[key] = data_run
        shutil.copytree(prepared[key] / DATA, run / DATA)
        shutil.copytree(prepared[key] / MODEL, run / MODEL)
        report = pretrain(cfg).report
        bpt = report["data"]["tokens"]["bytes_per_token"]
        rows.append(
            {
                "variant": name,
                "changes": VARIANTS[name],
                "params_m": round(report["params"] / 1e6, 2),
                "tokens_per_s": report["tokens_per_s"],
                "tokens_seen_m": round(report["tokens_seen"] / 1e6, 2),
                "steps": report["steps"],
                "heldout_loss": round(report["heldout_loss_end"], 4),
                "bytes_per_token": bpt,
                "heldout_nats_per_byte": round(report["heldout_loss_end"] / bpt, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nMachine: {platform.machine()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    print(f"{args.minutes} training minutes per variant, held out: {args.holdout}\n")
    print("| variant | changes | params (M) | tokens/s | tokens seen (M) | held-out loss | bytes/token | nats/byte |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["heldout_nats_per_byte"]):
        changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "(the preset)"
        print(
            f"| {r['variant']} | {changes} | {r['params_m']} | {r['tokens_per_s']:.0f} | {r['tokens_seen_m']} | "
            f"{r['heldout_loss']:.3f} | {r['bytes_per_token']} | {r['heldout_nats_per_byte']:.4f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
