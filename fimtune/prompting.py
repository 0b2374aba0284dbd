"""The prompt choices for one model (template, budgets, context, tokenizer), from a run folder or a base model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fimtune.config import ContextConfig, from_dict
from fimtune.fim_format import (
    Budgets,
    FimFormatError,
    FimRequest,
    FimTemplate,
    Rendered,
    check_tokenizer,
    detect_template,
    get_template,
    prompt_ids,
    render,
    spells_control_token,
    stop_strings,
)
from fimtune.records import FimExample
from fimtune.run_meta import RunMeta, read_run_meta
from fimtune.tokenizer import FimTokenizer, as_fim_tokenizer, read_tokenizer_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One completion to make.

    `rendered.prompt` is the exact text fimtune's template produced; engines that take a raw prompt (local,
    openai, ollama) send it as is. `fim` holds the same prefix, suffix and context before rendering, for engines
    that lay out the prompt themselves (llama.cpp's /infill).
    """

    rendered: Rendered
    fim: FimRequest
    max_tokens: int = 64
    # Generation ends at the first of these (not included in the text). The local engine ends at one that spells a
    # special token (a template's sentinel) by the token's id, not by its characters in code; HTTP servers send
    # both as the same text, so those engines match the text.
    stop: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy
    # The prompt's token ids, where its text spells a template's token (a tokenizer's own source, a chat template):
    # a server reading the text would make that spelling the token itself, so engines that take ids send these
    # (as training encodes it: the characters). None otherwise, or where the prompt's tokenizer is not known.
    prompt_ids: tuple[int, ...] | None = None
    # Asked with the text generated so far (after every token or streamed chunk): True once the caller's stop rules
    # have decided (`postprocess.Settled`), and the engine ends there (stop reason "stop"). The language server sets
    # it; eval does not, as it scores the raw completion too.
    settled: Callable[[str], bool] | None = None


@dataclass
class PromptSpec:
    """Everything that decides the bytes a model is shown. Eval and serve build requests only through this, so a
    tuned adapter sees exactly the layout it was trained on (its fimtune.json)."""

    template: FimTemplate
    budgets: Budgets = field(default_factory=Budgets)
    context: ContextConfig = field(default_factory=ContextConfig)
    tokenizer: FimTokenizer | None = None  # exact token budgets; None: the ApproxCounter estimate
    meta: RunMeta | None = None  # set when read from a run folder

    @classmethod
    def from_run(cls, run: str | Path, tokenizer: object | None = None) -> PromptSpec:
        """A run folder's fimtune.json (refusing unknown format versions: RunMetaError), with the run's own
        tokenizer: the one given (the local engine's), else the tokenizer.json training saved in the run folder
        (or its base model's), read without torch, so that every engine budgets prompts exactly as training
        did. Only a run with neither falls back to the character estimate (logged)."""
        meta = read_run_meta(run)
        tok = as_fim_tokenizer(tokenizer) if tokenizer is not None else None
        if tok is None:
            folders = [Path(run).expanduser()] + ([Path(meta.base_model_path)] if meta.base_model_path else [])
            tok = next((t for t in map(read_tokenizer_folder, folders) if t is not None), None)
            if tok is None:
                log.warning("no tokenizer.json in %s: prompt budgets are estimates", " or ".join(map(str, folders)))
        template = get_template(meta.template)
        if tok is not None:
            check_tokenizer(template, tok)
        context = from_dict(ContextConfig, meta.context, "fimtune.json context") if meta.context else ContextConfig()
        return cls(template, Budgets.from_dict(meta.budgets), context, tok, meta)

    @classmethod
    def for_base(
        cls,
        template: str = "auto",
        tokenizer: object | None = None,
        model_type: str | None = None,
        budgets: Budgets | None = None,
        context: ContextConfig | None = None,
        context_limit: int | None = None,
    ) -> PromptSpec:
        """A base model without a run: the template named, or detected from its tokenizer (`auto`).

        context_limit: the longest sequence the model takes (its config's max_position_embeddings); default
        budgets shrink to fit it, as training does with a shorter --seq-len.
        """
        tok = as_fim_tokenizer(tokenizer) if tokenizer is not None else None
        if template == "auto":
            if tok is None:
                raise FimFormatError("template auto needs the model's tokenizer; name a template instead")
            template = detect_template(tok, model_type)
        t = get_template(template)
        if tok is not None:
            check_tokenizer(t, tok)
        if budgets is None:
            budgets = Budgets()
            if context_limit is not None and context_limit < budgets.max_tokens:
                budgets = Budgets(max_tokens=context_limit, max_middle_tokens=min(256, context_limit // 4))
        return cls(t, budgets, context or ContextConfig(), tok)

    def render(self, request: FimRequest | FimExample, middle: str | None = None) -> Rendered:
        return render(self.template, request, middle, self.tokenizer, self.budgets)

    def stops(self) -> tuple[str, ...]:
        return stop_strings(self.template)

    def request(self, fim: FimRequest | FimExample, max_tokens: int | None = None) -> EngineRequest:
        """An engine request for a cursor: rendered prompt, the template's stop strings, a token limit (at most
        the middle budget the model was trained with)."""
        req = FimRequest.from_example(fim) if isinstance(fim, FimExample) else fim
        limit = self.budgets.max_middle_tokens
        if max_tokens is not None:
            limit = min(max_tokens, limit)
        rendered = self.render(req)
        ids = None
        if self.tokenizer is not None and spells_control_token(rendered):
            ids = tuple(prompt_ids(self.template, rendered, self.tokenizer))
        return EngineRequest(rendered=rendered, fim=req, max_tokens=limit, stop=self.stops(), prompt_ids=ids)


def resolve_prompt(
    *,
    run: str | Path | None = None,
    base_model: str | Path | None = None,
    template: str = "auto",
    tokenizer: object | None = None,
    budgets: Budgets | None = None,
    context: ContextConfig | None = None,
) -> PromptSpec:
    """What a model is shown, decided once for every command and engine.

    - run: its fimtune.json, with the given tokenizer or else the run's own tokenizer.json (PromptSpec.from_run);
      a template other than `auto` must be the one it was trained with.
    - base_model (a name `fimtune.models` resolves, or a folder): its template (`auto`: detected from its
      tokenizer), budgets that fit its context limit, and its tokenizer: the one given, else its tokenizer.json
      read without torch (transformers only for a folder that has none).
    - neither: the named template with the character estimate (a served model known only by its template).

    Raises FimFormatError, RunMetaError or ModelError with a one-line message.
    """
    if run:
        spec = PromptSpec.from_run(run, tokenizer)
        assert spec.meta is not None
        if template not in ("auto", spec.meta.template):
            raise FimFormatError(
                f"run {run} was trained with template {spec.meta.template!r}; it cannot be prompted with "
                f"{template!r} (leave the template on auto)"
            )
        return spec
    if base_model is None:
        return PromptSpec.for_base(template, tokenizer, budgets=budgets, context=context)
    from fimtune import models

    path = models.resolve_base_model(str(base_model))
    if tokenizer is None:
        tokenizer = read_tokenizer_folder(path) or models.load_tokenizer(path)
    return PromptSpec.for_base(
        template, tokenizer, models.model_type_of(path), budgets, context, context_limit=models.context_limit(path)
    )
