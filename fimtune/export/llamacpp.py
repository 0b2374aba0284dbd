"""llama.cpp from a registry package: the sources the PyPI sdist of llama-cpp-python vendors, its converter, and
a CPU `llama-server` built from them once with cmake (cached under the fimtune cache folder)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fimtune.models import cache_root

# llama-server ends a generation on its end-of-generation tokens only (EOS, and FIM_PAD/REP/SEP); a template's
# other special tokens (a FIM prefix or suffix token the model emits) are dropped from the text, so fimtune's
# stop strings never see them and the server generates on. --special writes them into the text, where the stop
# strings end the generation as the local engine does.
SERVE_FLAGS = ("--special",)
LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendor/llama.cpp is used; pinned: converter and server must match
# A llama.cpp source folder to use instead of the sdist's (e.g. a checkout); its server is built beside it.
SOURCES_ENV = "FIMTUNE_LLAMA_CPP"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # would download the web UI
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)


class LlamaCppError(Exception):
    """llama.cpp's sources cannot be had, built or run; the message says what to do."""


def home() -> Path:
    return cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON}"


def sources(say: Callable[[str], None] = lambda _: None) -> Path:
    """The llama.cpp source folder: $FIMTUNE_LLAMA_CPP, or the sdist's vendored copy (downloaded with pip once)."""
    env = os.environ.get(SOURCES_ENV)
    if env:
        folder = Path(env).expanduser()
        if not (folder / "convert_hf_to_gguf.py").is_file():
            raise LlamaCppError(f"${SOURCES_ENV}={env} is not a llama.cpp source folder (no convert_hf_to_gguf.py)")
        return folder
    folder = home() / "src"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    say(f"getting llama.cpp's sources: pip download llama-cpp-python=={LLAMA_CPP_PYTHON} (sdist, about 77 MB)")
    with tempfile.TemporaryDirectory(prefix="fimtune-llama-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += [f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp, "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            raise LlamaCppError(
                f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON} sdist: {proc.stderr.strip()[-400:]}; "
                f"or point ${SOURCES_ENV} at a llama.cpp source folder"
            )
        _unpack_vendored(archives[0], folder)
    return folder


def _unpack_vendored(archive: Path, dest: Path) -> None:
    """Extract <sdist>/vendor/llama.cpp into dest (through a sibling folder, so a half copy is never used)."""
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(prefix) and len(m.name) > len(prefix):
                m.name = m.name[len(prefix) :]
                members.append(m)
        tar.extractall(staging, members=members, filter="data")
    staging.replace(dest)


def build_dir() -> Path:
    """Where llama-server is built: beside $FIMTUNE_LLAMA_CPP's sources, else in the fimtune cache."""
    return Path(os.environ[SOURCES_ENV]).expanduser() / "build" if os.environ.get(SOURCES_ENV) else home() / "build"


def build_server(say: Callable[[str], None] = lambda _: None) -> Path:
    """The `llama-server` executable, built (CPU) with cmake the first time; the build's time is recorded in
    build.json beside it."""
    build = build_dir()
    exe = build / "bin" / "llama-server"
    if exe.is_file():
        return exe
    src = sources(say)
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise LlamaCppError(f"building llama-server needs {tool} on PATH (e.g. apt install cmake g++)")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    jobs = str(os.cpu_count() or 1)
    say(f"building llama-server from {src} with cmake ({jobs} jobs; about 5-8 minutes on 2 cores, once)")
    started = time.perf_counter()
    log = build.with_name("build.log")
    build.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        for step in (
            ["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_FLAGS],
            ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
        ):
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise LlamaCppError(f"building llama-server failed ({' '.join(step[:3])} ...); see {log}")
    seconds = time.perf_counter() - started
    record = {"llama_cpp_python": LLAMA_CPP_PYTHON, "seconds": round(seconds, 1), "jobs": int(jobs)}
    (build / "build.json").write_text(json.dumps({**record, "cmake_flags": list(CMAKE_FLAGS)}, indent=2) + "\n")
    say(f"built {exe} in {seconds:.0f}s")
    return exe


class LlamaServer:
    """A llama-server on a free local port, serving one GGUF with one slot; ready when constructed."""

    def __init__(self, exe: Path, gguf: Path, ctx: int = 2048, threads: int = 2) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "-c", str(ctx)]
        cmd += ["-np", "1", "-t", str(threads), "--no-warmup", *SERVE_FLAGS]
        # Its log goes to a file: a pipe nobody reads fills after some requests and then blocks the server.
        self.log = tempfile.TemporaryFile(mode="w+", prefix="llama-server-", suffix=".log")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True, preexec_fn=_die_with_parent(os.getpid())
        )
        # Stopped by close(), at interpreter exit if nobody called it, and by the kernel if this process dies.
        self._stop = weakref.finalize(self, _stop, self.proc, self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LlamaCppError(f"llama-server exited while loading {gguf}: {self.log_tail(400)}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise LlamaCppError(f"llama-server did not answer /health within 60 s for {gguf}")

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's own log (what it printed on stderr so far)."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().strip()[-chars:]

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(proc: subprocess.Popen[str], log: Any) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """For Popen's preexec_fn on Linux: the server gets SIGTERM when the process that started it dies, even by
    SIGKILL, so a crashed client never leaves a llama-server behind (elsewhere: None, close() and exit only)."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the signal was armed
            os._exit(1)

    return arm
