"""Completion latency through a real llama-server against the local transformers engine, side by side.

    python benchmarks/llamacpp_latency.py --model nano --prompts 40 --threads 2 --out benchmarks/results/llamacpp.md

The model is exported with `fimtune export --to gguf` in f32, f16 and q8_0; one llama-server per GGUF (one slot,
--threads N) and the local engine (fp32, torch with N threads) complete the same rendered prompts (cursors in this
repository's own source files) greedily, prompt by prompt in turn so machine load hits every engine alike. The
openai engine sends fimtune's rendered prompt to /v1/completions; the llamacpp engine sends prefix, suffix and
snippets to /infill, where llama.cpp lays out the prompt itself. Reported: p50/p95 seconds per completion, ratio
to the local engine, and the share of completions identical to the local engine's.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="nano", help="a base model or a run folder fimtune export takes")
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the table as Markdown here")
    args = p.parse_args()

    import torch

    from fimtune.engines.base import EngineSettings, make_engine
    from fimtune.export.llamacpp import LLAMA_CPP_PYTHON, LlamaServer, build_server
    from fimtune.export.run import export
    from tests.cursors import cursors

    torch.set_num_threads(args.threads)
    exe = build_server(say=print)
    local = make_engine(EngineSettings(engine="local", base_model=args.model, device="cpu", dtype="fp32"))
    spec = local.prompt_spec()  # type: ignore[attr-defined]
    reqs = [spec.request(c, max_tokens=args.max_tokens) for c in cursors(args.prompts, args.seed)]
    tmp = Path(tempfile.mkdtemp(prefix="fimtune-bench-llama-"))
    servers, engines = [], {"local (transformers, fp32)": local}
    try:
        for quant in ("f32", "f16", "q8_0"):
            export(args.model, "gguf", tmp / quant, quant, say=lambda _: None)
            size = (tmp / quant / f"model-{quant}.gguf").stat().st_size / 2**20
            server = LlamaServer(exe, tmp / quant / f"model-{quant}.gguf", threads=args.threads)
            servers.append(server)
            engines[f"llama-server {quant} ({size:.0f} MiB), /v1/completions"] = make_engine(
                EngineSettings(engine="openai", endpoint=server.url)
            )
            if quant == "f16":  # its own server: no prompt cache shared with the /v1/completions calls
                infill = LlamaServer(exe, tmp / quant / f"model-{quant}.gguf", threads=args.threads)
                servers.append(infill)
                engines[f"llama-server {quant}, /infill"] = make_engine(
                    EngineSettings(engine="llamacpp", endpoint=infill.url)
                )
        for engine in engines.values():  # warm-up: first calls load kernels and caches
            engine.complete(reqs[0])
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        texts: dict[str, list[str]] = {name: [] for name in engines}
        tokens: dict[str, list[int]] = {name: [] for name in engines}
        for req in reqs:
            for name, engine in engines.items():
                c = engine.complete(req)
                seconds[name].append(c.seconds)
                texts[name].append(c.text)
                tokens[name].append(c.completion_tokens or 0)
    finally:
        for server in servers:
            server.close()
    base = next(iter(engines))
    p50_local = statistics.median(seconds[base])
    rows = []
    for name in engines:
        same = sum(a == b for a, b in zip(texts[name], texts[base], strict=True))
        p50, p95 = statistics.median(seconds[name]), pct(seconds[name], 95)
        mean_tokens = statistics.mean(tokens[name])
        rows.append(
            f"| {name} | {p50 * 1000:.0f} | {p95 * 1000:.0f} | {p50_local / p50:.2f}x | {mean_tokens:.1f} | "
            f"{same}/{len(reqs)} |"
        )
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = f"{len(names)}-core {names[0]}" if names else cpu
    lines = [
        f"Model `{args.model}`, {len(reqs)} prompts (cursors in fimtune's own sources, {spec.template.name} "
        f"template), greedy, at most {args.max_tokens} tokens; {args.threads} threads each; llama.cpp from "
        f"llama-cpp-python {LLAMA_CPP_PYTHON}; torch {torch.__version__}; {cpu}.",
        "",
        "| engine | p50 ms | p95 ms | speed vs local (p50) | tokens per completion | same text as local |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(
            "# llama-server against the local engine\n\n`python benchmarks/llamacpp_latency.py "
            + " ".join(sys.argv[1:])
            + "`\n\n"
            + text
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
