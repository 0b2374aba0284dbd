"""Config loading: YAML defaults, flag overrides, errors that name the setting and file."""

from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from fimtune.cli import build_parser
from fimtune.config import ConfigError, CorpusConfig, Rule, check, flag_name, iter_settings, load_config
from fimtune.eval.run import EvalConfig
from fimtune.pretrain.config import PretrainConfig
from fimtune.render_cmd import RenderConfig
from fimtune.train.config import TrainConfig
from lsp_server.settings import Settings, parse_settings


def test_yaml_then_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 3\nspans:\n  max_middle_lines: 7\ndedup:\n  threshold: 0.9\n")
    cfg = load_config(CorpusConfig, recipe, {"seed": 5, "dedup.near": False})
    assert (cfg.seed, cfg.spans.max_middle_lines, cfg.dedup.threshold, cfg.dedup.near) == (5, 7, 0.9, False)
    assert cfg.walk.max_file_bytes == CorpusConfig().walk.max_file_bytes


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sead: 1\n", "'sead'"),
        ("dedup:\n  threshold: high\n", "dedup.threshold"),
        ("context:\n  enabled: maybe\n", "context.enabled"),
        ("- a\n- b\n", "mapping"),
        ("seed: [1\n", "not valid YAML"),
    ],
)
def test_bad_settings_name_the_setting_and_file(tmp_path: Path, text: str, needle: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(CorpusConfig, recipe, {})
    assert needle in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_validate_rejects_unknown_language() -> None:
    cfg = CorpusConfig(languages=["python", "cobol"])
    with pytest.raises(ConfigError, match="cobol"):
        cfg.validate()


# --- settings named once: flags, YAML, checks and the server's parser all read the one field -------------------

# Each command, its settings class, and the flags it has that are not settings (how to run, not what to do).
COMMANDS = {
    "build-corpus": (CorpusConfig, {"--config", "--overwrite", "--quiet"}),
    "train": (TrainConfig, {"--config"}),
    "pretrain": (PretrainConfig, {"--config"}),
    "eval": (EvalConfig, {"--quiet"}),
    "render": (RenderConfig, set()),
    "serve": (Settings, {"--stdio", "--tcp"}),
}
CLASSES = [cls for cls, _ in COMMANDS.values()]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_is_a_setting_and_every_flagged_setting_a_flag(command: str) -> None:
    cls, extra = COMMANDS[command]
    flags = {
        max(a.option_strings, key=len)
        for a in _subparser(command)._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    }
    from_settings = {flag_name(d, f) for d, f, _ in iter_settings(cls) if f.metadata.get("flag")}
    assert flags == from_settings | extra


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_setting_has_help(cls: type) -> None:
    missing = [d for d, f, _ in iter_settings(cls) if d != "given" and not f.metadata.get("help")]
    assert missing == []


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_no_float_setting_takes_nan_or_infinity(cls: type) -> None:
    floats = [(d, f) for d, f, hint in iter_settings(cls) if hint is float]
    assert floats or cls in (RenderConfig, Settings, EvalConfig)
    for dotted, _ in floats:
        for bad in (math.nan, math.inf):
            obj = cls()
            *parents, leaf = dotted.split(".")
            node = obj
            for part in parents:
                node = getattr(node, part)
            object.__setattr__(node, leaf, bad)
            with pytest.raises(ConfigError, match=rf"^{dotted}: must be a finite number"):
                check(obj)


def test_the_defaults_keep_every_rule() -> None:
    for cls in CLASSES:
        check(cls())  # raises if a default breaks its own rule


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (Rule(choices=("a", "b")), "one of a, b"),
        (Rule(at_least=1, at_most=4096), "from 1 to 4096"),
        (Rule(at_least=0, below=1), "in [0, 1)"),
        (Rule(above=0, at_most=1), "in (0, 1]"),
        (Rule(above=0), "more than 0"),
        (Rule(zero="all cores", at_least=1), "0 (all cores) or at least 1"),
    ],
)
def test_rules_say_what_a_value_must_be(rule: Rule, text: str) -> None:
    assert rule.describe() == text


def test_one_bad_value_gets_one_message_from_the_file_the_flag_and_the_editor(tmp_path: Path) -> None:
    recipe = tmp_path / "train.yaml"
    recipe.write_text("dtype: fp16\n")
    with pytest.raises(ConfigError) as from_yaml:
        load_config(TrainConfig, recipe, {})
    with pytest.raises(ConfigError) as from_flag:
        load_config(TrainConfig, None, {"dtype": "fp16"})
    _, warnings = parse_settings({"dtype": "fp16"})
    message = "dtype: must be one of auto, fp32, bf16, not 'fp16'"
    assert str(from_yaml.value) == f"{recipe}: {message}"
    assert str(from_flag.value) == message
    assert warnings == [f"fimtune: setting '{message.replace(':', chr(39) + ':', 1)}; using 'auto'"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build-corpus", "--workers", "-2"], "workers: must be 0 (all cores) or at least 1, not -2"),
        (["build-corpus", "--split", "half"], "split: must be one of auto, repo, file, not 'half'"),
        (["train", "--lora-dropout", "nan"], "lora.dropout: must be a finite number, not nan"),
        (["pretrain", "--spm-share", "2"], "fim.spm_share: must be from 0 to 1, not 2.0"),
        (["serve", "--timeout-ms", "10"], "--timeout-ms: must be from 50 to 600000, not 10"),
        (["render", "--corpus", "c", "-n", "0"], "-n: must be at least 1, not 0"),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_setting(argv: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fimtune", *argv], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"fimtune {argv[0]}: error: {message}"]


def test_a_bad_nested_setting_stops_the_build_before_any_worker(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("context:\n  window_lines: 0\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fimtune", "build-corpus", str(repo), "--config", str(recipe), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip() == f"fimtune build-corpus: error: {recipe}: context.window_lines: must be at least 1, not 0"
    )
    assert not out.exists()  # refused before the output folder was touched


def test_every_config_field_is_made_by_setting() -> None:
    for cls in CLASSES:
        for d, f, hint in iter_settings(cls):
            if d == "given":
                continue
            assert "rule" in f.metadata, f"{cls.__name__}.{d}: declare it with fimtune.config.setting(...)"
            assert not dataclasses.is_dataclass(hint)
            assert typing.get_origin(hint) in (None, list, dict)


def test_the_readme_table_lists_every_client_setting() -> None:
    from lsp_server.settings import camel

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    top = {camel(f.name) for f in dataclasses.fields(Settings) if f.name != "given"}
    missing = [key for key in sorted(top) if f"`{key}`" not in readme]
    assert missing == []
