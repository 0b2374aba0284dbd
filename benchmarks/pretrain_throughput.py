"""Pretraining throughput: `fimtune pretrain`'s trainer against a bare training loop, fp32 against bf16, side by side.

    python benchmarks/pretrain_throughput.py --preset nano --steps 10 --threads 2

One run measures, on the same model shape, the same rows and the same seed:
- a bare loop (forward with the model's own loss, backward, AdamW) in fp32 and under bf16 autocast;
- the trainer `fimtune pretrain` builds (`pretrain_args` + `pretrain_trainer`) in fp32 and bf16;
- TRL's SFTTrainer with the same settings (its chunked log-prob head), bf16, for the choice of loss computation;
and prints tokens/s, the trainer's share of the bare loop's speed, and the train and held-out loss after the same
steps in fp32 and bf16 (they should agree within noise). The first two optimizer steps of each case are not timed.
Data: a few MB of permissively licensed Python of this Python's site-packages, prepared as `fimtune pretrain` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARMUP_STEPS = 2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="nano")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per case (after 2 untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-mb", type=float, default=3.0)
    p.add_argument("--cases", default="bare-fp32,bare-bf16,pretrain-fp32,pretrain-bf16,trl-bf16")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import numpy as np
    import torch
    from transformers import LlamaForCausalLM, TrainerCallback

    from fimtune.fim_format import TEMPLATES
    from fimtune.models import bf16_supported, load_tokenizer
    from fimtune.pretrain.config import PretrainConfig
    from fimtune.pretrain.presets import get_preset, llama_config
    from fimtune.pretrain.train import DATA, MODEL, TEMPLATE, prepare_data, pretrain_args, pretrain_trainer, vocab_id
    from fimtune.train.data import to_dataset

    torch.set_num_threads(args.threads)
    total_steps = args.steps + WARMUP_STEPS
    work = Path(tempfile.mkdtemp(prefix="fimtune-pretrain-bench-"))
    preset = get_preset(args.preset)
    cfg = dataclasses.replace(
        PretrainConfig(
            preset=args.preset, out=str(work), max_data_mb=args.data_mb, max_package_mb=0.5, holdout_count=2
        ).effective(),
        max_steps=total_steps,
        eval_steps=10**6,
        logging_steps=total_steps,
    )
    manifest = prepare_data(cfg, preset, work)
    train_rows = np.load(work / DATA / "train.npy")
    held_rows = np.load(work / DATA / "heldout.npy")
    tokenizer = load_tokenizer(work / MODEL)
    template = TEMPLATES[TEMPLATE]
    tokenizer.pad_token = template.pad
    end_id, pad_id = (vocab_id(tokenizer, t) for t in (template.end, template.pad or template.end))
    model_config = llama_config(preset, len(tokenizer), end_id, pad_id, seq_len=cfg.seq_len)
    rows_per_step = cfg.rows_per_batch * cfg.grad_accum
    tokens_per_step = rows_per_step * cfg.seq_len
    if len(train_rows) < rows_per_step * total_steps:
        raise SystemExit(f"too few rows ({len(train_rows)}) for {total_steps} steps: raise --data-mb")

    def fresh_model() -> Any:
        torch.manual_seed(cfg.seed)
        return LlamaForCausalLM(model_config)

    def bare(bf16: bool) -> dict[str, Any]:
        model = fresh_model()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        order = np.random.default_rng(cfg.seed).permutation(len(train_rows))
        start, loss_value = 0.0, float("nan")
        for step in range(total_steps):
            if step == WARMUP_STEPS:
                start = time.perf_counter()
            for micro in range(cfg.grad_accum):
                first = (step * cfg.grad_accum + micro) * cfg.rows_per_batch
                x = torch.from_numpy(train_rows[order[first : first + cfg.rows_per_batch]].astype(np.int64))
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(input_ids=x, labels=x).loss / cfg.grad_accum
                loss.backward()
                loss_value = float(loss) * cfg.grad_accum
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        return {"tokens_per_s": args.steps * tokens_per_step / seconds, "train_loss": loss_value, "heldout_loss": None}

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0
            self.end = 0.0

        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == WARMUP_STEPS:
                self.start = time.perf_counter()

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            self.end = time.perf_counter()

    def trainer_case(bf16: bool, trl: bool) -> dict[str, Any]:
        out = work / f"run-{'trl' if trl else 'pretrain'}-{'bf16' if bf16 else 'fp32'}"
        targs = pretrain_args(cfg, out, bf16=bf16)
        targs.save_strategy = "no"
        timer = StepTimer()
        if trl:
            from trl import SFTTrainer

            targs.dataset_kwargs = {"skip_prepare_dataset": True}
            trainer: Any = SFTTrainer(
                model=fresh_model(),
                args=targs,
                train_dataset=to_dataset({"input_ids": train_rows}),
                eval_dataset=to_dataset({"input_ids": held_rows}),
                processing_class=tokenizer,
                callbacks=[timer],
            )
        else:
            trainer = pretrain_trainer(fresh_model(), targs, train_rows, held_rows, tokenizer, [timer])
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        heldout = trainer.evaluate()["eval_loss"]
        tps = args.steps * tokens_per_step / (timer.end - timer.start)
        return {"tokens_per_s": tps, "train_loss": losses[-1], "heldout_loss": heldout}

    cases = args.cases.split(",")
    if any(c.endswith("bf16") for c in cases) and not bf16_supported("cpu"):
        print("torch reports no bf16 matrix support on this CPU: bf16 cases skipped")
        cases = [c for c in cases if not c.endswith("bf16")]
    results: dict[str, dict[str, Any]] = {}
    for case in cases:
        kind, dtype = case.split("-")
        bf16 = dtype == "bf16"
        results[case] = bare(bf16) if kind == "bare" else trainer_case(bf16, trl=kind == "trl")
        print(json.dumps({case: results[case]}), flush=True)

    params = sum(p.numel() for p in fresh_model().parameters())
    print(
        f"\nMachine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, bf16 matrix support: "
        f"{bf16_supported('cpu')}; torch {torch.__version__}, Python {platform.python_version()}"
    )
    print(
        f"Model: preset {preset.name} ({params / 1e6:.2f}M parameters, vocab {len(tokenizer)}), rows of "
        f"{cfg.seq_len} tokens, {tokens_per_step} tokens per optimizer step; {args.steps} timed steps per case; "
        f"data {manifest['totals']['bytes_train'] / 1e6:.1f} MB\n"
    )
    print("| case | tokens/s | vs bare loop, same dtype | train loss at the last step | held-out loss |")
    print("|---|---:|---:|---:|---:|")
    for case, r in results.items():
        kind, dtype = case.split("-")
        bare_r = results.get(f"bare-{dtype}")
        ratio = f"{r['tokens_per_s'] / bare_r['tokens_per_s']:.2f}" if bare_r and kind != "bare" else ""
        held = f"{r['heldout_loss']:.4f}" if r["heldout_loss"] is not None else ""
        print(f"| {case} | {r['tokens_per_s']:.0f} | {ratio} | {r['train_loss']:.4f} | {held} |")
    for kind in ("bare", "pretrain"):
        a, b = results.get(f"{kind}-fp32"), results.get(f"{kind}-bf16")
        if a and b:
            print(
                f"\n{kind}: bf16/fp32 tokens/s {b['tokens_per_s'] / a['tokens_per_s']:.2f}x; train loss after "
                f"{total_steps} steps fp32 {a['train_loss']:.4f}, bf16 {b['train_loss']:.4f} "
                f"(difference {b['train_loss'] - a['train_loss']:+.4f})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
