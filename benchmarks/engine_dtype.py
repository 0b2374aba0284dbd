"""The local engine in fp32 and in bf16, each with and without prompt lookup decoding, side by side: completion
latency and the share of identical greedy output.

    python benchmarks/engine_dtype.py --base-model nano --examples 60 --threads 2
    python benchmarks/engine_dtype.py --corpus runs/eval/heldout --prompt-lookup 0,3,6,10 --max-tokens 64
    python benchmarks/engine_dtype.py --base-model tiny --examples 20      # quick check of the script

Every engine loads the same base model (fp32 weights, and bf16 weights where torch reports bf16 matrix support) and
completes the same rendered prompts from one corpus (the test split of a corpus built from this repository, or
`--corpus`), greedily, with the template's stop rules, interleaved prompt by prompt so machine load hits all alike.
Identical output is counted against the same dtype without prompt lookup, and against bf16 without it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-model", default="nano")
    p.add_argument("--corpus", help="corpus folder (default: build one from this repository)")
    p.add_argument("--examples", type=int, default=60)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--prompt-lookup", default="0,6", help="comma-separated draft lengths of prompt lookup decoding (0: off)"
    )
    args = p.parse_args()
    lookups = sorted({int(x) for x in args.prompt_lookup.split(",")} | {0})

    import torch

    from fimtune.config import CorpusConfig, SpanConfig
    from fimtune.corpus.pipeline import build_corpus
    from fimtune.corpus.read import open_corpus
    from fimtune.engines.base import EngineSettings
    from fimtune.engines.local import LocalEngine
    from fimtune.eval.run import pick
    from fimtune.models import bf16_supported

    torch.set_num_threads(args.threads)
    if not bf16_supported("cpu"):
        print("torch reports no bf16 matrix support on this CPU: nothing to compare")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus"
        if not args.corpus:
            build_corpus(
                CorpusConfig(repos=[str(ROOT)], out=str(corpus), workers=1, spans=SpanConfig(examples_per_kb=1.0))
            )
        keys = [(d, n) for d in DTYPES for n in lookups]
        engines = {
            (d, n): LocalEngine(EngineSettings(base_model=args.base_model, device="cpu", dtype=d, prompt_lookup=n))
            for d, n in keys
        }
        spec = engines[keys[0]].prompt_spec()
        examples = pick(open_corpus(corpus).examples("test"), args.examples, 0)
        requests = [spec.request(ex, args.max_tokens) for ex in examples]
        for engine in engines.values():  # warm-up
            engine.complete(requests[0], threading.Event())
        seconds: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
        texts: dict[tuple[str, int], list[str]] = {k: [] for k in keys}
        tokens = dict.fromkeys(keys, 0)
        for request in requests:
            for key, engine in engines.items():
                t = time.perf_counter()
                c = engine.complete(request, threading.Event())
                seconds[key].append(time.perf_counter() - t)
                texts[key].append(c.text)
                tokens[key] += c.completion_tokens or 0

    def same(a: tuple[str, int], b: tuple[str, int]) -> int:
        return sum(x == y for x, y in zip(texts[a], texts[b], strict=True))

    print(f"Machine: {platform.machine()} CPU, {args.threads} torch threads; torch {torch.__version__}")
    print(
        f"Model: {args.base_model}; {len(requests)} prompts (up to {spec.budgets.max_tokens} tokens), greedy, "
        f"at most {args.max_tokens} new tokens, template stop rules\n"
    )
    print(
        "| engine dtype | prompt lookup | p50 ms | p95 ms | mean ms | tokens | ms/token | same as without lookup "
        "| same as bf16 without lookup |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in keys:
        s = sorted(seconds[key])
        p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
        print(
            f"| {key[0]} | {key[1] or 'off'} | {1000 * statistics.median(s):.1f} | {1000 * p95:.1f} | "
            f"{1000 * statistics.mean(s):.1f} | {tokens[key]} | {1000 * sum(s) / max(tokens[key], 1):.2f} | "
            f"{same(key, (key[0], 0))} of {len(requests)} | {same(key, ('bf16', 0))} of {len(requests)} |"
        )
    base = statistics.median(seconds["bf16", 0])
    print(
        "\nmedian latency against bf16 without lookup: "
        + ", ".join(f"{d} {n or 'off'} {base / statistics.median(seconds[d, n]):.2f}x" for d, n in keys)
    )
    return 0


DTYPES = ("fp32", "bf16")

if __name__ == "__main__":
    raise SystemExit(main())
