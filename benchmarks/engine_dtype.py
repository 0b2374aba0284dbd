"""The local engine in fp32 and in bf16, side by side: completion latency and the share of identical greedy output.

    python benchmarks/engine_dtype.py --base-model nano --examples 60 --threads 2
    python benchmarks/engine_dtype.py --base-model tiny --examples 20      # quick check of the script

Both engines load the same base model (fp32 weights, and bf16 weights where torch reports bf16 matrix support) and
complete the same rendered prompts from one corpus (the test split of a corpus built from this repository, or
`--corpus`), greedily, with the template's stop rules, interleaved prompt by prompt so machine load hits both alike.
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
    args = p.parse_args()

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
        engines = {d: LocalEngine(EngineSettings(base_model=args.base_model, device="cpu", dtype=d)) for d in DTYPES}
        spec = engines["fp32"].prompt_spec()
        examples = pick(open_corpus(corpus).examples("test"), args.examples, 0)
        requests = [spec.request(ex, args.max_tokens) for ex in examples]
        for engine in engines.values():  # warm-up
            engine.complete(requests[0], threading.Event())
        seconds: dict[str, list[float]] = {d: [] for d in DTYPES}
        texts: dict[str, list[str]] = {d: [] for d in DTYPES}
        tokens = dict.fromkeys(DTYPES, 0)
        for request in requests:
            for dtype, engine in engines.items():
                t = time.perf_counter()
                c = engine.complete(request, threading.Event())
                seconds[dtype].append(time.perf_counter() - t)
                texts[dtype].append(c.text)
                tokens[dtype] += c.completion_tokens or 0

    same = sum(a == b for a, b in zip(texts["fp32"], texts["bf16"], strict=True))
    print(f"Machine: {platform.machine()} CPU, {args.threads} torch threads; torch {torch.__version__}")
    print(
        f"Model: {args.base_model}; {len(requests)} prompts (up to {spec.budgets.max_tokens} tokens), greedy, "
        f"at most {args.max_tokens} new tokens, template stop rules\n"
    )
    print("| engine dtype | p50 ms | p95 ms | mean ms | tokens | ms/token |")
    print("|---|---:|---:|---:|---:|---:|")
    for dtype in DTYPES:
        s = sorted(seconds[dtype])
        p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
        print(
            f"| {dtype} | {1000 * statistics.median(s):.1f} | {1000 * p95:.1f} | {1000 * statistics.mean(s):.1f} | "
            f"{tokens[dtype]} | {1000 * sum(s) / max(tokens[dtype], 1):.2f} |"
        )
    ratio = statistics.median(seconds["fp32"]) / statistics.median(seconds["bf16"])
    print(f"\nbf16 vs fp32: median latency speedup {ratio:.2f}x; identical greedy output {same} of {len(requests)}")
    return 0


DTYPES = ("fp32", "bf16")

if __name__ == "__main__":
    raise SystemExit(main())
