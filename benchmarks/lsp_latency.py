"""Language server latency: server overhead, end-to-end latency with `tiny`, model calls per typing burst.

A client process (this script) starts `python -m lsp_server` and drives it over stdio with raw LSP frames, the
way an editor does: each keystroke is a `textDocument/didChange` followed at once by a
`textDocument/inlineCompletion` request, without waiting for the previous answer. The workspace is real code
nobody here wrote (by default the installed `transformers` sources from site-packages, about 2,900 files),
indexed by the server in the background for cross-file context. Two engines, side by side:

- `fixed` answers instantly, so the time from keystroke to answer is the server's own overhead: document
  update, position conversion, cross-file retrieval, rendering, stop rules, JSON, the thread hops (debounce 0);
  measured while the workspace index builds and once it is ready, with context on and off;
- `local` with the built-in `tiny` model on the CPU: end-to-end latency (debounce 0).

For both: typing bursts of 20 keystrokes at 60 ms intervals with the default debounce (75 ms) and the model
calls each burst caused (the server's `fimtune/stats`), and type-through: typing the characters of a shown
suggestion, which must cause no model call.

    python benchmarks/lsp_latency.py --out benchmarks/results/lsp_latency.md
    python benchmarks/lsp_latency.py --source ~/src/repo --cursors 300 --bursts 20 --skip-tiny

Targets: overhead p95 at most 15 ms; at most 2 model calls per 20-keystroke burst; none for type-through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fimtune.config import WalkConfig
from fimtune.corpus import walk
from fimtune.engines.base import PROMPT_CACHE

OVERHEAD_TARGET_MS = 15.0
KEYS_AT_A_SPOT = 5  # keystrokes typed at one place before the next document
BURST_KEYS = 20
BURST_INTERVAL_S = 0.060
BURST_CALLS_TARGET = 2
BURST_TEXT = "value = compute(a, b"  # 20 keystrokes
FIXED_TEXT = "result = compute_total(values, weights)\n"


def default_source() -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    if (site / "transformers").is_dir():
        return site / "transformers"
    raise SystemExit(f"no transformers under {site}; pass --source DIR (a real repository of 1,000+ files)")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


# ---- a minimal LSP client ------------------------------------------------------------------------------------


class Client:
    """Raw JSON-RPC over the server's stdio; responses are matched to requests by id in a reader task."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, log_level: str = "warning") -> Client:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lsp_server",
            "--log-level",
            log_level,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        return cls(proc)

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def send(self, method: str, params: Any) -> asyncio.Future[Any]:
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return future

    async def request(self, method: str, params: Any = None) -> Any:
        return await asyncio.wait_for(self.send(method, params), 600)

    async def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        while True:
            length = 0
            while True:
                line = await stdout.readline()
                if not line:
                    return
                if line == b"\r\n":
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            message = json.loads(await stdout.readexactly(length))
            if "id" in message and "method" not in message:
                future = self.pending.pop(message["id"], None)
                if future is not None and not future.done():
                    if "error" in message:
                        future.set_exception(RuntimeError(message["error"]["message"]))
                    else:
                        future.set_result(message["result"])
            elif "id" in message:  # a request from the server (none expected): answer null
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            else:
                self.notifications.append(message)

    async def initialize(self, root: Path, settings: dict[str, Any]) -> None:
        await self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": root.as_uri(),
                "workspaceFolders": [{"uri": root.as_uri(), "name": root.name}],
                "capabilities": {
                    "general": {"positionEncodings": ["utf-16"]},
                    "textDocument": {"inlineCompletion": {}, "synchronization": {"didSave": True}},
                },
                "initializationOptions": settings,
            },
        )
        self.notify("initialized", {})

    def configure(self, settings: dict[str, Any]) -> None:
        self.notify("workspace/didChangeConfiguration", {"settings": {"fimtune": settings}})

    async def wait_ready(self) -> float:
        start = time.perf_counter()
        while True:
            status = await self.request("fimtune/status")
            if status["state"] == "ready":
                return time.perf_counter() - start
            if status["state"] == "error":
                raise SystemExit(f"engine failed: {status['message']}")
            await asyncio.sleep(0.05)

    async def stats(self, reset_timings: bool = False) -> dict[str, Any]:
        return await self.request("fimtune/stats", {"reset": reset_timings})

    async def close(self) -> None:
        await self.request("shutdown")
        self.notify("exit", None)
        await asyncio.wait_for(self.proc.wait(), 60)
        self.reader.cancel()


# ---- documents and typing ------------------------------------------------------------------------------------


@dataclass
class Doc:
    uri: str
    lines: list[str]
    version: int = 1
    line: int = 0  # where this document's typing happens
    col: int = 0

    def position(self) -> dict[str, int]:
        return {"line": self.line, "character": self.col}


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def pick_files(root: Path, n: int, rng: random.Random) -> list[Path]:
    items = [i for i in walk.walk_repo(root, WalkConfig(), ["python"]) if i.reason is None and 2_000 < i.size < 200_000]
    return [root / i.path for i in rng.sample(items, min(n, len(items)))]


def open_doc(client: Client, path: Path, rng: random.Random) -> Doc:
    text = path.read_text(encoding="utf-8", errors="replace")
    client.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": path.as_uri(), "languageId": "python", "version": 1, "text": text}},
    )
    doc = Doc(path.as_uri(), text.split("\n"))
    move_cursor(doc, rng)
    return doc


def move_cursor(doc: Doc, rng: random.Random) -> None:
    """The end of a random line of code (the user goes on typing there)."""
    candidates = [i for i, line in enumerate(doc.lines) if line.strip() and not line.strip().startswith("#")]
    doc.line = rng.choice(candidates or [0])
    doc.col = utf16_len(doc.lines[doc.line])


def type_char(client: Client, doc: Doc, ch: str) -> asyncio.Future[Any]:
    """One keystroke: the edit, then at once the inline completion request (as VS Code and Neovim do)."""
    doc.version += 1
    at = doc.position()
    client.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": doc.uri, "version": doc.version},
            "contentChanges": [{"range": {"start": at, "end": at}, "text": ch}],
        },
    )
    if ch == "\n":
        doc.lines.insert(doc.line + 1, "")
        doc.line, doc.col = doc.line + 1, 0
    else:
        doc.lines[doc.line] += ch
        doc.col += utf16_len(ch)
    return client.send(
        "textDocument/inlineCompletion",
        {"textDocument": {"uri": doc.uri}, "position": doc.position(), "context": {"triggerKind": 2}},
    )


async def keystroke_latency(
    client: Client, docs: list[Doc], n: int, rng: random.Random, answers: list[str] | None = None
) -> list[float]:
    """Milliseconds from a keystroke's didChange to its answer, one keystroke at a time: KEYS_AT_A_SPOT keystrokes
    at the end of a random line, then the same in the next document (the first of each is `out[::KEYS_AT_A_SPOT]`).
    `answers` gets the first suggestion of each ("" for none)."""
    out: list[float] = []
    for i in range(n):
        doc = docs[(i // KEYS_AT_A_SPOT) % len(docs)]
        if i % KEYS_AT_A_SPOT == 0:
            move_cursor(doc, rng)
        start = time.perf_counter()
        answer = await asyncio.wait_for(type_char(client, doc, rng.choice(" x_(")), 600)
        out.append((time.perf_counter() - start) * 1e3)
        if answers is not None:
            answers.append(answer["items"][0]["insertText"] if answer and answer["items"] else "")
    return out


@dataclass
class BurstResult:
    calls: list[int] = field(default_factory=list)
    last_ms: list[float] = field(default_factory=list)  # last keystroke -> its answer
    answered: int = 0


async def bursts(client: Client, docs: list[Doc], n: int, rng: random.Random) -> BurstResult:
    """n bursts of 20 keystrokes at 60 ms intervals; model calls per burst from the server's counters."""
    result = BurstResult()
    for b in range(n):
        doc = docs[b % len(docs)]
        move_cursor(doc, rng)
        await asyncio.sleep(0.3)  # a pause before the burst: the previous one is finished
        before = (await client.stats())["model_calls"]
        futures = []
        for ch in BURST_TEXT:
            futures.append(type_char(client, doc, ch))
            last = time.perf_counter()
            await asyncio.sleep(BURST_INTERVAL_S)
        answers = await asyncio.gather(*futures)
        result.last_ms.append((time.perf_counter() - last) * 1e3)
        result.answered += sum(1 for a in answers if a and a["items"])
        result.calls.append((await client.stats())["model_calls"] - before)
    return result


@dataclass
class TypeThrough:
    suggestions: int = 0
    keystrokes: int = 0
    model_calls: int = 0
    matched: int = 0  # answers that were exactly the rest of the suggestion


async def type_through(client: Client, docs: list[Doc], n: int, rng: random.Random) -> TypeThrough:
    """Start a new line at the end of a file, take the suggestion shown there, then type its characters one by
    one (60 ms apart) with a request for each, as an editor does."""
    out = TypeThrough()
    for i in range(n):
        doc = docs[i % len(docs)]
        doc.line = len(doc.lines) - 1
        doc.col = utf16_len(doc.lines[doc.line])
        first = await type_char(client, doc, "\n")
        items = first["items"]
        if not items or len(items[0]["insertText"]) < 2:
            continue
        text = items[0]["insertText"].split("\n")[0][:BURST_KEYS]
        if len(text) < 2:
            continue
        out.suggestions += 1
        before = (await client.stats())["model_calls"]
        for k, ch in enumerate(text[:-1]):
            answer = await type_char(client, doc, ch)
            out.keystrokes += 1
            rest = [it["insertText"] for it in answer["items"]]
            if rest and items[0]["insertText"][k + 1 :] == rest[0]:
                out.matched += 1
            await asyncio.sleep(BURST_INTERVAL_S)
        out.model_calls += (await client.stats())["model_calls"] - before
    return out


def close_docs(client: Client, docs: list[Doc]) -> None:
    for doc in docs:
        client.notify("textDocument/didClose", {"textDocument": {"uri": doc.uri}})


# ---- the runs ------------------------------------------------------------------------------------------------


@dataclass
class EngineRun:
    name: str
    ready_s: float = 0.0
    index_s: float = 0.0
    index_files: int = 0
    during_build: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)  # context on, index ready
    answers: list[str] = field(default_factory=list)  # the first suggestion of each keystroke of `latency`
    latency_no_context: list[float] = field(default_factory=list)
    bursts: BurstResult = field(default_factory=BurstResult)
    type_through: TypeThrough = field(default_factory=TypeThrough)
    stats: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)  # server-side stage timings of `latency`


async def run_engine(name: str, settings: dict[str, Any], root: Path, args: argparse.Namespace) -> EngineRun:
    rng = random.Random(args.seed)
    files = pick_files(root, args.docs, rng)
    out = EngineRun(name)
    client = await Client.start()
    start = time.perf_counter()
    await client.initialize(root, {**settings, "debounceMs": 0})
    out.ready_s = await client.wait_ready()
    docs = [open_doc(client, f, rng) for f in files]
    await client.request("fimtune/status")
    # While the workspace index builds: requests are answered, not queued behind it.
    while not (await client.stats())["index"].get("ready") and len(out.during_build) < args.cursors:
        out.during_build += await keystroke_latency(client, docs, 5, rng)
    while not (s := await client.stats())["index"].get("ready"):
        await asyncio.sleep(0.1)
    out.index_s = time.perf_counter() - start
    out.index_files = s["index"]["files"]
    # The measured keystrokes start from the files as they are on disk, with their own seed: every run types the
    # same keys into the same text, whatever the index build's keystrokes were (their number depends on timing).
    close_docs(client, docs)
    rng = random.Random(args.seed + 1)
    docs = [open_doc(client, f, rng) for f in files]
    await asyncio.sleep(1.0)  # the open documents' own re-index settles
    await client.stats(reset_timings=True)
    out.latency = await keystroke_latency(client, docs, args.cursors, rng, out.answers)
    out.stages = (await client.stats(reset_timings=True))["timings_ms"]
    client.configure({**settings, "debounceMs": 0, "context": {"enabled": False}})
    await client.wait_ready()
    out.latency_no_context = await keystroke_latency(client, docs, args.cursors // 2, rng)
    client.configure({**settings, "debounceMs": 75, "context": {"enabled": True}})
    await client.wait_ready()
    out.bursts = await bursts(client, docs, args.bursts, rng)
    client.configure({**settings, "debounceMs": 0, "context": {"enabled": True}})
    await client.wait_ready()
    out.type_through = await type_through(client, docs, args.type_through, rng)
    out.stats = await client.stats()
    close_docs(client, docs)
    await client.close()
    return out


def shown(path: Path) -> str:
    """A path as the results file shows it: from site-packages on, never the folders of the machine it ran on."""
    parts = path.resolve().parts
    return "/".join(parts[parts.index("site-packages") :]) if "site-packages" in parts else path.name


def fmt_ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.95):.1f} / {max(values):.1f} (n={len(values)})"


def report(runs: list[EngineRun], root: Path, n_files: int, load: tuple[float, float], args: argparse.Namespace) -> str:
    lines = [
        "# Language server latency",
        "",
        f"`python benchmarks/lsp_latency.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        "",
        f"workspace: {shown(root)} ({n_files} source files the server's walk indexes, not written here)",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}, "
        f"{platform.system()}; shared with other jobs "
        f"(1-min load average {load[0]:.2f} at start, {load[1]:.2f} at end)",
        f"client: this script, raw LSP over the server's stdio; each keystroke is didChange + inlineCompletion; "
        f"{args.docs} open documents, seed {args.seed}",
        "",
        "| measure | " + " | ".join(r.name for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("engine ready after initialize (s)", [f"{r.ready_s:.2f}" for r in runs])
    row("workspace index ready after initialize (s); files", [f"{r.index_s:.1f}; {r.index_files}" for r in runs])
    row("keystroke to answer while the index builds, p50 / p95 / max (ms)", [fmt_ms(r.during_build) for r in runs])
    row("keystroke to answer, context on, p50 / p95 / max (ms)", [fmt_ms(r.latency) for r in runs])
    row(
        "… the first keystroke at a place, p50 / p95 / max (ms)",
        [fmt_ms(r.latency[::KEYS_AT_A_SPOT]) for r in runs],
    )
    row(
        f"… the next {KEYS_AT_A_SPOT - 1} there, p50 / p95 / max (ms)",
        [fmt_ms([x for i, x in enumerate(r.latency) if i % KEYS_AT_A_SPOT]) for r in runs],
    )
    for stage in ("queue", "context", "render", "engine", "postprocess", "total"):
        row(
            f"… of which in the server: {stage}, p50 / p95 (ms)",
            [
                f"{r.stages[stage]['p50']:.2f} / {r.stages[stage]['p95']:.2f}" if stage in r.stages else "n/a"
                for r in runs
            ],
        )
    row("keystroke to answer, context off, p50 / p95 / max (ms)", [fmt_ms(r.latency_no_context) for r in runs])
    row(
        f"model calls per burst of {BURST_KEYS} keys at {BURST_INTERVAL_S * 1000:.0f} ms, debounce 75 ms: "
        "mean / max (bursts)",
        [
            f"{statistics.mean(r.bursts.calls):.2f} / {max(r.bursts.calls)} ({len(r.bursts.calls)})"
            if r.bursts.calls
            else "n/a"
            for r in runs
        ],
    )
    row(
        "last keystroke of a burst to its answer, p50 / p95 (ms)",
        [f"{percentile(r.bursts.last_ms, 0.5):.0f} / {percentile(r.bursts.last_ms, 0.95):.0f}" for r in runs],
    )
    row(
        "type-through: suggestions typed; keystrokes; model calls; answers = rest of suggestion",
        [
            f"{r.type_through.suggestions}; {r.type_through.keystrokes}; {r.type_through.model_calls}; "
            f"{r.type_through.matched}"
            for r in runs
        ],
    )

    def first_of_model(run: EngineRun) -> EngineRun:
        return next(r for r in runs if r.name.split(", prompt cache")[0] == run.name.split(", prompt cache")[0])

    row(
        "keystrokes answered as in the same model's first column (same keys into the same text)",
        [
            f"{sum(a == b for a, b in zip(r.answers, first_of_model(r).answers, strict=True))} of {len(r.answers)}"
            for r in runs
        ],
    )
    row(
        "local engine: share of prompt tokens whose keys and values came from its prompt cache",
        [f"{r.stats['prompt_cache']['reused_share']:.1%}" if r.stats.get("prompt_cache") else "n/a" for r in runs],
    )
    row(
        "server counters: requests, model calls, cache hits, type-through, superseded, errors",
        [
            ", ".join(
                str(r.stats.get(k, 0))
                for k in ("requests", "model_calls", "cache_hits", "type_through", "superseded", "errors")
            )
            for r in runs
        ],
    )
    lines.append("")
    fixed = next((r for r in runs if r.name.startswith("fixed")), None)
    if fixed is not None:
        p95 = percentile(fixed.latency, 0.95)
        met = "met" if p95 <= OVERHEAD_TARGET_MS else "NOT met"
        lines.append(f"target: server overhead p95 <= {OVERHEAD_TARGET_MS:.0f} ms: {met} ({p95:.1f} ms, context on)")
    worst = max((max(r.bursts.calls) for r in runs if r.bursts.calls), default=0)
    lines.append(
        f"target: <= {BURST_CALLS_TARGET} model calls per burst: {'met' if worst <= BURST_CALLS_TARGET else 'NOT met'}"
        f" (worst {worst})"
    )
    for r in runs:
        if r.name.startswith("local `nano`"):
            p50 = percentile(r.latency, 0.5)
            met = "met" if p50 <= NANO_TARGET_MS else "NOT met"
            lines.append(f"target: nano end to end p50 <= {NANO_TARGET_MS:.0f} ms: {met} ({p50:.1f} ms, context on)")
    tt = sum(r.type_through.model_calls for r in runs)
    lines.append(f"target: type-through makes no model call: {'met' if tt == 0 else 'NOT met'} ({tt} calls)")
    return "\n".join(lines) + "\n"


NANO_TARGET_MS = 100.0


def default_models() -> str:
    """tiny, and the built-in nano model when it is installed."""
    from fimtune.models import ModelError, resolve_base_model

    try:
        resolve_base_model("nano")
    except ModelError:
        return "tiny"
    return "tiny,nano"


async def amain(args: argparse.Namespace) -> str:
    root = (args.source or default_source()).resolve()
    n_files = sum(1 for i in walk.walk_repo(root, WalkConfig(), ()) if i.reason is None)
    load_start = os.getloadavg()[0]
    runs = [
        await run_engine(
            "fixed (instant): server overhead",
            {"engine": "fixed", "fixed": {"text": FIXED_TEXT}},
            root,
            args,
        )
    ]
    sizes = [int(x) for x in args.prompt_cache.split(",")]
    for model in [] if args.skip_tiny else args.models.split(","):
        for size in sizes:
            label = f"local `{model}` on CPU: end to end" + (f", prompt cache {size}" if len(sizes) > 1 else "")
            runs.append(
                await run_engine(
                    label,
                    {
                        "engine": "local",
                        "baseModel": model,
                        "device": "cpu",
                        "maxTokens": args.max_tokens,
                        "promptCache": size,
                    },
                    root,
                    args,
                )
            )
    return report(runs, root, n_files, (load_start, os.getloadavg()[0]), args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, help="workspace folder (default: transformers in site-packages)")
    ap.add_argument("--docs", type=int, default=20, help="open documents typed in")
    ap.add_argument("--cursors", type=int, default=300, help="keystrokes timed one at a time (context on)")
    ap.add_argument("--bursts", type=int, default=10, help="typing bursts per engine")
    ap.add_argument("--type-through", type=int, default=10, help="suggestions typed through per engine")
    ap.add_argument("--max-tokens", type=int, default=32, help="tiny: tokens per completion")
    ap.add_argument("--skip-tiny", action="store_true", help="only the instant engine")
    ap.add_argument(
        "--models", default=default_models(), help="local engine's models, comma-separated (default: tiny, nano)"
    )
    ap.add_argument(
        "--prompt-cache",
        default=str(PROMPT_CACHE),
        help="local engine prompt cache sizes, comma-separated, run side by side (0: off; default: %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the results as Markdown here")
    args = ap.parse_args()
    text = asyncio.run(amain(args))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
