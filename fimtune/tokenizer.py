"""Tokenizers as the FIM format sees them: adapters, an approximate counter, and fimtune's byte-level tokenizer."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

if TYPE_CHECKING:
    from fimtune.fim_format import FimTemplate

# Key under which save_tokenizer records the FIM template in tokenizer_config.json (detect_template reads it).
TEMPLATE_KEY = "fimtune_template"


@runtime_checkable
class TokenCounter(Protocol):
    """Anything that can say how many tokens a piece of text takes."""

    def count(self, text: str) -> int: ...


@runtime_checkable
class FimTokenizer(TokenCounter, Protocol):
    """What the FIM format needs from a real tokenizer.

    `encode` never adds BOS/EOS or other template tokens and encodes text as a continuation: a SentencePiece
    "dummy prefix" space is not added in front of it (the template says where a space belongs). A template's token
    or a special token spelled in the text is encoded as its characters, not as the token.
    """

    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def is_special(self, token: str) -> bool:
        """True when `token` is an added (special) token of the vocabulary and its text encodes to it alone."""
        ...

    def recorded_template(self) -> str | None:
        """The FIM template name saved with the tokenizer by fimtune, if any."""
        ...


class ApproxCounter:
    """Deterministic token estimate used when no tokenizer is given: ceil(UTF-8 bytes / 3.5).

    3.5 bytes per token is typical of code BPE vocabularies; only `fimtune render` without a model uses it.
    Training, evaluation and serving always pass the model's own tokenizer.
    """

    name = "approximate (UTF-8 bytes / 3.5)"

    def count(self, text: str) -> int:
        return (2 * len(text.encode("utf-8")) + 6) // 7


def _text_copy(tok: tokenizers.Tokenizer, control: frozenset[str]) -> tokenizers.Tokenizer:
    """A copy of `tok` for text: no SentencePiece dummy-prefix space in front, and the added tokens in `control`
    marked special, so that with `encode_special_tokens` their text in code is encoded as the characters it is."""
    data = json.loads(tok.to_str())
    for added in data.get("added_tokens") or ():
        if isinstance(added, dict) and added.get("content") in control:
            added["special"] = True
    changed = False

    def fix(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "Metaspace":
                if node.get("prepend_scheme", "never") != "never":
                    node["prepend_scheme"] = "never"
                    changed = True
                if node.get("add_prefix_space"):
                    node["add_prefix_space"] = False
                    changed = True
            if kind == "Sequence":
                for key in ("normalizers", "pretokenizers"):
                    if key in node:
                        kept = [n for n in node[key] if not (isinstance(n, dict) and n.get("type") == "Prepend")]
                        changed = changed or len(kept) != len(node[key])
                        node[key] = [fix(n) for n in kept]
                return node
            if kind == "Prepend":
                changed = True
                return None
            return {k: fix(v) for k, v in node.items()}
        return node

    data["normalizer"] = fix(data.get("normalizer"))
    data["pre_tokenizer"] = fix(data.get("pre_tokenizer"))
    return tokenizers.Tokenizer.from_str(json.dumps(data))


# Every token a FIM template of fimtune writes (sentinels, end and BOS tokens of every family): text that spells
# one is encoded as its characters. Data here, below the templates that use it; tests/test_fim_format.py checks
# that it is exactly the tokens of fim_format.TEMPLATES.
CONTROL_TOKENS = frozenset(
    {
        "</s>",
        "<bos>",
        "<file_sep>",
        "<fim_middle>",
        "<fim_prefix>",
        "<fim_suffix>",
        "<repo_name>",
        "<s>",
        "<|endoftext|>",
        "<|file_separator|>",
        "<|file_sep|>",
        "<|fim_middle|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|pad|>",
        "<|repo_name|>",
        "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
        "<\uff5cend\u2581of\u2581sentence\uff5c>",
        "<\uff5cfim\u2581begin\uff5c>",
        "<\uff5cfim\u2581end\uff5c>",
        "<\uff5cfim\u2581hole\uff5c>",
        "[PREFIX]",
        "[SUFFIX]",
        "\u2581<EOT>",
        "\u2581<MID>",
        "\u2581<PRE>",
        "\u2581<SUF>",
    }
)


class TokenizersAdapter:
    """A `tokenizers.Tokenizer` (or the backend of a transformers fast tokenizer) as a FimTokenizer."""

    def __init__(self, tok: tokenizers.Tokenizer, name: str = "tokenizer", template: str | None = None) -> None:
        self.name = name
        added = tok.get_added_tokens_decoder().values()
        self._tok = _text_copy(tok, CONTROL_TOKENS)
        self._template = template
        self._added = {t.content for t in added}
        # Which added tokens text would turn into (what a template token must be), read before text is text.
        self._atomic = {
            t for t in self._added if self._tok.encode(t, add_special_tokens=False).ids == [self._tok.token_to_id(t)]
        }
        # Text is text: a template's token or another special token written in code (a tokenizer's source, a chat
        # template, fimtune's own fim_format.py) is encoded as its characters, never as the token it spells, so
        # training, eval and serving see what the file holds and no stray end-of-middle token.
        self._tok.encode_special_tokens = True

    def count(self, text: str) -> int:
        return len(self.encode(text)) if text else 0

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def is_special(self, token: str) -> bool:
        return token in self._atomic

    def recorded_template(self) -> str | None:
        return self._template


class SlowTokenizerAdapter:
    """A transformers tokenizer without a `tokenizers` backend (rare) as a FimTokenizer."""

    def __init__(self, tok: Any, name: str, template: str | None) -> None:
        self.name = name
        self._tok = tok
        self._template = template

    def count(self, text: str) -> int:
        return len(self.encode(text)) if text else 0

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def token_to_id(self, token: str) -> int | None:
        tid = self._tok.convert_tokens_to_ids(token)
        unk = getattr(self._tok, "unk_token_id", None)
        return None if tid is None or (tid == unk and token != getattr(self._tok, "unk_token", None)) else int(tid)

    def is_special(self, token: str) -> bool:
        tid = self.token_to_id(token)
        added = set(getattr(self._tok, "get_added_vocab", dict)())
        return tid is not None and token in added and self.encode(token) == [tid]

    def recorded_template(self) -> str | None:
        return self._template


def as_fim_tokenizer(tok: object) -> FimTokenizer:
    """Wrap a `tokenizers.Tokenizer` or a transformers tokenizer; adapters pass through unchanged.

    Wrapping copies the tokenizer (its text copy: see TokenizersAdapter), so adapt once and reuse the result.
    """
    if isinstance(tok, TokenizersAdapter | SlowTokenizerAdapter):
        return tok
    if isinstance(tok, tokenizers.Tokenizer):
        return TokenizersAdapter(tok)
    name = str(getattr(tok, "name_or_path", "") or type(tok).__name__)
    init_kwargs = getattr(tok, "init_kwargs", None)
    template = init_kwargs.get(TEMPLATE_KEY) if isinstance(init_kwargs, dict) else None
    backend = getattr(tok, "backend_tokenizer", None)
    if isinstance(backend, tokenizers.Tokenizer):
        return TokenizersAdapter(backend, name=name, template=template)
    if hasattr(tok, "encode") and hasattr(tok, "convert_tokens_to_ids"):
        return SlowTokenizerAdapter(tok, name=name, template=template)
    raise TypeError(
        f"cannot use {type(tok).__name__} as a tokenizer: pass a tokenizers.Tokenizer or a transformers tokenizer"
    )


def read_tokenizer_folder(folder: str | Path) -> FimTokenizer | None:
    """The tokenizer of a model or run folder from its tokenizer.json, read with `tokenizers` alone (no torch,
    no transformers), exactly as the transformers fast tokenizer training used counts; None when there is none.
    The template fimtune recorded in tokenizer_config.json comes with it."""
    path = Path(folder).expanduser()
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    template = None
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = config.get(TEMPLATE_KEY) if isinstance(config, dict) else None
    except (OSError, ValueError):
        pass
    return TokenizersAdapter(tokenizers.Tokenizer.from_file(str(file)), name=str(path), template=template)


def build_byte_tokenizer(special_tokens: Iterable[str]) -> tokenizers.Tokenizer:
    """Byte-level BPE with no merges: ids 0-255 are the bytes, then each special token in the order given."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    seen: list[str] = []
    for t in special_tokens:
        if t not in seen:
            seen.append(t)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in seen])
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars], strict=True))


def byte_tokenizer_for(template: FimTemplate, extra: Iterable[str] = ()) -> tokenizers.Tokenizer:
    """A byte-level tokenizer carrying every token a template uses (tests, and fimtune's own small models)."""
    return build_byte_tokenizer([*template.tokens(), *extra])


def save_tokenizer(
    tok: tokenizers.Tokenizer,
    folder: str | Path,
    template: FimTemplate,
    model_max_length: int = 2048,
) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json so that
    `transformers.AutoTokenizer.from_pretrained(folder)` loads a fast tokenizer; records the template name."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    specials: dict[str, str] = {"eos_token": template.end}
    if template.bos:
        specials["bos_token"] = template.bos
    if template.pad:
        specials["pad_token"] = template.pad
    others = [t for t in template.tokens() if t not in specials.values()]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        **specials,
        "additional_special_tokens": others,
        TEMPLATE_KEY: template.name,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")
    special_map: dict[str, Any] = {**specials, "additional_special_tokens": others}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return out
