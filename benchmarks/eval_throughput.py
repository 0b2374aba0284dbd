"""Eval throughput on `tiny`: examples/s of `fimtune eval`, and the local engine's overhead over a bare generate.

CPU (no download):  python benchmarks/eval_throughput.py --threads 1
Builds a corpus from this repository, then in one process:
1. runs `fimtune eval` (fimtune.eval.run.run_eval: render, complete, stop rules, metrics, report) on N examples;
2. completes the same rendered prompts with a bare `model.generate` (greedy, same max_new_tokens, same end ids) and
   with LocalEngine.complete decoding plainly (no prompt lookup, no prompt cache; no stop strings, and with the
   template's number of stop strings that never match, so both generate exactly the same tokens), and with the
   engine's defaults (prompt lookup drafts and the prompt cache), interleaved, and prints the ratios;
3. measures how long a cancel takes to stop a running completion.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_corpus_for_bench(folder: Path) -> Path:
    from fimtune.config import CorpusConfig, SpanConfig
    from fimtune.corpus.pipeline import build_corpus

    build_corpus(
        CorpusConfig(
            repos=[str(ROOT)], out=str(folder), workers=1, test_fraction=0.1, spans=SpanConfig(examples_per_kb=1.0)
        ),
        progress=False,
    )
    return folder


def bare_generate(model: Any, ids: list[int], max_new: int, end_ids: list[int], pad_id: int) -> list[int]:
    import torch
    from transformers import GenerationConfig

    inputs = torch.tensor([ids])
    config = GenerationConfig(
        max_new_tokens=max_new, do_sample=False, eos_token_id=end_ids, pad_token_id=pad_id, top_p=None, top_k=None
    )
    with torch.inference_mode():
        out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    return [int(x) for x in out[0, len(ids) :].tolist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=40, help="examples evaluated (a seeded sample of the test split)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per completion at most")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the engine-vs-bare comparison (best kept)")
    ap.add_argument("--cancel-trials", type=int, default=20)
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    from fimtune.corpus.read import open_corpus
    from fimtune.engines.base import EngineSettings
    from fimtune.engines.local import LocalEngine, on_model_thread
    from fimtune.eval.run import EvalConfig, pick, run_eval
    from fimtune.fim_format import prompt_ids

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FIMTUNE_CACHE", str(Path(tmp) / "cache"))
        corpus = build_corpus_for_bench(Path(tmp) / "corpus")
        n_test = len(open_corpus(corpus).examples("test"))

        # 1. The whole command.
        cfg = EvalConfig(
            corpus=str(corpus),
            base_model="tiny",
            limit=args.examples,
            max_tokens=args.max_tokens,
            device="cpu",
            out=str(Path(tmp) / "report.json"),
        )
        result = run_eval(cfg, progress=False)
        timing = result.report["timing"]
        model_timing = result.report["models"]["base"]["timing"]

        # 2. Engine vs bare generate on the same prompts.
        # Plain greedy decoding, as model.generate does it: no prompt lookup drafts, no kept prompt cache.
        engine = LocalEngine(EngineSettings(base_model="tiny", device="cpu", prompt_lookup=0, prompt_cache=0))
        defaults = LocalEngine(EngineSettings(base_model="tiny", device="cpu"))  # what eval and serve use
        spec = engine.prompt_spec()
        examples = pick(open_corpus(corpus).examples("test"), args.examples, 0)
        requests = [spec.request(ex, args.max_tokens) for ex in examples]
        end_ids = engine._end_token_ids(spec.template.name)
        pad_id = engine._pad_id
        never = tuple(f"\x00never-{i}\x00" for i in range(len(spec.stops())))
        plain = [dataclasses.replace(r, stop=()) for r in requests]
        # name -> (engine, requests, whether it must generate exactly as many tokens as the bare generate)
        variants = {
            "engine, no stop strings": (engine, plain, True),
            f"engine, {len(never)} stop strings checked per token": (
                engine,
                [dataclasses.replace(r, stop=never) for r in requests],
                True,
            ),
            "engine with its defaults (prompt lookup, prompt cache), no stop strings": (defaults, plain, False),
        }
        ids = [prompt_ids(spec.template, r.rendered, engine.fim_tokenizer) for r in requests]
        on_model_thread(bare_generate, engine.model, ids[0], 4, end_ids, pad_id)  # warm-up
        names = ["bare model.generate", *variants]
        rounds: list[dict[str, float]] = []
        tokens: dict[str, int] = dict.fromkeys(names, 0)
        for _ in range(args.rounds):
            seconds = dict.fromkeys(names, 0.0)
            tokens = dict.fromkeys(names, 0)
            for i, prompt in enumerate(ids):  # interleaved, so load changes hit every variant alike
                t = time.perf_counter()
                bare = on_model_thread(bare_generate, engine.model, prompt, args.max_tokens, end_ids, pad_id)
                seconds["bare model.generate"] += time.perf_counter() - t
                tokens["bare model.generate"] += len(bare)
                for name, (eng, reqs, exact) in variants.items():
                    t = time.perf_counter()
                    c = eng.complete(reqs[i], threading.Event())
                    seconds[name] += time.perf_counter() - t
                    tokens[name] += c.completion_tokens or 0
                    assert c.completion_tokens == len(bare) or not exact, (name, c.completion_tokens, len(bare))
            rounds.append(seconds)
        best = {name: min(r[name] for r in rounds) for name in names}  # the least disturbed round of each

        # 3. Cancel latency: a long completion, cancelled from another thread after it has started.
        long = dataclasses.replace(requests[0], stop=(), max_tokens=100_000)
        latencies: list[float] = []
        for _ in range(args.cancel_trials):
            cancel = threading.Event()
            done: list[Any] = []
            worker = threading.Thread(target=lambda ev=cancel, out=done: out.append(engine.complete(long, ev)))
            worker.start()
            time.sleep(0.15)
            t = time.perf_counter()
            cancel.set()
            worker.join()
            latencies.append(time.perf_counter() - t)
            assert done[0].stop_reason == "cancelled", done[0].stop_reason

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({args.threads} thread)")
    print(f"transformers {transformers.__version__}, Python {platform.python_version()}")
    print(f"corpus: this repository, {n_test} test examples; evaluated {len(examples)}, max tokens {args.max_tokens}")
    print()
    print("| fimtune eval (tiny, CPU) | value |")
    print("|---|---:|")
    print(f"| examples/s (completion + stop rules + metrics) | {model_timing['examples_per_s']:.2f} |")
    p50, p95 = model_timing["latency_p50_s"], model_timing["latency_p95_s"]
    print(f"| completion latency p50 / p95 (s) | {p50:.3f} / {p95:.3f} |")
    print(f"| generated tokens/s | {model_timing['completion_tokens_per_s']:.0f} |")
    share = model_timing["engine_seconds"] / model_timing["seconds"]
    print(f"| share of the loop spent in the engine (rest: stop rules, metrics) | {100 * share:.0f}% |")
    print(f"| whole command incl. model load and report (s) | {timing['seconds']:.2f} |")
    print()
    bare_s = best["bare model.generate"]
    print(f"Same prompts, greedy, same max_new_tokens; best of {args.rounds} interleaved rounds:")
    print()
    print("| variant | total s | ms/completion | tokens | ms/token | vs bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in best.items():
        n = len(ids)
        per_tok = 1000 * s / max(tokens[name], 1)
        print(f"| {name} | {s:.2f} | {1000 * s / n:.1f} | {tokens[name]} | {per_tok:.2f} | {s / bare_s:.3f}x |")
    print()
    print(
        f"cancel latency over {len(latencies)} trials: p50 {1000 * statistics.median(latencies):.1f} ms, "
        f"max {1000 * max(latencies):.1f} ms"
    )


if __name__ == "__main__":
    main()
