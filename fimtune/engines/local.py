"""The local engine: a transformers model (plus an optional PEFT adapter from a run folder) generating in-process."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from fimtune.engines.base import Completion, EngineError, EngineRequest, EngineSettings, StopReason
from fimtune.engines.decoding import CacheEntry, Decoded, PromptCache, cache_argument, croppable, decode
from fimtune.fim_format import FimFormatError, get_template, prompt_ids
from fimtune.models import (
    ModelError,
    load_tokenizer,
    model_type_of,
    resolve_base_model,
    resolve_dtype,
)
from fimtune.prompting import PromptSpec, resolve_prompt
from fimtune.run_meta import RunMeta, RunMetaError, read_run_meta
from fimtune.tokenizer import FimTokenizer, as_fim_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# How often a request waiting for the model (another thread holds it) looks at its cancel event.
_LOCK_POLL_S = 0.02
T = TypeVar("T")


def pick_device(requested: str) -> str:
    """auto: cuda, then mps, then cpu; a named device must exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"local engine: device {requested!r} asked for, but torch sees no CUDA GPU; use device auto")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EngineError("local engine: device 'mps' asked for, but it is not available; use device auto")
    if requested != "cpu" and not requested.startswith(("cuda", "mps")):
        raise EngineError(f"local engine: unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    return requested


class _Watch:
    """Asked after every forward pass: the cancel event, the request's stop strings in the decoded tail, and the
    request's `settled` predicate on the whole text so far."""

    def __init__(
        self,
        tok: FimTokenizer,
        stops: Sequence[str],
        cancel: threading.Event | None,
        settled: Callable[[str], bool] | None = None,
    ):
        self.tok = tok
        self.stops = [s for s in stops if s]
        self.cancel = cancel
        self.cancelled = False
        self.settled = settled
        self.was_settled = False
        # Trailing tokens enough to hold the longest stop string before what the last pass added: a token is at
        # least one byte, a character at most four (and a few more for a character split across tokens).
        self.tail = 4 * max((len(s) for s in self.stops), default=0) + 4
        self.checked = 0  # tokens generated at the last call

    def __call__(self, generated: list[int]) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            self.cancelled = True
            return True
        if self.stops:
            text = self.tok.decode(generated[-(self.tail + len(generated) - self.checked) :])
            self.checked = len(generated)
            if any(s in text for s in self.stops):
                return True
        if self.settled is not None and self.settled(self.tok.decode(generated)):
            self.was_settled = True
            return True
        return False


def _cut_at_stops(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


# Every local engine of the process loads and runs its model on this one thread (see LocalEngine).
_ON_MODEL_THREAD = threading.local()
_MODEL_THREAD = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="fimtune-model", initializer=lambda: setattr(_ON_MODEL_THREAD, "yes", True)
)


def on_model_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) on the thread every local engine runs its model on; for code beside an engine that
    runs a model too (a benchmark's bare generate loop), so that the process keeps one team of OpenMP threads.
    Called on that thread itself, fn runs at once (waiting for the thread there would wait forever)."""
    if getattr(_ON_MODEL_THREAD, "yes", False):
        return fn(*args, **kwargs)
    return _MODEL_THREAD.submit(fn, *args, **kwargs).result()


class LocalEngine:
    """Generates with transformers in this process: greedy by default, stopping on the template's end token (and
    the tokenizer's eos), on the request's stop strings, on max_tokens, or promptly once `cancel` is set.

    One model serves all threads: calls are serialized by a lock (a waiting call still honours its cancel event),
    and models are loaded and run on one thread (`on_model_thread`, shared by every local engine of the process),
    whichever thread calls. OpenMP keeps a team of threads per thread that calls into torch, and teams of different
    callers spin against each other: with the language server's worker threads taking turns, a decoding pass of
    nano on a 2-core CPU took 10-16 ms instead of 6, and a 750-token prompt twice as long.
    `without_adapter()` gives a view that runs the same loaded model with its adapter switched off (eval --compare).
    """

    name = "local"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.run: Path | None = Path(settings.run).expanduser() if settings.run else None
        self.meta: RunMeta | None = None
        if self.run is not None:
            try:
                self.meta = read_run_meta(self.run)
            except RunMetaError as e:
                raise EngineError(f"local engine: {e}") from None
        self.base_path = self._resolve_base()
        try:
            self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(self.base_path)
            self.model_type = model_type_of(self.base_path)
        except ModelError as e:
            raise EngineError(f"local engine: {e}") from None
        self.fim_tokenizer = as_fim_tokenizer(self.tokenizer)
        self.device = pick_device(settings.device)
        try:
            compute = resolve_dtype(settings.dtype, self.device.split(":")[0], setting="dtype")
        except ModelError as e:
            raise EngineError(f"local engine: {e}") from None
        # Inference needs no fp32 master weights: bf16 weights where the device has bf16 matrix kernels.
        self.dtype = torch.bfloat16 if compute == "bf16" else torch.float32
        self.adapter: Path | None = None
        if self.run is not None and self.meta is not None:
            self.adapter = (self.run / self.meta.adapter).resolve()
            if not (self.adapter / "adapter_config.json").exists():
                raise EngineError(
                    f"local engine: {self.adapter} has no adapter_config.json; is {self.run} a finished "
                    "`fimtune train` run?"
                )
        self.model: PreTrainedModel = on_model_thread(self._load)
        self._lock = threading.Lock()
        self._prompt_cache = PromptCache(settings.prompt_cache)
        self._cache_arg = cache_argument(self.model)
        self._end_ids: dict[str, list[int]] = {}
        self._stop_split: dict[tuple[str, ...], tuple[frozenset[int], tuple[str, ...]]] = {}
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        log.info(
            "local engine: %s%s on %s (%s)",
            self.base_path,
            f" + adapter {self.adapter}" if self.adapter else "",
            self.device,
            str(self.dtype).removeprefix("torch."),
        )

    def _load(self) -> PreTrainedModel:
        """The base model with the run's adapter, if any, on the device (on the engine's torch thread)."""
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(str(self.base_path), dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise EngineError(
                f"local engine: cannot load a causal language model from {self.base_path}: {str(e).splitlines()[0]}"
            ) from None
        if self.adapter is not None:
            from peft import PeftModel

            try:
                with warnings.catch_warnings():  # transformers' own deprecation notes about PEFT internals
                    warnings.simplefilter("ignore", FutureWarning)
                    model = PeftModel.from_pretrained(model, str(self.adapter))
            except (OSError, ValueError, RuntimeError) as e:
                raise EngineError(
                    f"local engine: the adapter in {self.adapter} does not load onto base model {self.base_path} "
                    f"({str(e).splitlines()[0]}); use the base it was trained on (the run's fimtune.json names it)"
                ) from None
        loaded: PreTrainedModel = model.to(self.device).eval()
        return loaded

    def _resolve_base(self) -> Path:
        name = self.settings.base_model or (self.meta.base_model if self.meta else "")
        if not name:
            raise EngineError("local engine: give a base model (--base-model: a folder, hub id or `tiny`) or a run")
        try:
            return resolve_base_model(name)
        except ModelError as e:
            recorded = Path(self.meta.base_model_path) if self.meta and self.meta.base_model_path else None
            if recorded is not None and not self.settings.base_model and (recorded / "config.json").exists():
                log.info("base model %s not found (%s); using the run's recorded %s", name, e, recorded)
                return recorded
            raise EngineError(f"local engine: {e}") from None

    # --- prompt choices --------------------------------------------------------------------------------------

    def prompt_spec(self, template: str = "auto") -> PromptSpec:
        """How to render requests for this model: the run's fimtune.json, or the base's template (`auto`:
        detected from its tokenizer), with this tokenizer so budgets are exact token counts."""
        try:
            return resolve_prompt(
                run=self.run, base_model=self.base_path, template=template, tokenizer=self.fim_tokenizer
            )
        except (FimFormatError, RunMetaError, ModelError) as e:
            raise EngineError(f"local engine: {e}") from None

    # --- generation ------------------------------------------------------------------------------------------

    def complete(self, request: EngineRequest, cancel: threading.Event | None = None) -> Completion:
        return self._complete(request, cancel, nullcontext, "adapter" if self.adapter is not None else "base")

    def without_adapter(self) -> LocalEngine | BaseView:
        """The same loaded model with its adapter switched off (the plain base); this engine if it has none."""
        return BaseView(self) if self.adapter is not None else self

    def _adapter_off(self) -> AbstractContextManager[Any]:
        peft_model: Any = self.model  # a PeftModel whenever an adapter is loaded
        context: AbstractContextManager[Any] = peft_model.disable_adapter()
        return context

    def _end_token_ids(self, template_name: str) -> list[int]:
        ids = self._end_ids.get(template_name)
        if ids is None:
            try:
                template = get_template(template_name)
            except FimFormatError as e:
                raise EngineError(f"local engine: {e}") from None
            found = [self.fim_tokenizer.token_to_id(template.end), self.tokenizer.eos_token_id]
            ids = self._end_ids[template_name] = sorted({i for i in found if i is not None})
        return ids

    def _split_stops(self, stops: tuple[str, ...]) -> tuple[frozenset[int], tuple[str, ...]]:
        """The request's stop strings that spell a special token of the vocabulary (a template's sentinel, with or
        without its spacing) as that token's id, and the others. Generation ends at the id, never at the
        characters: as the text is encoded, code that spells `<PRE>` (HTML in a Javadoc) or `<|endoftext|>` (a
        tokenizer's source) is text the model may write, not an end."""
        split = self._stop_split.get(stops)
        if split is None:
            ids: set[int] = set()
            text: list[str] = []
            for stop in stops:
                forms = (stop, stop.strip(), "\u2581" + stop.strip())  # SentencePiece: " <PRE>" is "▁<PRE>"
                token = next((f for f in forms if f and self.fim_tokenizer.is_special(f)), None)
                tid = self.fim_tokenizer.token_to_id(token) if token is not None else None
                if tid is None:
                    text.append(stop)
                else:
                    ids.add(tid)
            split = self._stop_split[stops] = (frozenset(ids), tuple(text))
        return split

    def _complete(
        self,
        request: EngineRequest,
        cancel: threading.Event | None,
        scope: Any,
        weights: str,
    ) -> Completion:
        """`scope`: the context the model runs in (the adapter switched off, or nothing); `weights` names what it
        computes with, so that a cached prompt's keys and values serve only the same weights again."""
        start = time.perf_counter()
        if self.model is None:
            raise EngineError("local engine: this engine was closed; build a new one")
        try:
            ids = prompt_ids(request.rendered.template, request.rendered, self.fim_tokenizer)
        except FimFormatError as e:
            raise EngineError(f"local engine: {e}") from None
        end_ids = self._end_token_ids(request.rendered.template)
        stop_ids, stops = self._split_stops(request.stop)
        with self._locked(cancel) as got:
            if not got:
                return Completion("", "cancelled", time.perf_counter() - start, len(ids), 0)
            if self.model is None:  # closed while this call waited for the lock
                raise EngineError("local engine: this engine was closed; build a new one")
            if request.max_tokens <= 0:
                return Completion("", "length", time.perf_counter() - start, len(ids), 0)
            watch = _Watch(self.fim_tokenizer, stops, cancel, request.settled)
            entry, kept = self._prompt_cache.take(weights, ids)
            cache = entry.cache if entry is not None else DynamicCache(config=self.model.config)

            def generate() -> Decoded:
                with torch.inference_mode(), scope():
                    return decode(
                        self.model,
                        ids,
                        cache,
                        kept,
                        max_new_tokens=request.max_tokens,
                        end_ids=sorted(stop_ids.union(end_ids)),
                        lookup=self.settings.prompt_lookup,
                        temperature=request.temperature,
                        halt=watch,
                        device=self.device,
                        cache_arg=self._cache_arg,
                    )

            try:
                done = on_model_thread(generate)
            except torch.OutOfMemoryError:
                self._prompt_cache.clear()
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()  # give the failed call's blocks back before the next one
                raise EngineError(
                    f"local engine: out of memory generating from a {len(ids)}-token prompt on {self.device}; "
                    "lower the prompt budget (train with a shorter --seq-len) or use a smaller model"
                ) from None
            if croppable(cache):
                held = ids + done.tokens
                self._prompt_cache.put(CacheEntry(weights, held[: cache.get_seq_length()], cache))
            new = done.tokens
        generated = len(new)  # what the model produced, the end token or stop string included
        reason: StopReason = "length"
        if done.ended:
            new, reason = new[:-1], "end" if new[-1] in end_ids else "stop"
        text, cut = _cut_at_stops(self.fim_tokenizer.decode(new), stops)
        if cut or watch.was_settled:
            reason = "stop"
        elif watch.cancelled and reason != "end":
            reason = "cancelled"
        return Completion(text, reason, time.perf_counter() - start, len(ids), generated)

    def cache_stats(self) -> dict[str, float]:
        """How much of the prompts the key/value cache saved: calls, prompt tokens, tokens reused."""
        return self._prompt_cache.stats()

    @contextmanager
    def _locked(self, cancel: threading.Event | None) -> Iterator[bool]:
        """Hold the model; yields False (without the lock) when `cancel` is set while waiting for it."""
        while not self._lock.acquire(timeout=_LOCK_POLL_S):
            if cancel is not None and cancel.is_set():
                yield False
                return
        try:
            yield cancel is None or not cancel.is_set()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Drop the model (and free GPU memory); the engine cannot be used afterwards."""
        with self._lock:
            self._prompt_cache.clear()
            self.model = None  # type: ignore[assignment]
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()


class BaseView:
    """An Engine that runs a LocalEngine's model with the adapter disabled (same lock, same tokenizer)."""

    name = "local-base"

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer

    def prompt_spec(self, template: str = "auto") -> PromptSpec:
        return self.engine.prompt_spec(template)

    def complete(self, request: EngineRequest, cancel: threading.Event | None = None) -> Completion:
        return self.engine._complete(request, cancel, self.engine._adapter_off, "base")

    def close(self) -> None:
        pass  # the view owns nothing; close the engine it came from
