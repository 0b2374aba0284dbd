"""Bad input through the real CLI: one line naming the file or setting, a non-zero exit, never a traceback."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

FIXTURE_REPOS = Path(__file__).resolve().parent / "fixtures" / "repos"


def fimtune(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fimtune", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def broken_corpora(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of a good corpus: one with a truncated shard, one whose shard lacks the middle column."""
    root = tmp_path_factory.mktemp("broken-corpora")
    truncated = root / "truncated"
    shutil.copytree(tiny_corpus, truncated)
    shard = sorted((truncated / "data").glob("train-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    no_middle = root / "no-middle"
    shutil.copytree(tiny_corpus, no_middle)
    for shard in (no_middle / "data").glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(["middle"]), shard)
    return {"truncated": truncated, "no_middle": no_middle}


@pytest.mark.parametrize("command", ["train", "eval", "render"])
@pytest.mark.parametrize("corpus", ["truncated", "no_middle"])
def test_a_damaged_corpus_is_one_line_in_every_command(
    broken_corpora: dict[str, Path], fimtune_cache: Path, tmp_path: Path, command: str, corpus: str
) -> None:
    folder = broken_corpora[corpus]
    split = "train"
    argv = {
        "train": ["train", "--corpus", str(folder), "--base-model", "tiny", "--out", str(tmp_path / "run")],
        "eval": ["eval", "--corpus", str(folder), "--base-model", "tiny", "--split", split, "--out", str(tmp_path)],
        "render": ["render", "--corpus", str(folder), "--template", "fimtune", "--split", split],
    }[command]
    line = one_line_error(fimtune(*argv), "rebuild the corpus")
    assert ("not readable Parquet" in line) if corpus == "truncated" else ("no middle column" in line)


def test_settings_are_checked_before_any_work(tiny_corpus: Path, fimtune_cache: Path, tmp_path: Path) -> None:
    train = ["train", "--corpus", str(tiny_corpus), "--base-model", "tiny", "--out", str(tmp_path / "run")]
    one_line_error(fimtune(*train, "--lr", "nan"), "lr: must be a finite number")
    one_line_error(fimtune(*train, "--max-steps", "0"), "--max-steps: at least 1", "--epochs")
    typo = tmp_path / "typo.yaml"
    typo.write_text("lr_scheduler: cosinee\n")
    one_line_error(fimtune(*train, "--config", str(typo)), "lr_scheduler: 'cosinee' is not one of", "cosine")
    render = ["render", "--corpus", str(tiny_corpus), "--template", "fimtune"]
    one_line_error(fimtune(*render, "-n=-2"), "-n: must be at least 1, not -2")
    one_line_error(fimtune(*render, "-n", "0"), "-n: must be at least 1, not 0")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    one_line_error(fimtune(*train[:-1], str(a_file)), "is a file")
    assert a_file.read_text() == "mine\n" and not (tmp_path / "run").exists()


def test_a_yaml_alias_bomb_is_a_short_error(tmp_path: Path) -> None:
    names = "abcdefghijklmn"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in itertools.pairwise(names)
    )
    config = tmp_path / "bomb.yaml"
    config.write_text(bomb)
    proc = fimtune("build-corpus", str(FIXTURE_REPOS / "pyshop"), "--config", str(config), "--out", str(tmp_path / "o"))
    line = one_line_error(proc, str(config), "more than 100 aliases")
    assert len(proc.stderr) < 1000, len(proc.stderr)
    assert line


def test_resume_of_a_finished_run_trains_nothing(tiny_run: Path, tiny_corpus: Path) -> None:
    before = (tiny_run / "adapter_model.safetensors").read_bytes()
    proc = fimtune("train", "--corpus", str(tiny_corpus), "--base-model", "tiny", "--out", str(tiny_run), "--resume")
    one_line_error(proc, "is a finished run")
    assert (tiny_run / "adapter_model.safetensors").read_bytes() == before


def test_a_build_with_no_train_example_warns(tmp_path: Path) -> None:
    repo = tmp_path / "one-file"
    repo.mkdir()
    (repo / "main.py").write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(30)))
    proc = fimtune(
        "build-corpus", str(repo), "--split", "file", "--test-fraction", "0.99", "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: every example landed in the test split, none in train" in proc.stderr


def test_a_full_disk_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    from fimtune.cli import main
    from fimtune.corpus import write

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    out = tmp_path / "out"
    assert main(["build-corpus", str(FIXTURE_REPOS / "pyshop"), "--out", str(out), "--workers", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"cannot write the corpus to {out}: No space left on device" in err
    assert not list(out.glob(write.STAGING_PREFIX + "*")) and not (out / "manifest.json").exists()
