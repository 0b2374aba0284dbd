"""`fimtune pretrain`: licences, the FIM transform, the tokenizer, presets, the CLI end to end, `--base-model pico`."""

from __future__ import annotations

import email
import json
import random
from pathlib import Path

import pytest

from fimtune.fim_format import TEMPLATES, Budgets, FimRequest, check_tokenizer, detect_template, render
from fimtune.pretrain.data import (
    COPYLEFT,
    PERMISSIVE,
    UNKNOWN,
    Document,
    classify_metadata,
    classify_package_json,
    collect,
    spdx_verdict,
)
from fimtune.pretrain.fim import (
    FimSettings,
    build_sequences,
    chunk_text,
    context_pieces,
    cut_points,
    encode_all,
    fim_pieces,
    pack,
    serving_template,
)
from fimtune.pretrain.presets import PRESETS
from fimtune.pretrain.tokenizer import train_bpe
from fimtune.records import Snippet
from fimtune.tokenizer import TokenizersAdapter, save_tokenizer

T = TEMPLATES["fimtune"]
MIT_TEXT = "Copyright (c) 2020 X\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"
GPL_TEXT = "                    GNU GENERAL PUBLIC LICENSE\n                       Version 3, 29 June 2007\n"


def meta(**fields: str | list[str]) -> email.message.Message:
    lines = ["Metadata-Version: 2.4", "Name: x", "Version: 1.0"]
    for key, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key.replace('_', '-')}: {v}")
    return email.message_from_string("\n".join(lines) + "\n\n")


# ---------------------------------------------------------------------------------------------------------------
# Licences


@pytest.mark.parametrize(
    ("expression", "verdict"),
    [
        ("MIT", PERMISSIVE),
        ("Apache-2.0 OR GPL-3.0-only", PERMISSIVE),
        ("MIT AND GPL-2.0-or-later", COPYLEFT),
        ("MIT AND (Apache-2.0 OR BSD-2-Clause)", PERMISSIVE),
        ("MPL-2.0", COPYLEFT),
        ("LGPL-2.1-only WITH Classpath-exception-2.0", COPYLEFT),
        ("LicenseRef-Proprietary", UNKNOWN),
        ("MIT AND LicenseRef-Custom", UNKNOWN),
        ("MIT OR (", UNKNOWN),
    ],
)
def test_spdx_expressions(expression: str, verdict: str) -> None:
    assert spdx_verdict(expression).verdict == verdict


def test_licence_from_metadata_sources_in_order() -> None:
    # PEP 639 expression decides even when the classifier says otherwise.
    m = meta(
        License_Expression="BSD-3-Clause", Classifier="License :: OSI Approved :: GNU General Public License (GPL)"
    )
    lic = classify_metadata(m)
    assert (lic.verdict, lic.ids, lic.source) == (PERMISSIVE, ("BSD-3-Clause",), "License-Expression")
    lic = classify_metadata(
        meta(Classifier=["License :: OSI Approved :: MIT License", "Programming Language :: Python"])
    )
    assert (lic.verdict, lic.source) == (PERMISSIVE, "classifier")
    both = ["License :: OSI Approved :: BSD License", "License :: OSI Approved :: Apache Software License"]
    assert classify_metadata(meta(Classifier=both)).verdict == PERMISSIVE
    mixed = [
        "License :: OSI Approved :: MIT License",
        "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)",
    ]
    assert classify_metadata(meta(Classifier=mixed)).verdict == COPYLEFT
    assert classify_metadata(meta(License="GPLv3+")).verdict == COPYLEFT
    assert classify_metadata(meta(License="MPL-2.0 AND MIT")).verdict == COPYLEFT
    lic = classify_metadata(meta(License="BSD 3-Clause License"))
    assert (lic.verdict, lic.source) == (PERMISSIVE, "License")
    # A License field holding the whole text: the first licence text in it decides.
    assert classify_metadata(meta(License=MIT_TEXT.replace("\n", "\n        "))).verdict == PERMISSIVE
    # Nothing in the metadata: the licence files.
    assert classify_metadata(meta(), [MIT_TEXT]).source == "licence file"
    assert classify_metadata(meta(), [GPL_TEXT]).verdict == COPYLEFT
    assert classify_metadata(meta(License="UNKNOWN")).verdict == UNKNOWN
    assert classify_metadata(meta(Classifier="License :: Other/Proprietary License")).verdict == UNKNOWN


def test_licence_from_package_json() -> None:
    assert classify_package_json({"license": "MIT"}).verdict == PERMISSIVE
    assert classify_package_json({"license": "(MIT OR Apache-2.0)"}).verdict == PERMISSIVE
    assert classify_package_json({"license": {"type": "BSD-3-Clause"}}).verdict == PERMISSIVE
    assert classify_package_json({"licenses": [{"type": "GPL-2.0"}, {"type": "MIT"}]}).verdict == PERMISSIVE
    assert classify_package_json({"license": "GPL-3.0"}).verdict == COPYLEFT
    assert classify_package_json({"license": "SEE LICENSE IN LICENSE.md"}).verdict == UNKNOWN
    assert classify_package_json({}).verdict == UNKNOWN


def _module(name: str, n: int) -> str:
    out = [f'"""Module {name}: helpers."""\n\n', "import math\n\n"]
    for i in range(n):
        out.append(
            f"def {name}_{i}(values, scale={i}):\n"
            f'    """Scale the values of {name} by {i}."""\n'
            f"    total = 0\n"
            f"    for v in values:\n"
            f"        total += math.sqrt(abs(v)) * scale\n"
            f"    return total\n\n\n"
        )
    return "".join(out)


def _dist(site: Path, name: str, files: dict[str, str], **fields: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    head = [f"Metadata-Version: 2.4\nName: {name}\nVersion: 1.0\n"] + [
        f"{k.replace('_', '-')}: {v}\n" for k, v in fields.items() if k != "LICENSE"
    ]
    (info / "METADATA").write_text("".join(head) + "\n")
    record = [f"{name}-1.0.dist-info/METADATA,,"]
    if "LICENSE" in fields:
        (info / "LICENSE").write_text(fields["LICENSE"])
        record.append(f"{name}-1.0.dist-info/LICENSE,,")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
        record.append(f"{rel},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-made site-packages: permissive, copyleft and unlicensed distributions."""
    root = tmp_path_factory.mktemp("site-packages")
    _dist(root, "alpha", {f"alpha/m{i}.py": _module(f"alpha{i}", 12) for i in range(4)}, License_Expression="MIT")
    _dist(
        root,
        "beta",
        {f"beta/b{i}.py": _module(f"beta{i}", 10) for i in range(3)},
        Classifier="License :: OSI Approved :: BSD License",
    )
    _dist(root, "eps", {"eps/e.py": _module("eps", 12)}, LICENSE=MIT_TEXT)
    _dist(root, "gamma", {"gamma/g.py": _module("gamma", 5)}, License="GPLv3")
    _dist(root, "delta", {"delta/d.py": _module("delta", 5)})
    # A file carrying a sentinel token string, a copy of a held-out file, and a file of its own.
    files = {
        "zeta/tok.py": 'END = "<|endoftext|>"\n' + _module("zeta", 3),
        "zeta/copy.py": _module("beta0", 10),
        "zeta/own.py": _module("zeta", 4),
    }
    _dist(root, "zeta", files, License="Apache 2.0")
    return root


def test_collect_keeps_permissive_and_holds_out_whole_packages(site: Path) -> None:
    got = collect([str(site)], [], holdout=["beta"], holdout_count=0, max_bytes=0, seed=0, forbidden=T.tokens())
    status = {p.name: (p.status, p.reason) for p in got.packages}
    assert status["gamma"] == ("skipped", "copyleft licence")
    assert status["delta"] == ("skipped", "unknown licence")
    assert status["beta"][0] == "heldout" and status["alpha"][0] == "train" and status["eps"][0] == "train"
    assert {d.package for d in got.heldout} == {"beta"} and "beta" not in {d.package for d in got.train}
    assert got.files_dropped["contains_sentinel_token"] == 1 and got.files_dropped["exact_duplicate"] == 1
    manifest = got.manifest([str(site)], [], {})
    assert manifest["skipped_by_reason"] == {"copyleft licence": 1, "unknown licence": 1}
    assert manifest["totals"]["files_train"] == len(got.train) == 6 and manifest["heldout"] == ["beta"]
    assert "zeta/copy.py" not in {d.path for d in got.train}  # held-out text never reaches training
    eps = next(p for p in manifest["packages"] if p["name"] == "eps")
    assert eps["licence"] == {"verdict": PERMISSIVE, "ids": ["MIT"], "source": "licence file"}
    assert eps["files_kept"] == 1 and eps["bytes_kept"] == len(_module("eps", 12))
    # A seeded choice is the same every time; a cap leaves packages unused with a reason.
    a = collect([str(site)], [], holdout=[], holdout_count=1, max_bytes=8000, seed=5)
    b = collect([str(site)], [], holdout=[], holdout_count=1, max_bytes=8000, seed=5)
    assert [d.path for d in a.heldout] == [d.path for d in b.heldout] and a.heldout
    assert any(p.reason == "larger than the room left under the data cap" for p in a.packages)


def test_package_cap_samples_whole_files_of_large_packages(site: Path) -> None:
    whole = collect([str(site)], [], holdout=["beta"], holdout_count=0, max_bytes=0, seed=0)
    alpha_bytes = sum(len(d.text.encode()) for d in whole.train if d.package == "alpha")
    cap = alpha_bytes // 2
    got = collect([str(site)], [], holdout=["beta"], holdout_count=0, max_bytes=0, seed=0, max_package_bytes=cap)
    alpha = [d for d in got.train if d.package == "alpha"]
    assert 0 < sum(len(d.text.encode()) for d in alpha) <= cap and len(alpha) < 4
    assert {d.text for d in alpha} <= {d.text for d in whole.train}  # whole files, never cut
    pkg = next(p for p in got.packages if p.name == "alpha")
    assert pkg.status == "train" and pkg.reason == f"sampled {len(alpha)} of 4 files (package cap)"
    # Packages under the cap are whole; the same seed samples the same files.
    assert [d.path for d in got.train if d.package == "eps"] == [d.path for d in whole.train if d.package == "eps"]
    again = collect([str(site)], [], holdout=["beta"], holdout_count=0, max_bytes=0, seed=0, max_package_bytes=cap)
    assert [d.path for d in again.train] == [d.path for d in got.train]


def test_node_modules_packages(tmp_path: Path) -> None:
    nm = tmp_path / "node_modules"
    for name, lic in (("left-pad", "MIT"), ("@scope/tool", "Apache-2.0"), ("gpl-thing", "GPL-3.0")):
        d = nm / name
        (d / "lib").mkdir(parents=True)
        (d / "package.json").write_text(json.dumps({"name": name, "version": "1.0.0", "license": lic}))
        fn = name.replace("@", "").replace("/", "_").replace("-", "_")
        (d / "lib" / "index.ts").write_text(f"export function {fn}(s: string): string {{\n  return s;\n}}\n" * 3)
        (d / "lib" / "index.min.js").write_text("function a(){return 1}")
    got = collect([], [str(nm)], holdout=["left-pad"], holdout_count=0, max_bytes=0, seed=0)
    assert {d.package for d in got.train} == {"@scope/tool"} and got.train[0].language == "typescript"
    assert {p.name: p.status for p in got.packages}["gpl-thing"] == "skipped"
    assert all(not d.path.endswith(".min.js") for d in got.train + got.heldout)


# ---------------------------------------------------------------------------------------------------------------
# FIM transform

TEXT = "import os\n\ndef main(argv):\n    path = os.path.join(argv[0], 'x')\n    return path\n"


def _split(mode: str, pieces: list) -> tuple[str, str, str]:
    """(prefix, middle, suffix) back from a PSM/SPM piece list, checking where the sentinels are."""
    kinds = [(p.text if p.special else "T") for p in pieces]
    texts = iter(p.text for p in pieces if not p.special)
    if mode == "psm":
        assert [k for k in kinds if k != "T"] == [T.prefix, T.suffix, T.middle, T.end]
        assert kinds[0] == T.prefix and kinds[-1] == T.end
        i_suf, i_mid = kinds.index(T.suffix), kinds.index(T.middle)
        p = next(texts) if i_suf == 2 else ""
        s = next(texts) if i_mid - i_suf == 2 else ""
        m = next(texts) if len(kinds) - i_mid == 3 else ""
        return p, m, s
    assert kinds[:2] == [T.prefix, T.suffix] and kinds[-1] == T.end
    i_mid = kinds.index(T.middle)
    s = next(texts) if i_mid == 3 else ""
    after = [p.text for p in pieces[i_mid + 1 : -1]]
    return "".join(after[:-1]) if len(after) == 2 else "", after[-1] if after else "", s


@pytest.mark.parametrize("seed", range(40))
def test_fim_pieces_keep_the_text_exactly_once(seed: int) -> None:
    settings = FimSettings(rate=0.8, spm_share=0.5)
    mode, pieces = fim_pieces(TEXT, T, settings, random.Random(seed))
    again = fim_pieces(TEXT, T, settings, random.Random(seed))
    assert (mode, pieces) == again
    assert all(p.text for p in pieces) and not any(p.target for p in pieces)
    if mode == "plain":
        assert [(p.text, p.special) for p in pieces] == [(TEXT, False), (T.end, True)]
        return
    prefix, middle, suffix = _split(mode, pieces)
    assert prefix + middle + suffix == TEXT
    if mode == "spm":  # prefix and middle are one contiguous text after the middle sentinel
        assert "".join(
            p.text for p in pieces[pieces.index(next(p for p in pieces if p.text == T.middle)) + 1 : -1]
        ) == (prefix + middle)


def test_fim_rate_and_spm_share_choose_the_modes() -> None:
    rng = random.Random(0)
    assert {fim_pieces(TEXT, T, FimSettings(rate=0.0), rng)[0] for _ in range(50)} == {"plain"}
    assert {fim_pieces(TEXT, T, FimSettings(rate=1.0, spm_share=0.0), rng)[0] for _ in range(50)} == {"psm"}
    assert {fim_pieces(TEXT, T, FimSettings(rate=1.0, spm_share=1.0), rng)[0] for _ in range(50)} == {"spm"}
    modes = [fim_pieces(TEXT, T, FimSettings(spm_share=0.5), rng)[0] for _ in range(2000)]
    assert 0.05 < modes.count("plain") / 2000 < 0.15 and abs(modes.count("psm") - modes.count("spm")) < 200
    defaults = {fim_pieces(TEXT, T, FimSettings(), rng)[0] for _ in range(200)}
    assert defaults == {"plain", "spm"}  # by default every FIM document is in the order nano is served in


def test_cut_kinds() -> None:
    starts = {0} | {i + 1 for i, c in enumerate(TEXT) if c == "\n"}
    for seed in range(100):
        a, b = cut_points(TEXT, "line", random.Random(seed))
        assert a < b and a in starts and b in starts | {len(TEXT)}
        a, b = cut_points(TEXT, "line_rest", random.Random(seed))
        line_start = TEXT.rfind("\n", 0, a) + 1
        line_end = TEXT.find("\n", a)
        assert b == line_start + len(TEXT[line_start:line_end].rstrip())  # to the end of the line's content
        assert a == b or line_start + len(TEXT[line_start:line_end]) - len(TEXT[line_start:line_end].lstrip()) < a
        a, b = cut_points(TEXT, "char", random.Random(seed))
        assert 0 <= a <= b <= len(TEXT)


# A chunk as pretraining cuts them: it starts inside a function, and has non-ASCII text in it.
CHUNK = (
    "        total += price  # prix unitaire\n"
    "    return total\n\n\n"
    "def greet(name: str) -> str:\n"
    '    message = f"Grüß dich, {name}!"\n'
    "    if not name:\n"
    '        raise ValueError("name is empty: ¿quién?")\n'
    "    return message.upper()\n"
)


def test_the_syntax_cut_draws_the_middles_build_corpus_draws() -> None:
    from fimtune.corpus.spans import choose_spans
    from fimtune.pretrain.fim import SYNTAX_SPANS
    from fimtune.records import SourceFile

    data = CHUNK.encode()
    kinds, lengths = set(), []
    for seed in range(200):
        a, b = cut_points(CHUNK, "syntax", random.Random(seed), "python")
        (span,) = choose_spans(SourceFile("", "", "python", CHUNK), SYNTAX_SPANS, random.Random(seed)).spans
        # character offsets of the corpus's byte span, even after the non-ASCII text
        assert (CHUNK[:a], CHUNK[a:b]) == (data[: span.start].decode(), data[span.start : span.end].decode())
        kinds.add(span.kind)
        lengths.append(b - a)
    assert {"call_args", "condition", "statement", "assignment_rhs"} <= kinds  # from the part that parses
    chars = [b - a for a, b in (cut_points(CHUNK, "char", random.Random(s)) for s in range(200))]
    assert sorted(lengths)[100] < sorted(chars)[100] / 2  # short middles, as serving asks for


def test_the_syntax_cut_without_a_language_is_a_line_rest_cut() -> None:
    for seed in range(20):
        assert cut_points(CHUNK, "syntax", random.Random(seed)) == cut_points(CHUNK, "line_rest", random.Random(seed))


def test_chunk_text_cuts_at_line_ends() -> None:
    text = "".join(f"line {i} " + "x" * (i % 7) + "\n" for i in range(200)) + "y" * 500
    chunks = chunk_text(text, 300)
    assert "".join(chunks) == text and all(len(c) <= 300 for c in chunks)
    assert all(c.endswith("\n") for c in chunks[:-3])


@pytest.mark.parametrize("spm_share", [0.0, 1.0])
def test_pretraining_examples_are_what_render_emits_for_the_template_served(spm_share: float) -> None:
    """Pretraining sequences, repo-level context included, are exactly the pieces fim_format renders for the
    template the model is served with (`fimtune` for PSM, `fimtune-spm` for SPM)."""
    ctx = (Snippet("pkg/a.py", "def a():\n    return 1\n", "similar"), Snippet("pkg/b.py", "B = 2", "definition"))
    settings = FimSettings(rate=1.0, spm_share=spm_share)
    served = serving_template(settings)
    assert served.name == ("fimtune-spm" if spm_share else "fimtune")
    lead = context_pieces(served, "pkg", "pkg/main.py", ctx)
    for seed in range(20):
        for context in (ctx, ()):
            mode, pieces = fim_pieces(TEXT, served, settings, random.Random(seed), lead if context else ())
            assert mode == ("spm" if spm_share else "psm")
            prefix, middle, suffix = _split(mode, pieces[len(lead) if context else 0 :])
            req = FimRequest("pkg", "pkg/main.py", "python", prefix, suffix, context)
            budgets = Budgets(max_tokens=100_000, context_share=0.5, max_middle_tokens=5000)
            rendered = render(served, req, middle, None, budgets)
            assert [(p.text, p.special) for p in rendered.pieces] == [(p.text, p.special) for p in pieces]


@pytest.fixture(scope="module")
def bpe() -> object:
    texts = [_module(f"m{i}", 8) for i in range(6)] + [TEXT * 20]
    return train_bpe(texts, 400, T)


def test_tokenizer_round_trips_and_has_single_sentinels(bpe: object, tmp_path: Path) -> None:
    import tokenizers

    assert isinstance(bpe, tokenizers.Tokenizer) and 256 + len(T.tokens()) < bpe.get_vocab_size() <= 400
    check_tokenizer(T, bpe)  # every template token is one special token
    text = "def main(argv):\n    return 'é ✓ \t 漢字'\n"
    for s in (text, text + T.middle + "x" + T.end):
        ids = bpe.encode(s, add_special_tokens=False).ids
        assert bpe.decode(ids, skip_special_tokens=False) == s
    adapter = TokenizersAdapter(bpe)
    assert all(adapter.is_special(t) and adapter.encode(t) != [adapter.token_to_id(t)] for t in T.tokens())
    assert len(bpe.encode(_module("m1", 8)).ids) < len(_module("m1", 8).encode()) / 2  # merges were learned
    assert train_bpe([_module(f"m{i}", 8) for i in range(6)] + [TEXT * 20], 400, T).to_str() == bpe.to_str()
    save_tokenizer(bpe, tmp_path, T)  # type: ignore[arg-type]
    from fimtune.models import load_tokenizer

    assert detect_template(load_tokenizer(tmp_path)) == "fimtune"


def test_sequences_encode_piece_by_piece_and_pack(bpe: object) -> None:
    import tokenizers

    assert isinstance(bpe, tokenizers.Tokenizer)
    docs = [Document("pkg", f"pkg/m{i}.py", "python", _module(f"m{i}", 6)) for i in range(3)]
    settings = FimSettings(context_rate=0.5)
    seqs = build_sequences(docs, T, bpe, settings, seed=3, chunk_chars=400)
    assert seqs.ids == build_sequences(docs, T, bpe, settings, seed=3, chunk_chars=400).ids
    assert seqs.ids != build_sequences(docs, T, bpe, settings, seed=4, chunk_chars=400).ids
    assert sum(seqs.modes.values()) == seqs.chunks == sum(len(chunk_text(d.text, 400)) for d in docs)
    assert seqs.with_context > 0
    end = bpe.token_to_id(T.end)
    assert all(s[-1] == end for s in seqs.ids) and all(s.count(end) == 1 for s in seqs.ids)
    _, pieces = fim_pieces("a = 1\n", T, FimSettings(rate=1.0, spm_share=0.0), random.Random(0))
    (ids,) = encode_all([pieces], bpe)
    assert [i for i in ids if i < len(T.tokens())] == [
        bpe.token_to_id(t) for t in (T.prefix, T.suffix, T.middle, T.end)
    ]
    rows = pack(seqs.ids, 64, seed=0)
    total = sum(len(s) for s in seqs.ids)
    assert rows.shape == (total // 64, 64) and rows.dtype.name == "int32"
    from collections import Counter

    packed, given = Counter(rows.ravel().tolist()), Counter(t for s in seqs.ids for t in s)
    assert all(given[t] >= n for t, n in packed.items()) and total - rows.size < 64  # only the tail is dropped
    assert rows.ravel().tolist() != [t for s in seqs.ids for t in s][: rows.size]  # shuffled
    assert pack(seqs.ids, 64, seed=0, max_rows=2).shape == (2, 64)
    assert (pack(seqs.ids, 64, seed=0) == rows).all()


# ---------------------------------------------------------------------------------------------------------------
# Presets


def test_preset_parameter_counts() -> None:
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    from fimtune.pretrain.presets import llama_config

    for preset in PRESETS.values():
        with torch.device("meta"):
            model = LlamaForCausalLM(llama_config(preset, preset.vocab_size, 3, 6))
        assert sum(p.numel() for p in model.parameters()) == preset.param_count()
    assert 0.8e6 <= PRESETS["micro"].param_count() <= 1.3e6
    nano = PRESETS["nano"]
    assert 5e6 <= nano.param_count() <= 8e6 and nano.save_dtype == "bfloat16"
    assert nano.param_count() * 2 <= 14 * 2**20  # the shipped weights, tokenizer and manifests stay under 16 MB
    pico = PRESETS["pico"]
    assert 20e6 <= pico.param_count() <= 30e6
    weight_bytes = pico.param_count() * 2  # bf16
    assert pico.save_dtype == "bfloat16" and weight_bytes <= 56 * 2**20  # room for tokenizer/config in 64 MiB
    assert pico.max_shard_bytes < 16 * 2**20 and -(-weight_bytes // pico.max_shard_bytes) <= 4
    assert pico.vocab_size * pico.hidden_size * 2 <= pico.max_shard_bytes  # the largest tensor fits one shard


# ---------------------------------------------------------------------------------------------------------------
# End to end through the CLI, resume across calls, and `--base-model pico`


@pytest.fixture(scope="module")
def run(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("trl")
    import torch

    from fimtune.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pretrain") / "run"
    common = ["--out", str(out), "--threads", "1"]
    first = [
        "pretrain",
        "--preset",
        "micro",
        *common,
        "--sources",
        str(site),
        "--holdout",
        "beta",
        "--vocab-size",
        "320",
        "--seq-len",
        "64",
        "--batch-tokens",
        "256",
        "--max-steps",
        "4",
        "--eval-steps",
        "2",
        "--max-minutes",
        "0.001",  # ends the first call after one step: then --resume
    ]
    assert main(first) == 0
    report = json.loads((out / "pretrain_report.json").read_text())
    assert report["stopped_by_time_limit"] and not report["finished"] and report["steps"] == 1
    assert main(["pretrain", "--preset", "micro", *common]) == 1  # refuses to train over a run
    assert main(["pretrain", *common, "--resume"]) == 0
    return out


def test_pretrain_cli_end_to_end(run: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from fimtune.models import load_tokenizer, model_type_of

    report = json.loads((run / "pretrain_report.json").read_text())
    assert report["finished"] and report["steps"] == 4 and not report["stopped_by_time_limit"]
    assert report["tokens_seen"] == 4 * 256 and report["tokens_per_s"] > 0 and report["mfu"] is None
    curves = json.loads((run / "loss_curve.json").read_text())
    assert [e["step"] for e in curves["heldout"]] == [0, 1, 2, 4]  # start, the time-limit stop, every 2 steps
    assert [r["step"] for r in curves["train"]][:1] == [1] and curves["train"][-1]["step"] == 4
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert (run / "loss_curve.csv").read_text().splitlines()[0] == "step,tokens,split,loss"

    model_dir = run / "model"
    tok = load_tokenizer(model_dir)
    assert detect_template(tok, model_type_of(model_dir)) == "fimtune-spm"  # the default: SPM FIM, served SPM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == report["vocab_size"]
    ids = tok(T.prefix + "def f(x):\n" + T.suffix + "\n" + T.middle, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()
    manifest = json.loads((model_dir / "data_manifest.json").read_text())
    assert manifest["heldout"] == ["beta"] and manifest["skipped_by_reason"]["copyleft licence"] == 1
    assert manifest["tokens"]["modes"]["train"]["spm"] > 0 and manifest["tokens"]["modes"]["train"]["psm"] == 0
    provenance = json.loads((model_dir / "fimtune_preset.json").read_text())
    assert provenance["template"] == "fimtune-spm" and provenance["trained"]["finished"]


@pytest.mark.parametrize("name", ["pico", "nano"])
def test_base_model_builtin(name: str, run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fimtune.models import BUILTIN_MODELS, ModelError, packaged_model_dir, resolve_base_model

    env = BUILTIN_MODELS[name][0]
    monkeypatch.delenv(env, raising=False)
    if not (packaged_model_dir(name) / "config.json").exists():
        with pytest.raises(ModelError, match=rf"fimtune pretrain --preset {name}") as e:
            resolve_base_model(name)
        assert env in str(e.value) and str(packaged_model_dir(name)) in str(e.value)
    monkeypatch.setenv(env, str(run / "nowhere"))
    with pytest.raises(ModelError, match=rf"{env}=.*nowhere is not a model folder"):
        resolve_base_model(name)
    monkeypatch.setenv(env, str(run / "model"))
    assert resolve_base_model(name) == run / "model"


def test_builtin_models_ship_inside_the_package() -> None:
    """Package data lives in fimtune/models/<name>/ whatever module resolves it (a moved module once looked
    one folder too high, and every built-in model read as not installed)."""
    import fimtune
    from fimtune.models import packaged_model_dir

    assert packaged_model_dir("nano") == Path(fimtune.__file__).resolve().parent / "models" / "nano"
    assert (packaged_model_dir("nano") / "config.json").is_file()  # shipped in the repository


def test_provenance_names_a_model_without_this_machines_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model continued from the shipped nano records `nano`, not the package's absolute folder."""
    from fimtune.models import model_label, packaged_model_dir

    assert model_label(packaged_model_dir("nano")) == "nano"
    (tmp_path / "runs" / "a" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert model_label(tmp_path / "runs" / "a" / "model") == "runs/a/model"
    assert model_label("/elsewhere/model") == "/elsewhere/model"  # outside the working folder: as given


def test_default_base_is_the_best_builtin_installed(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fimtune.models import default_base_model, packaged_model_dir
    from lsp_server.settings import Settings

    pico_shipped = (packaged_model_dir("pico") / "config.json").exists()
    nano_shipped = (packaged_model_dir("nano") / "config.json").exists()
    monkeypatch.setenv("FIMTUNE_NANO", str(run / "model"))
    monkeypatch.setenv("FIMTUNE_PICO", str(run / "model"))
    assert default_base_model() == "pico" and Settings().base_model == "pico"
    monkeypatch.delenv("FIMTUNE_PICO")
    if not pico_shipped:
        assert default_base_model() == "nano" and Settings().base_model == "nano"
        monkeypatch.delenv("FIMTUNE_NANO")
        expected = "nano" if nano_shipped else "tiny"
        assert default_base_model() == expected and Settings().base_model == expected


def test_train_minutes_sizes_the_schedule(site: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from fimtune.pretrain.config import PretrainConfig
    from fimtune.pretrain.train import pretrain

    cfg = PretrainConfig(
        preset="micro",
        out=str(tmp_path / "run"),
        sources=[str(site)],
        holdout=["beta"],
        vocab_size=300,
        seq_len=32,
        batch_tokens=64,
        eval_steps=1000,
        eval_rows=2,
        train_minutes=0.03,
        threads=1,
    )
    result = pretrain(cfg)
    saved = json.loads((tmp_path / "run" / "pretrain_config.json").read_text())
    assert saved["max_steps"] != PRESETS["micro"].max_steps and saved["train_minutes"] == 0.03
    assert result.report["max_steps"] == saved["max_steps"] == result.report["steps"] >= 1
    assert result.report["call_train_runtime_s"] < 0.03 * 60 * 4  # sized to the time asked for, within a margin


def test_init_from_continues_a_pretrained_model(
    run: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A warm start keeps the model's tokenizer and weights (so its held-out loss starts where the first run
    ended, not at a random model's), trains a new schedule on new FIM cuts, and records what came before."""
    from fimtune.cli import main

    out = tmp_path / "warm"
    common = ["--sources", str(site), "--holdout", "beta", "--seq-len", "64", "--batch-tokens", "256", "--threads", "1"]
    argv = ["pretrain", "--preset", "micro", "--out", str(out), *common, "--max-steps", "2", "--eval-steps", "2"]
    assert main([*argv, "--init-from", str(run / "model"), "--seed", "1", "--spm-share", "0"]) == 0
    first = json.loads((run / "pretrain_report.json").read_text())
    warm = json.loads((out / "pretrain_report.json").read_text())
    assert (out / "model" / "tokenizer.json").read_bytes() == (run / "model" / "tokenizer.json").read_bytes()
    assert warm["vocab_size"] == first["vocab_size"] == 320
    random_start = json.loads((run / "initial_eval.json").read_text())["eval_loss"]
    assert warm["heldout_loss_start"] < random_start - 0.5  # the trained weights, not a seeded init
    manifest = json.loads((out / "model" / "data_manifest.json").read_text())
    assert manifest["tokens"]["modes"]["train"]["spm"] == 0 and manifest["tokens"]["tokenizer_from"]
    provenance = json.loads((out / "model" / "fimtune_preset.json").read_text())
    assert provenance["init_from"]["trained"]["steps"] == 4 and provenance["trained"]["steps"] == 2

    other = ["pretrain", "--preset", "nano", "--out", str(tmp_path / "bad"), *common, "--init-from", str(run / "model")]
    capsys.readouterr()
    assert main(other) == 1  # a preset of another architecture is refused, naming what differs
    assert "not the preset's architecture: hidden_size 128 (preset: 256)" in capsys.readouterr().err
    assert main([*other[:4], str(tmp_path / "bad2"), "--init-from", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "init_from:" in err and "is not a model folder" in err
