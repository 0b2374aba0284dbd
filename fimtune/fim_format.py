"""FIM prompt layout per model family: templates, token budgets, truncation, rendering to text and token ids."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fimtune.languages import LANGUAGES, language_for_path
from fimtune.records import FimExample, Snippet
from fimtune.tokenizer import CONTROL_TOKENS, ApproxCounter, FimTokenizer, TokenCounter, as_fim_tokenizer

# Bump when the bytes a given (template, request, budgets) renders to change; fimtune.json records it.
# 2: the blanks that end the prefix (spaces and tabs after its last newline) open the middle instead.
FORMAT_VERSION = 2
IGNORE_INDEX = -100

# Layout slots: the three sentinels and the two texts, in the order a family puts them before the middle.
PRE, SUF, MID, PREFIX_TEXT, SUFFIX_TEXT = "PRE", "SUF", "MID", "prefix", "suffix"
PSM: tuple[str, ...] = (PRE, PREFIX_TEXT, SUF, SUFFIX_TEXT, MID)
SPM: tuple[str, ...] = (PRE, SUF, SUFFIX_TEXT, MID, PREFIX_TEXT)  # CodeLlama's suffix-first order


class FimFormatError(ValueError):
    """A template, tokenizer, budget or request cannot be used; the message says what to change."""


@dataclass(frozen=True, slots=True)
class FimTemplate:
    """How one model family lays out a FIM example. Pure data: one instance per family in TEMPLATES.

    Tokens are written as they appear in the tokenizer's vocabulary. `token_text` gives the text form of a
    token where it differs (CodeLlama's SentencePiece pieces carry their leading space, "▁<SUF>" is " <SUF>").
    Cross-file context uses the family's own repo/file tokens when it has them; otherwise each file is headed by
    a path comment and the files lead the prefix text, as in a concatenated repository.
    """

    name: str
    family: str
    prefix: str
    suffix: str
    middle: str | None  # None: the model continues straight after the prefix (Codestral)
    end: str  # the token that ends the middle in training
    layout: tuple[str, ...] = PSM
    bos: str | None = None  # prepended to token ids; engines add it themselves to a text prompt
    repo_name: str | None = None
    repo_name_end: str = ""  # text after the repository name
    file_sep: str | None = None
    file_sep_closes: bool = False  # the separator ends a file (CodeGemma) instead of opening one
    path_line: bool = True  # with file_sep: "path\n" heads a file; otherwise a path comment does
    fim_path_in_prefix: bool = False  # the FIM file's path header goes after the prefix sentinel
    prefix_lead: str = ""  # text before the prefix (SentencePiece's dummy-prefix space)
    token_text: tuple[tuple[str, str], ...] = ()
    extra_stops: tuple[str, ...] = ()
    pad: str | None = None
    model_types: tuple[str, ...] = ()  # transformers config.model_type values of this family
    detected: bool = True  # False: a variant sharing another template's tokens, chosen by name only

    def text_of(self, token: str) -> str:
        return dict(self.token_text).get(token, token)

    def tokens(self) -> tuple[str, ...]:
        """Every token the template writes; each must be a single special token of the model's tokenizer."""
        found = (self.bos, self.prefix, self.suffix, self.middle, self.end, self.repo_name, self.file_sep, self.pad)
        return tuple(dict.fromkeys(t for t in found if t))

    @property
    def context_in_prefix(self) -> bool:
        """Families without a file separator get their context files as path-commented text before the prefix."""
        return self.file_sep is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _codellama(name: str, layout: tuple[str, ...], family: str, detected: bool = True) -> FimTemplate:
    return FimTemplate(
        name=name,
        family=family,
        prefix="▁<PRE>",
        suffix="▁<SUF>",
        middle="▁<MID>",
        end="▁<EOT>",
        layout=layout,
        bos="<s>",
        prefix_lead=" ",
        token_text=(("▁<PRE>", "<PRE>"), ("▁<SUF>", " <SUF>"), ("▁<MID>", " <MID>"), ("▁<EOT>", " <EOT>")),
        extra_stops=("<EOT>", "</s>"),
        model_types=("llama",),
        detected=detected,
    )


_FIMTUNE = FimTemplate(
    name="fimtune",
    family="fimtune's own small models",
    prefix="<|fim_prefix|>",
    suffix="<|fim_suffix|>",
    middle="<|fim_middle|>",
    end="<|endoftext|>",
    repo_name="<|repo_name|>",
    repo_name_end="\n",
    file_sep="<|file_sep|>",
    pad="<|pad|>",
)

TEMPLATES: dict[str, FimTemplate] = {
    t.name: t
    for t in (
        _FIMTUNE,
        replace(
            _FIMTUNE,
            name="fimtune-spm",
            family="fimtune's own small models, suffix first (pretraining's SPM order)",
            layout=SPM,
            detected=False,
        ),
        FimTemplate(
            name="starcoder",
            family="StarCoder / StarCoderBase / SantaCoder",
            prefix="<fim_prefix>",
            suffix="<fim_suffix>",
            middle="<fim_middle>",
            end="<|endoftext|>",
            model_types=("gpt_bigcode",),
        ),
        FimTemplate(
            name="starcoder2",
            family="StarCoder2",
            prefix="<fim_prefix>",
            suffix="<fim_suffix>",
            middle="<fim_middle>",
            end="<|endoftext|>",
            repo_name="<repo_name>",
            file_sep="<file_sep>",
            fim_path_in_prefix=True,
            model_types=("starcoder2",),
        ),
        FimTemplate(
            name="qwen2.5-coder",
            family="Qwen2.5-Coder",
            prefix="<|fim_prefix|>",
            suffix="<|fim_suffix|>",
            middle="<|fim_middle|>",
            end="<|endoftext|>",
            repo_name="<|repo_name|>",
            repo_name_end="\n",
            file_sep="<|file_sep|>",
            extra_stops=("<|fim_pad|>",),
            model_types=("qwen2",),
        ),
        FimTemplate(
            name="deepseek-coder",
            family="DeepSeek-Coder (1.x)",
            prefix="<｜fim▁begin｜>",
            suffix="<｜fim▁hole｜>",
            middle="<｜fim▁end｜>",
            end="<｜end▁of▁sentence｜>",
            bos="<｜begin▁of▁sentence｜>",
            model_types=("llama",),
        ),
        _codellama("codellama", PSM, "CodeLlama 7B/13B base, prefix-suffix-middle"),
        _codellama("codellama-spm", SPM, "CodeLlama 7B/13B base, suffix first", detected=False),
        FimTemplate(
            name="codegemma",
            family="CodeGemma (pretrained)",
            prefix="<|fim_prefix|>",
            suffix="<|fim_suffix|>",
            middle="<|fim_middle|>",
            end="<|file_separator|>",
            bos="<bos>",
            file_sep="<|file_separator|>",
            file_sep_closes=True,
            path_line=False,
            fim_path_in_prefix=True,
            extra_stops=("<eos>",),
            model_types=("gemma",),
        ),
        FimTemplate(
            name="codestral",
            family="Codestral 22B v0.1 (Mistral v3 tokenizer)",
            prefix="[PREFIX]",
            suffix="[SUFFIX]",
            middle=None,
            end="</s>",
            layout=(SUF, SUFFIX_TEXT, PRE, PREFIX_TEXT),
            bos="<s>",
            prefix_lead=" ",  # mistral-common encodes the prefix with SentencePiece's leading space
            model_types=("mistral",),
        ),
    )
}


def get_template(name: str) -> FimTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise FimFormatError(f"unknown FIM template {name!r}; known: {', '.join(TEMPLATES)}") from None


@dataclass(frozen=True, slots=True)
class Budgets:
    """Token budgets. The whole sequence (BOS, sentinels, context, prefix, suffix, middle, end) fits max_tokens.

    max_middle_tokens (+1 for the end token) is always reserved, so a prompt never depends on its middle.
    context_share of the rest goes to cross-file context (what it leaves unused goes back to the code);
    prefix_share of the code room goes to the prefix, the rest to the suffix, and either takes what the other
    does not need.
    """

    max_tokens: int = 2048
    context_share: float = 0.3
    prefix_share: float = 0.75
    max_middle_tokens: int = 256

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise FimFormatError(f"budgets.max_tokens: must be at least 16, not {self.max_tokens}")
        if not 0 <= self.max_middle_tokens < self.max_tokens:
            raise FimFormatError(
                f"budgets.max_middle_tokens: must be in [0, max_tokens={self.max_tokens}), not {self.max_middle_tokens}"
            )
        for key in ("context_share", "prefix_share"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise FimFormatError(f"budgets.{key}: must be in [0, 1], not {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budgets:
        known = {"max_tokens", "context_share", "prefix_share", "max_middle_tokens"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FimFormatError(f"unknown budget setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(
                max_tokens=int(data.get("max_tokens", 2048)),
                context_share=float(data.get("context_share", 0.3)),
                prefix_share=float(data.get("prefix_share", 0.75)),
                max_middle_tokens=int(data.get("max_middle_tokens", 256)),
            )
        except (TypeError, ValueError) as e:
            raise FimFormatError(f"budgets: {e}") from None


@dataclass(frozen=True, slots=True)
class FimRequest:
    """What to render: a file split at the cursor, plus cross-file context (most relevant first)."""

    repo: str
    path: str
    language: str
    prefix: str
    suffix: str
    context: tuple[Snippet, ...] = ()

    @classmethod
    def from_example(cls, ex: FimExample) -> FimRequest:
        return cls(ex.repo, ex.path, ex.language, ex.prefix, ex.suffix, tuple(ex.context))

    @classmethod
    def at_cursor(
        cls, repo: str, path: str, language: str, text: str, offset: int, context: Sequence[Snippet] = ()
    ) -> FimRequest:
        """A live request: the editor's text split at a UTF-8 byte offset (what the server calls)."""
        data = text.encode("utf-8")
        if not 0 <= offset <= len(data):
            raise FimFormatError(f"{path}: cursor byte offset {offset} is outside the file (0..{len(data)})")
        try:
            prefix, suffix = data[:offset].decode("utf-8"), data[offset:].decode("utf-8")
        except UnicodeDecodeError:
            raise FimFormatError(f"{path}: cursor byte offset {offset} falls inside a UTF-8 character") from None
        return cls(repo, path, language, prefix, suffix, tuple(context))


@dataclass(frozen=True, slots=True)
class Piece:
    """One run of the rendered sequence: a single token (`special`) or text, in the prompt or the target."""

    text: str  # for a special piece: the token as in the vocabulary
    special: bool = False
    target: bool = False


@dataclass(frozen=True, slots=True)
class Truncation:
    """What rendering left out to fit the budgets."""

    prefix_chars: int = 0  # characters dropped from the start of the prefix
    suffix_chars: int = 0  # characters dropped from the end of the suffix
    middle_chars: int = 0  # characters dropped from the end of the middle (then no end token is learned)
    context_dropped: int = 0  # snippets left out whole
    context_cut: bool = False  # the last kept snippet lost lines at its end


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered example. `prompt` is what an engine is sent; `target` is the middle and end token as text."""

    template: str
    pieces: tuple[Piece, ...]
    prompt: str
    target: str
    prompt_tokens: int  # including BOS when the template has one
    target_tokens: int
    exact: bool  # token counts come from the model's tokenizer, not the estimate
    context_kept: int
    truncation: Truncation = field(default_factory=Truncation)
    format_version: int = FORMAT_VERSION
    lead: str = ""  # the prefix's trailing blanks, moved to the start of the middle (see `lead_of`)


def stop_strings(template: FimTemplate) -> tuple[str, ...]:
    """Strings that end a completion in generated text: the end token, every sentinel, file/repo tokens."""
    tokens = [template.end, template.file_sep, template.repo_name, template.prefix, template.suffix, template.middle]
    out: list[str] = []
    for tok in tokens:
        if tok:
            out += [template.text_of(tok), template.text_of(tok).strip(), tok]
    out += template.extra_stops
    return tuple(dict.fromkeys(s for s in out if s))


# ---------------------------------------------------------------------------------------------------------------
# Truncation at line boundaries


def _window(n: int, budget: int, fits: Callable[[int], bool]) -> int:
    """Length of the first window (4 characters per budget token, doubling) that no longer fits, at most n.

    Only text near the cut is ever tokenized, so a long file costs a few encodes of a few budgets' worth.
    """
    w = max(budget, 1) * 4
    while w < n and fits(w):
        w *= 2
    return min(w, n)


def _smallest_fitting(candidates: list[int], fits: Callable[[int], bool]) -> int | None:
    """The first candidate (ascending) that fits, assuming fitting is monotone; verified, then stepped forward."""
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    while lo < len(candidates) and not fits(candidates[lo]):
        lo += 1
    return candidates[lo] if lo < len(candidates) else None


def cut_left(text: str, budget: int, cost: Callable[[str], int], within_line: bool = True) -> str:
    """The longest tail of `text` that starts a line and costs at most `budget` tokens.

    When not even the last line fits, `within_line` keeps the longest tail of that line that does.
    """
    n = len(text)
    w = _window(n, budget, lambda w: cost(text[n - w :]) <= budget)
    if w == n and cost(text) <= budget:
        return text
    lower = n - w  # the cut lies after this: cost(text[lower:]) > budget
    starts = [i + 1 for i in _newlines(text, max(lower - 1, 0), n - 1)]
    start = _smallest_fitting(starts, lambda i: cost(text[i:]) <= budget)
    if start is not None:
        return text[start:]
    if not within_line:
        return ""
    last = max(text.rfind("\n") + 1, lower)
    pos = _smallest_fitting(list(range(last, n + 1)), lambda i: cost(text[i:]) <= budget)
    return text[pos:] if pos is not None else ""


def cut_right(text: str, budget: int, cost: Callable[[str], int], within_line: bool = True) -> str:
    """The longest head of `text` that ends at a line end and costs at most `budget` tokens.

    When not even the first line fits, `within_line` keeps the longest head of that line that does.
    """
    n = len(text)
    upper = _window(n, budget, lambda w: cost(text[:w]) <= budget)
    if upper == n and cost(text) <= budget:
        return text
    ends = [i + 1 for i in _newlines(text, 0, upper - 1)]  # the cut lies before `upper`
    drop = _smallest_fitting([n - e for e in reversed(ends)], lambda d: cost(text[: n - d]) <= budget)
    if drop is not None:
        return text[: n - drop]
    if not within_line:
        return ""
    first = text.find("\n")
    first = min(upper, n if first == -1 else first + 1)
    drop = _smallest_fitting(list(range(n - first, n + 1)), lambda d: cost(text[: n - d]) <= budget)
    return text[: n - drop] if drop is not None else ""


def _newlines(text: str, start: int, stop: int) -> list[int]:
    """Positions of "\\n" in text[start:stop]."""
    out = []
    i = text.find("\n", start, stop)
    while i != -1:
        out.append(i)
        i = text.find("\n", i + 1, stop)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _comment_header(path: str, fallback_language: str) -> str:
    spec = LANGUAGES.get(language_for_path(path) or fallback_language)
    return f"{spec.line_comment if spec else '#'} {path}\n"


def _ensure_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _file_header(t: FimTemplate, path: str, language: str) -> str:
    return f"{path}\n" if (t.file_sep and t.path_line) else _comment_header(path, language)


@dataclass(slots=True)
class _Context:
    before: list[Piece]  # pieces ahead of the FIM block (families with file separators)
    head: str  # text that leads the prefix text
    tokens: int
    kept: int
    dropped: int
    cut: bool


def _fit_context(t: FimTemplate, req: FimRequest, budget: int, count: Callable[[str], int]) -> _Context:
    snippets = [s for s in req.context if s.text]
    empty = _Context([], "", 0, 0, len(req.context), False)
    if not snippets:
        return empty
    fim_header = _file_header(t, req.path, req.language)
    before: list[Piece] = []
    if t.repo_name:
        before += [Piece(t.repo_name, special=True), Piece(req.repo + t.repo_name_end)]
    overhead = sum(1 if p.special else count(p.text) for p in before)
    overhead += (1 if t.file_sep and not t.file_sep_closes else 0) + count(fim_header)
    specials_per_file = 1 if t.file_sep else 0
    remaining = budget - overhead
    if remaining <= 0:
        return empty
    blocks: list[tuple[str, str]] = []  # (header, text) most relevant first
    cut = False
    for s in snippets:
        header = _file_header(t, s.path, req.language)
        text = _ensure_newline(s.text)
        cost = specials_per_file + count(header + text)
        if cost <= remaining:
            blocks.append((header, text))
            remaining -= cost
            continue

        def with_header(x: str, h: str = header) -> int:
            return count(h + x)

        part = cut_right(text, remaining - specials_per_file, with_header, within_line=False)
        if part:
            blocks.append((header, part))
            remaining -= specials_per_file + count(header + part)
            cut = True
        break
    if not blocks:
        return empty
    used = budget - remaining
    dropped = len(req.context) - len(blocks)
    files = [h + x for h, x in reversed(blocks)]  # the most relevant file sits nearest the cursor
    if t.context_in_prefix:
        return _Context([], "".join(files) + fim_header, used, len(blocks), dropped, cut)
    assert t.file_sep is not None
    for f in files:
        sep = Piece(t.file_sep, special=True)
        before += [Piece(f), sep] if t.file_sep_closes else [sep, Piece(f)]
    if not t.file_sep_closes:
        before.append(Piece(t.file_sep, special=True))
    if t.fim_path_in_prefix:
        return _Context(before, fim_header, used, len(blocks), dropped, cut)
    before.append(Piece(fim_header))
    return _Context(before, "", used, len(blocks), dropped, cut)


def _sentinel(t: FimTemplate, slot: str) -> str:
    token = {PRE: t.prefix, SUF: t.suffix, MID: t.middle}[slot]
    if token is None:
        raise FimFormatError(f"template {t.name!r} has slot {slot} in its layout but no token for it")
    return token


def _counter(tokenizer: object | None) -> tuple[TokenCounter, bool]:
    if tokenizer is None:
        return ApproxCounter(), False
    if isinstance(tokenizer, ApproxCounter):
        return tokenizer, False
    return as_fim_tokenizer(tokenizer), True


def _memo_count(counter: TokenCounter) -> Callable[[str], int]:
    """Token counts of texts, each counted once: the budget search and the final tally meet some texts again."""
    counted: dict[str, int] = {"": 0}

    def count(text: str) -> int:
        n = counted.get(text)
        if n is None:
            n = counted[text] = counter.count(text)
        return n

    return count


def lead_of(prefix: str) -> str:
    """The blanks (spaces, tabs) that end a prefix after its last newline: rendering moves them from the end of
    the prefix to the start of the middle.

    BPE and SentencePiece vocabularies attach a space to the word after it (" name"), so a prefix that ends in
    "= " or in an indentation ends on a lone-space token that code text almost never has there, and a model
    shown it rarely continues well (measured with nano: after "self.name = " its top token was a sentinel,
    after "self.name =" it was " name" at 0.67). Training renders the same way (the middle starts with the
    blanks), and the stop rules drop them again from what a model writes (`postprocess(lead=...)`), since the
    editor already holds them.
    """
    end = len(prefix)
    while end and prefix[end - 1] in " \t":
        end -= 1
    return prefix[end:]


def render(
    template: FimTemplate | str,
    request: FimRequest | FimExample,
    middle: str | None = None,
    tokenizer: object | None = None,
    budgets: Budgets | None = None,
) -> Rendered:
    """Lay out a request for a model family within the budgets.

    `middle` (training, evaluation references) becomes the target followed by the end token; leave it None to
    render a prompt. `tokenizer` is the model's (a tokenizers.Tokenizer, a transformers tokenizer or an adapter
    from fimtune.tokenizer); without one, budgets use the ApproxCounter estimate.
    """
    t = get_template(template) if isinstance(template, str) else template
    req = FimRequest.from_example(request) if isinstance(request, FimExample) else request
    lead = lead_of(req.prefix)
    if lead:
        req = replace(req, prefix=req.prefix[: -len(lead)])
        middle = None if middle is None else lead + middle
    b = budgets or Budgets()
    counter, exact = _counter(tokenizer)
    count = _memo_count(counter)

    sentinels = [s for s in t.layout if s in (PRE, SUF, MID)]
    fixed = len(sentinels) + (1 if t.bos else 0)
    reserve = b.max_middle_tokens + 1
    limit = b.max_tokens - reserve - fixed
    if limit <= 0:
        raise FimFormatError(
            f"budgets.max_tokens={b.max_tokens} leaves no room for code after {fixed} template tokens and "
            f"max_middle_tokens={b.max_middle_tokens}; raise max_tokens or lower max_middle_tokens"
        )
    target = limit
    for _ in range(4):  # a tokenizer may merge across a join; shrink by the overflow and render again
        pieces, used, ctx, dropped_p, dropped_s = _layout(t, req, target, b, count)
        if used <= limit:
            break
        target -= used - limit
    else:
        raise FimFormatError(f"cannot fit {req.path} into {b.max_tokens} tokens with template {t.name!r}")

    target_pieces: list[Piece] = []
    middle_dropped = 0
    if middle is not None:
        kept = middle
        if count(middle) > b.max_middle_tokens:
            kept = cut_right(middle, b.max_middle_tokens, count)
            middle_dropped = len(middle) - len(kept)
        if kept:
            target_pieces.append(Piece(kept, target=True))
        if not middle_dropped:
            target_pieces.append(Piece(t.end, special=True, target=True))

    all_pieces = tuple(pieces + target_pieces)
    prompt = "".join(t.text_of(p.text) if p.special else p.text for p in pieces)
    target_text = "".join(t.text_of(p.text) if p.special else p.text for p in target_pieces)
    return Rendered(
        template=t.name,
        pieces=all_pieces,
        prompt=prompt,
        target=target_text,
        prompt_tokens=used + fixed,
        target_tokens=sum(1 if p.special else count(p.text) for p in target_pieces),
        exact=exact,
        context_kept=ctx.kept,
        truncation=Truncation(
            prefix_chars=dropped_p,
            suffix_chars=dropped_s,
            middle_chars=middle_dropped,
            context_dropped=ctx.dropped,
            context_cut=ctx.cut,
        ),
        lead=lead,
    )


def _layout(
    t: FimTemplate, req: FimRequest, limit: int, b: Budgets, count: Callable[[str], int]
) -> tuple[list[Piece], int, _Context, int, int]:
    """Pieces before the middle and the tokens they use (sentinels of the layout and BOS not included)."""
    ctx = _fit_context(t, req, math.floor(limit * b.context_share), count)
    before_tokens = sum(1 if p.special else count(p.text) for p in ctx.before)
    code_room = limit - ctx.tokens
    head = t.prefix_lead + ctx.head
    head_tokens = ctx.tokens - before_tokens if ctx.head else 0
    prefix_budget = math.floor(code_room * b.prefix_share) + head_tokens
    suffix_budget = code_room - math.floor(code_room * b.prefix_share)

    def need(text: str, budget: int) -> int:  # a text of over 16 characters per budget token never fits
        return count(text) if len(text) <= 16 * max(budget, 1) else budget + 1

    need_p, need_s = need(head + req.prefix, prefix_budget), need(req.suffix, suffix_budget)
    if need_p <= prefix_budget:
        suffix_budget += prefix_budget - need_p
        prefix_budget = need_p
    elif need_s <= suffix_budget:
        prefix_budget += suffix_budget - need_s
        suffix_budget = need_s
    prefix = cut_left(req.prefix, prefix_budget, lambda x: count(head + x))
    suffix = cut_right(req.suffix, suffix_budget, count)
    # SentencePiece adds no dummy-prefix space to empty text, so an empty prefix gets no lead either.
    texts = {PREFIX_TEXT: head + prefix if (ctx.head or prefix) else "", SUFFIX_TEXT: suffix}
    pieces = list(ctx.before)
    for slot in t.layout:
        if slot in texts:
            if texts[slot]:
                pieces.append(Piece(texts[slot]))
        else:
            pieces.append(Piece(_sentinel(t, slot), special=True))
    used = before_tokens + count(texts[PREFIX_TEXT]) + count(suffix)
    return pieces, used, ctx, len(req.prefix) - len(prefix), len(req.suffix) - len(suffix)


def encode(template: FimTemplate | str, rendered: Rendered, tokenizer: object) -> tuple[list[int], list[int]]:
    """Token ids of a rendered example and labels: IGNORE_INDEX everywhere but the middle and the end token.

    Each special piece is its single token id, each text piece `tokenizer.encode(text)`; BOS first when the
    template has one. The prompt part is exactly what `prompt_ids` gives an engine that takes token ids.
    """
    t = get_template(template) if isinstance(template, str) else template
    tok = as_fim_tokenizer(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    if t.bos:
        ids.append(_single_id(t, tok, t.bos))
        labels.append(IGNORE_INDEX)
    for p in rendered.pieces:
        part = [_single_id(t, tok, p.text)] if p.special else tok.encode(p.text)
        ids += part
        labels += part if p.target else [IGNORE_INDEX] * len(part)
    return ids, labels


def spells_control_token(rendered: Rendered) -> bool:
    """Whether a text piece of the prompt spells a token some template writes (`<|fim_middle|>`, `</s>`): a
    tokenizer fed the whole prompt as text would read it as that token, where fimtune encodes its characters."""
    spelled = _control_pattern()
    return any(not p.special and spelled.search(p.text) for p in rendered.pieces)


@functools.cache
def _control_pattern() -> re.Pattern[str]:
    return re.compile("|".join(re.escape(t) for t in sorted(CONTROL_TOKENS, key=len, reverse=True)))


def prompt_ids(template: FimTemplate | str, rendered: Rendered, tokenizer: object) -> list[int]:
    """The prompt as token ids (BOS included): what a local engine feeds the model."""
    ids, labels = encode(template, rendered, tokenizer)
    n_target = sum(1 for x in labels if x != IGNORE_INDEX)
    return ids[: len(ids) - n_target] if n_target else ids


def _single_id(t: FimTemplate, tok: FimTokenizer, token: str) -> int:
    tid = tok.token_to_id(token)
    if tid is None:
        check_tokenizer(t, tok)
        raise FimFormatError(f"token {token!r} of template {t.name!r} is missing from tokenizer {tok.name}")
    return tid


def check_tokenizer(template: FimTemplate | str, tokenizer: object) -> None:
    """Raise FimFormatError unless every token of the template is a single special token of the tokenizer."""
    t = get_template(template) if isinstance(template, str) else template
    tok = as_fim_tokenizer(tokenizer)
    problems: list[str] = []
    for token in t.tokens():
        tid = tok.token_to_id(token)
        if tid is None:
            problems.append(f"{token!r} is not in its vocabulary")
        elif not tok.is_special(token):
            problems.append(f"{token!r} is not a single special token (its text encodes to {tok.encode(token)})")
    if problems:
        raise FimFormatError(
            f"tokenizer {tok.name} does not fit FIM template {t.name!r} ({t.family}): {'; '.join(problems)}. "
            f"Pick the template of this model with --template NAME (known: {', '.join(TEMPLATES)}) or use a base "
            "model pretrained with fill-in-the-middle; fimtune never adds tokens to a pretrained model."
        )


def detect_template(tokenizer: object, model_type: str | None = None) -> str:
    """The template name for a tokenizer: the one fimtune recorded with it, else the family whose tokens it has.

    Among families whose tokens all fit, one matching `model_type` (transformers config.model_type) wins, then
    the one using the most tokens (StarCoder2 over StarCoder); a tie raises.
    """
    tok = as_fim_tokenizer(tokenizer)
    recorded = tok.recorded_template()
    if recorded:
        return get_template(recorded).name

    def fits(t: FimTemplate) -> bool:
        return all(tok.token_to_id(x) is not None and tok.is_special(x) for x in t.tokens())

    # SPM variants share their tokens with a PSM template: PSM is the default, an SPM variant is recorded with
    # the model or picked with --template.
    candidates = [t for t in TEMPLATES.values() if t.detected and fits(t)]
    if model_type:
        typed = [t for t in candidates if model_type in t.model_types]
        candidates = typed or candidates
    if not candidates:
        raise FimFormatError(
            f"tokenizer {tok.name} has the FIM tokens of none of the known templates ({', '.join(TEMPLATES)}); "
            "pass --template NAME, or use a base model pretrained with fill-in-the-middle"
        )
    best = max(len(t.tokens()) for t in candidates)
    top = [t.name for t in candidates if len(t.tokens()) == best]
    if len(top) > 1:
        raise FimFormatError(
            f"tokenizer {tok.name} fits several FIM templates ({', '.join(top)}); pass --template NAME"
        )
    return top[0]
