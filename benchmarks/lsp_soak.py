"""An editor's day, compressed: the language server under steady mixed load for N minutes, over real stdio.

    python benchmarks/lsp_soak.py --minutes 2                       # the CI-sized run
    python benchmarks/lsp_soak.py --minutes 30 --out benchmarks/results/lsp_soak.md

A client (this script) starts `python -m lsp_server --engine fixed` on a generated workspace of 20,000 files plus
a repository outside it, and for N minutes: opens and closes files (at most --max-open at once, as an editor's
tabs), types in bursts (each keystroke a didChange and an inlineCompletion request, some cancelled, most
superseded by the next), writes and deletes files on disk (reported with didChangeWatchedFiles), opens files
outside the workspace, and every few seconds makes the engine slow, failing or hanging (fixed.delayMs,
fixed.error) before making it instant again.

It reports, per minute: requests sent and answered (every request must get a response: a result or an error),
latency p50/p95 of the requests answered while the engine was instant, and the server's RSS; then the server's
CPU while idle after the load stops, and whether any process it started is left after `exit`.
Targets: every request answered; instant-engine p95 at most 15 ms once the index is ready; RSS not growing after
the first minutes; idle CPU near 0; no process left.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RSS_TARGET_MIB_PER_MIN = 0.1  # no growth once the index is built: what is left is measurement noise
P95_TARGET_MS = 15.0


class Server:
    """The server over stdio: requests are timed from the write to their response, read on a thread."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lsp_server", "--engine", "fixed"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lock = threading.Lock()
        self.sent: dict[int, tuple[float, str]] = {}  # id -> (time sent, what)
        self.answered: dict[int, tuple[float, bool]] = {}  # id -> (latency s, is an error)
        self.results: dict[int, Any] = {}  # id -> result, for the requests whose answer is read (stats)
        self.next_id = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": root.as_uri(),
                "capabilities": {
                    "workspace": {"didChangeWatchedFiles": {"dynamicRegistration": True}},
                    "textDocument": {"inlineCompletion": {}},
                },
                "initializationOptions": settings,
            },
            "init",
        )
        self.notify("initialized", {})

    def _write(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.proc.stdin is not None
        with self.lock:
            self.proc.stdin.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            self.proc.stdin.flush()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = 0
            while (line := out.readline()) not in (b"\r\n", b"\n"):
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            message = json.loads(out.read(length))
            if "id" in message and "method" not in message:
                now = time.perf_counter()
                with self.lock:
                    sent = self.sent.get(message["id"])
                    if sent is not None:
                        self.answered[message["id"]] = (now - sent[0], "error" in message)
                        if sent[1] == "stats":
                            self.results[message["id"]] = message.get("result")
            elif "id" in message:  # a request from the server (registerCapability): answer it
                self._write({"id": message["id"], "result": None})

    def request(self, method: str, params: Any, what: str = "") -> int:
        with self.lock:
            self.next_id += 1
            msg_id = self.next_id
            self.sent[msg_id] = (time.perf_counter(), what or method)
        self._write({"id": msg_id, "method": method, "params": params})
        return msg_id

    def notify(self, method: str, params: Any) -> None:
        self._write({"method": method, "params": params})

    def stats(self) -> Any:
        """The server's fimtune/stats."""
        msg_id = self.request("fimtune/stats", None, "stats")
        self.wait_for(msg_id)
        with self.lock:
            return self.results.pop(msg_id, None) or {}

    def wait_for(self, msg_id: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while msg_id not in self.answered and time.monotonic() < deadline:
            time.sleep(0.005)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def children(self) -> list[int]:
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            found += [int(k) for k in kids]
            todo += [int(k) for k in kids]
        return found


def make_workspace(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"pkg{i % 50}" / f"mod{i % 400 // 50}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.py").write_text(
            f'"""Module {i}."""\n\n\ndef compute_{i}(value, factor={i % 7}):\n    return value * factor + {i}\n'
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=20.0, help="keystrokes per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-open", type=int, default=40, help="open documents at most (an editor's tabs): the oldest closes"
    )
    ap.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="fimtune-soak-") as tmp:
        root, outside = Path(tmp) / "ws", Path(tmp) / "elsewhere"
        make_workspace(root, args.files)
        (outside / ".git").mkdir(parents=True)
        (outside / "tool.py").write_text("def helper(x):\n    return x + 1\n")
        settings = {
            "engine": "fixed",
            "fixed": {"text": "return value\n", "delayMs": 0, "error": ""},
            "debounceMs": 0,
            "timeoutMs": 300,
        }
        server = Server(root, settings)
        server.wait_for(server.request("fimtune/stats", None))  # the index builds in the background meanwhile
        ready = time.perf_counter()
        docs: dict[str, list[str]] = {}
        versions: dict[str, int] = {}
        minutes: list[dict[str, Any]] = []
        instant_ids: set[int] = set()
        engine_state = "instant"
        start = time.perf_counter()
        end = start + args.minutes * 60
        minute_start, minute_ids = start, []
        next_engine_change = start + 5
        while time.perf_counter() < end:
            now = time.perf_counter()
            if now >= next_engine_change:  # the engine: mostly instant, sometimes slow, failing or hanging
                engine_state = rng.choice(["instant"] * 5 + ["slow", "error", "hang"])
                fixed = {
                    "text": "return value\n",
                    "delayMs": {"slow": 150, "hang": 60_000}.get(engine_state, 0),
                    "error": "simulated failure" if engine_state == "error" else "",
                }
                server.notify(
                    "workspace/didChangeConfiguration", {"settings": {"fimtune": {**settings, "fixed": fixed}}}
                )
                next_engine_change = now + rng.uniform(2, 6)
            action = rng.random()
            if action < 0.05 or not docs:  # open a file (sometimes one outside the workspace)
                path = (
                    outside / "tool.py"
                    if rng.random() < 0.1
                    else root / f"pkg{rng.randrange(50)}" / f"open{rng.randrange(10_000)}.py"
                )
                uri = path.as_uri()
                if uri not in docs:
                    if len(docs) >= args.max_open:  # the editor closes its oldest tab
                        oldest = next(iter(docs))
                        del docs[oldest]
                        server.notify("textDocument/didClose", {"textDocument": {"uri": oldest}})
                    lines = [f"def fn_{rng.randrange(10**6)}(value):", "    "]
                    docs[uri], versions[uri] = lines, 1
                    server.notify(
                        "textDocument/didOpen",
                        {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "\n".join(lines)}},
                    )
            elif action < 0.07 and len(docs) > 3:  # close one
                uri = rng.choice(list(docs))
                del docs[uri]
                server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
            elif action < 0.09:  # a file written or deleted on disk: 100 paths, about two thirds of them present
                path = root / f"pkg{rng.randrange(50)}" / f"disk{rng.randrange(2)}.py"
                if path.exists() and rng.random() < 0.5:
                    path.unlink()
                    kind = 3
                else:
                    path.write_text(f"def on_disk_{rng.randrange(10**6)}():\n    return 1\n")
                    kind = 1
                server.notify("workspace/didChangeWatchedFiles", {"changes": [{"uri": path.as_uri(), "type": kind}]})
            else:  # a keystroke and its completion request; some cancelled
                uri = rng.choice(list(docs))
                lines = docs[uri]
                char = rng.choice("abcdefghij (),.=+")
                line, col = len(lines) - 1, len(lines[-1])
                lines[-1] += char
                versions[uri] += 1
                change = {
                    "range": {"start": {"line": line, "character": col}, "end": {"line": line, "character": col}},
                    "text": char,
                }
                server.notify(
                    "textDocument/didChange",
                    {"textDocument": {"uri": uri, "version": versions[uri]}, "contentChanges": [change]},
                )
                msg_id = server.request(
                    "textDocument/inlineCompletion",
                    {
                        "textDocument": {"uri": uri},
                        "position": {"line": line, "character": col + 1},
                        "context": {"triggerKind": 2},
                    },
                )
                minute_ids.append(msg_id)
                if engine_state == "instant":
                    instant_ids.add(msg_id)
                if rng.random() < 0.05:
                    server.notify("$/cancelRequest", {"id": msg_id})
                if rng.random() < 0.02:
                    lines.append("    ")
            time.sleep(rng.expovariate(args.rate))
            if time.perf_counter() - minute_start >= 60 or time.perf_counter() >= end:
                time.sleep(1.0)  # let the minute's last answers arrive
                with server.lock:
                    got = {i: server.answered[i] for i in minute_ids if i in server.answered}
                lat = sorted(1000 * got[i][0] for i in got if i in instant_ids and not got[i][1])
                minutes.append(
                    {
                        "minute": len(minutes) + 1,
                        "sent": len(minute_ids),
                        "answered": len(got),
                        "p50_ms": statistics.median(lat) if lat else float("nan"),
                        "p95_ms": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan"),
                        "rss_mib": server.rss_mib(),
                        "open_docs": len(docs),
                        "indexed_files": server.stats().get("index", {}).get("files"),
                    }
                )
                print(json.dumps(minutes[-1]), flush=True)
                minute_start, minute_ids = time.perf_counter(), []

        time.sleep(2.0)  # the load stops: how busy is an idle server?
        cpu0, t0 = server.cpu_s(), time.perf_counter()
        time.sleep(5.0)
        idle_cpu = (server.cpu_s() - cpu0) / (time.perf_counter() - t0)
        kids = server.children()
        with server.lock:
            unanswered = [i for i, (_, what) in server.sent.items() if i not in server.answered]
        server.request("shutdown", None)
        server.notify("exit", None)
        try:
            code = server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            code = None
        time.sleep(0.3)
        left = [k for k in kids if Path(f"/proc/{k}").exists()]

    lines = [
        "# Language server soak: an editor day compressed",
        "",
        f"`python benchmarks/lsp_soak.py --minutes {args.minutes:g} --files {args.files} --max-open {args.max_open}`; "
        f"{os.cpu_count()}-core "
        f"machine, Python {sys.version.split()[0]}; the load starts {start - ready:.1f} s after the server answers, "
        "while the workspace index is still building.",
        "",
        "| minute | requests sent | answered | instant-engine p50 ms | p95 ms | RSS MiB | open documents "
        "| indexed files |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {m['minute']} | {m['sent']} | {m['answered']} | {m['p50_ms']:.1f} | {m['p95_ms']:.1f} | "
            f"{m['rss_mib']:.0f} | {m['open_docs']} | {m['indexed_files']} |"
            for m in minutes
        ),
        "",
        f"- requests never answered: {len(unanswered)} (target 0)",
        f"- idle CPU after the load stopped: {100 * idle_cpu:.1f}% of a core (target near 0)",
        f"- exit code after shutdown + exit: {code}; processes it started left running: {len(left)} (target 0)",
    ]
    late = [m["p95_ms"] for m in minutes[1:]]
    if late:
        worst = max(late)
        lines.append(
            f"- instant-engine p95 after the first minute: worst {worst:.1f} ms "
            f"({'met' if worst <= P95_TARGET_MS else 'NOT met'}: target {P95_TARGET_MS:.0f} ms)"
        )
    half = minutes[len(minutes) // 2 :]
    if len(half) >= 2:
        rate = (half[-1]["rss_mib"] - half[0]["rss_mib"]) / (half[-1]["minute"] - half[0]["minute"])
        lines.append(
            f"- RSS over the second half (minutes {half[0]['minute']}-{half[-1]['minute']}): "
            f"{half[0]['rss_mib']:.0f} -> {half[-1]['rss_mib']:.0f} MiB, {rate:+.2f} MiB/min "
            f"({'met' if rate <= RSS_TARGET_MIB_PER_MIN else 'NOT met'}: target flat, at most "
            f"{RSS_TARGET_MIB_PER_MIN} MiB/min)"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if not unanswered and not left else 1


if __name__ == "__main__":
    raise SystemExit(main())
