"""Training throughput: tokens/s and real-token share with padding-free packing on and off, in fp32 and bf16, side
by side, with the loss after the same steps from the same seed (fp32 and bf16 should agree within noise).

CPU (no download):  python benchmarks/train_throughput.py --model-config tiny --threads 1
                    python benchmarks/train_throughput.py --model-config nano --threads 2 --packings padded
GPU (random weights of a real architecture, no download):
    python benchmarks/train_throughput.py --model-config qwen2-0.5b --seq-len 2048 --batch-tokens 16384 \
        --attn flash_attention_2 [--quantize 4bit] [--gradient-checkpointing]
Runs `fimtune.train.sft.train` itself, so what is measured is what `fimtune train` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Architectures with random weights: shapes of the published base models (config.json), no weights downloaded.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": {  # Qwen2.5-Coder-0.5B
        "model_type": "qwen2",
        "template": "qwen2.5-coder",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
    "qwen2-1.5b": {  # Qwen2.5-Coder-1.5B
        "model_type": "qwen2",
        "template": "qwen2.5-coder",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
}


def random_model(name: str, folder: Path) -> tuple[Path, str]:
    """Write a random-weight model of a known architecture with a byte tokenizer carrying its FIM tokens."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fimtune.fim_format import TEMPLATES
    from fimtune.tokenizer import byte_tokenizer_for, save_tokenizer

    spec = dict(MODEL_CONFIGS[name])
    template = TEMPLATES[spec.pop("template")]
    tok = byte_tokenizer_for(template)
    config = AutoConfig.for_model(**spec, eos_token_id=tok.token_to_id(template.end))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    save_tokenizer(tok, folder, template)
    return folder, template.name


def corpus_for_bench(folder: Path) -> Path:
    from fimtune.config import CorpusConfig, SpanConfig
    from fimtune.corpus.pipeline import build_corpus

    build_corpus(
        CorpusConfig(
            repos=[str(ROOT)], out=str(folder), workers=1, test_fraction=0.05, spans=SpanConfig(examples_per_kb=2.0)
        ),
        progress=False,
    )
    return folder


def run(
    args: argparse.Namespace, packing: bool, dtype: str, base: str, template: str, corpus: Path, work: Path
) -> dict[str, Any]:
    from fimtune.train.config import TrainConfig
    from fimtune.train.sft import train

    out = work / f"run-{'packed' if packing else 'padded'}-{dtype}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        corpus=str(corpus),
        base_model=base,
        out=str(out),
        template=template,
        max_steps=args.steps,
        seq_len=args.seq_len,
        batch_tokens=args.batch_tokens,
        packing="padding_free" if packing else "padded",
        dtype=dtype,
        quantize=args.quantize,
        attention=args.attn,
        gradient_checkpointing=args.gradient_checkpointing,
        eval_steps=10**9,
        eval_examples=1,
        logging_steps=args.steps,
        max_train_examples=args.examples,
    )
    return train(cfg).report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default="tiny", choices=["tiny", "nano", *MODEL_CONFIGS])
    p.add_argument("--packings", default="padding_free,padded", help="comma-separated: padding_free, padded")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16 (bf16 only where supported)")
    p.add_argument("--corpus", help="corpus folder (default: build one from this repository)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--examples", type=int, default=0, help="training examples to render (0: all)")
    p.add_argument("--quantize", default="none", choices=["none", "8bit", "4bit"])
    p.add_argument("--attn", default="auto", choices=["auto", "flash_attention_2", "sdpa", "eager"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak for MFU (H100/H200: 989)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("FIMTUNE_CACHE", str(Path(tempfile.gettempdir()) / "fimtune-bench-cache"))
    with tempfile.TemporaryDirectory(prefix="fimtune-bench-") as tmp:
        work = Path(tmp)
        corpus = Path(args.corpus) if args.corpus else corpus_for_bench(work / "corpus")
        if args.model_config in ("tiny", "nano"):
            base, template = args.model_config, "auto"
        else:
            path, template = random_model(args.model_config, work / args.model_config)
            base = str(path)
        from fimtune.models import bf16_supported

        on_gpu = torch.cuda.is_available()
        dtypes = [d for d in args.dtypes.split(",") if d == "fp32" or bf16_supported("cuda" if on_gpu else "cpu")]
        packings = [p == "padding_free" for p in args.packings.split(",")]
        results = {
            (packing, dtype): run(args, packing, dtype, base, template, corpus, work)
            for dtype in dtypes
            for packing in packings
        }

    device = (
        torch.cuda.get_device_name(0)
        if on_gpu
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    )
    print(f"model {args.model_config}, {device}, torch {torch.__version__}, {platform.python_version()}")
    print(f"steps {args.steps}, seq-len {args.seq_len}, batch-tokens {args.batch_tokens}, quantize {args.quantize}")
    print()
    print(
        "| packing | dtype | tokens/s | real tokens/s | real-token share | target tokens | step time (s) "
        "| peak memory (MiB) | attention | loss at the last step |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    rows = {}
    for (packing, dtype), r in results.items():
        step = r["train_runtime_s"] / max(1, r["steps"] - r["start_step"])
        row = {
            "packing": "padding-free" if packing else "padded, length-grouped",
            "dtype": dtype,
            "loss": r["loss_curve"][-1]["loss"] if r["loss_curve"] else None,
            "tokens_per_s": r["tokens_per_s"],
            "real_tokens_per_s": r["real_tokens_per_s"],
            "real_token_share": r["real_token_share"],
            "target_tokens": r["tokens"]["target_tokens"],
            "step_s": round(step, 4),
            "peak_memory_mib": r["peak_memory_mib"],
            "attention": r["attention"],
        }
        # MFU: 6 N FLOPs per token for forward + backward (a frozen base still runs backward through activations).
        if on_gpu:
            row["mfu"] = round(6 * r["total_params"] * r["real_tokens_per_s"] / (args.peak_tflops * 1e12), 4)
        rows[f"{'packed' if packing else 'padded'}-{dtype}"] = row
        print(
            f"| {row['packing']} | {dtype} | {row['tokens_per_s']:.0f} | {row['real_tokens_per_s']:.0f} | "
            f"{row['real_token_share']:.3f} | {row['target_tokens']} | {row['step_s']:.3f} | "
            f"{row['peak_memory_mib']:.0f} | {row['attention']} | {row['loss']:.4f} |"
            + (f" MFU {row['mfu']:.3f}" if on_gpu else "")
        )
    for packing in packings:
        a, b = results.get((packing, "fp32")), results.get((packing, "bf16"))
        if a and b:
            print(
                f"\n{'padding-free' if packing else 'padded'}: bf16/fp32 tokens/s "
                f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x; loss at the last step fp32 "
                f"{a['loss_curve'][-1]['loss']:.4f}, bf16 {b['loss_curve'][-1]['loss']:.4f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
