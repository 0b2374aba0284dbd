"""Config loading: YAML defaults, flag overrides, errors that name the setting and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fimtune.config import ConfigError, CorpusConfig, load_config


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
