"""Pretraining figures of a `fimtune pretrain` run folder as markdown: data, tokens/s, MFU, the loss curve.

    fimtune pretrain --preset micro --out runs/pretrain-micro --threads 1 --max-minutes 9
    python benchmarks/pretrain_report.py runs/pretrain-micro

Everything printed is read from the run's own files (pretrain_report.json, loss_curve.json, data manifest), so
the same script reports the CPU micro run and the GPU pico run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder written by `fimtune pretrain`")
    args = ap.parse_args()
    run = Path(args.run)
    report = json.loads((run / "pretrain_report.json").read_text())
    curves = json.loads((run / "loss_curve.json").read_text())
    # The data manifest is in data/ and, with the model, in model/ (a run returned from the GPU machine has the
    # report, the curve and the model folder only).
    found = [p for p in (run / "data", run / "model", run / "pico", run) if (p / "data_manifest.json").exists()]
    if not found:
        sys.exit(f"{run}: no data_manifest.json in data/, model/, pico/ or the folder itself")
    manifest = json.loads((found[0] / "data_manifest.json").read_text())
    totals, tokens = manifest["totals"], manifest["tokens"]

    import torch
    import transformers
    import trl

    print(f"# Pretraining: preset {report['preset']} ({report['params'] / 1e6:.2f}M parameters)\n")
    print(
        f"Machine: {report['device']}, {os.cpu_count()} CPU cores visible, torch threads {report['torch_threads']}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, TRL {trl.__version__}, "
        f"Python {platform.python_version()}.\n"
    )
    print("| data | value |\n|---|---:|")
    print(f"| training packages (permissive) | {totals['packages_train']} |")
    print(f"| held-out packages | {', '.join(manifest['heldout'])} |")
    print(f"| packages skipped (licence, no sources) | {totals['packages_skipped']} |")
    print(f"| training source | {totals['files_train']} files, {totals['bytes_train'] / 1e6:.2f} MB |")
    print(f"| held-out source | {totals['files_heldout']} files, {totals['bytes_heldout'] / 1e6:.2f} MB |")
    print(f"| BPE vocabulary | {tokens['vocab_size']} (bytes/token {tokens['bytes_per_token']}) |")
    print(f"| training tokens (one epoch) | {tokens['train_tokens']:,} |")
    modes = tokens["modes"]["train"]
    n = sum(modes.values())
    print(
        f"| chunk forms (train) | PSM {modes['psm'] / n:.0%}, SPM {modes['spm'] / n:.0%}, "
        f"plain {modes['plain'] / n:.0%}; repo context {tokens['with_context']['train'] / n:.0%} |"
    )
    print()
    print("| training | value |\n|---|---:|")
    print(f"| steps | {report['steps']} of {report['max_steps']} |")
    print(f"| sequence length, tokens/step | {report['seq_len']}, {report['tokens_per_step']:,} |")
    print(f"| tokens seen | {report['tokens_seen']:,} ({report['tokens_seen'] / tokens['train_tokens']:.2f} epochs) |")
    print(f"| tokens/s (last call) | {report['tokens_per_s']:,.0f} |")
    mfu = f"{100 * report['mfu']:.1f}%" if report["mfu"] is not None else "n/a (no GPU)"
    print(f"| MFU | {mfu} |")
    print(f"| wall time (last call) | {report['wall_time_s']:.0f} s |")
    print()
    train_at = {r["step"]: r["loss"] for r in curves["train"]}
    print("| step | tokens | held-out loss | train loss |\n|---:|---:|---:|---:|")
    for e in curves["heldout"]:
        t = train_at.get(e["step"])
        print(f"| {e['step']} | {e['tokens']:,} | {e['eval_loss']:.3f} | {f'{t:.3f}' if t is not None else ''} |")
    start, end = report["heldout_loss_start"], report["heldout_loss_end"]
    print(
        f"\nHeld-out loss {start:.3f} -> {end:.3f} nats/token ({end / start:.2f}x; "
        f"perplexity {math.exp(start):.0f} -> {math.exp(end):.1f})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
