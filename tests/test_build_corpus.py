"""`fimtune build-corpus` end to end: fixture repositories, a hostile repository, determinism, bad input."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fimtune.config import CorpusConfig
from fimtune.corpus import pipeline, write
from fimtune.corpus.pipeline import CorpusError, build_corpus

FIXTURES = Path(__file__).parent / "fixtures" / "repos"
REPOS = ["pyshop", "webkit", "gotool", "rsutil"]
COLUMNS = ["id", "repo", "path", "language", "span_kind", "prefix", "middle", "suffix", "context", "file_sha"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fimtune", "build-corpus", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def rows(out: Path, split: str | None = None) -> list[dict]:
    result = []
    for f in sorted((out / "data").glob(f"{split or '*'}-*.parquet")):
        result.extend(pq.read_table(f).to_pylist())
    return result


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((out / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "fixtures"
    proc = run_cli(*[str(FIXTURES / r) for r in REPOS], "--out", str(out), "--test-fraction", "0.25", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr
    return out


def test_cli_builds_a_corpus_in_four_languages(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert {"python", "javascript", "typescript", "tsx", "go", "rust"} <= set(manifest["languages"])
    assert manifest["counts"]["files_kept"] == sum(manifest["languages"].values())
    assert manifest["counts"]["examples"]["train"] > 0
    assert manifest["counts"]["examples"]["test"] > 0
    assert manifest["split_mode"] == "repo"
    assert len(manifest["test_repos"]) == 1
    for key in ("config", "counts", "dropped", "languages", "span_kinds", "bytes_in", "elapsed_s"):
        assert key in manifest
    assert manifest["dropped"].get("unsupported_language", 0) >= 2  # go.mod, Cargo.toml
    assert (built / "README.md").read_text().startswith("---\nconfigs:")


def test_rows_have_the_exact_columns_and_round_trip_the_files(built: Path) -> None:
    train, test = rows(built, "train"), rows(built, "test")
    assert pq.read_schema(next((built / "data").glob("train-*.parquet"))).names == COLUMNS
    for row in train + test:
        repo_dir = FIXTURES / row["repo"]
        assert row["prefix"] + row["middle"] + row["suffix"] == (repo_dir / row["path"]).read_text()
    # Eleven middles from 11 small files: which kinds come up is chance, beyond a few of each family.
    kinds = {r["span_kind"] for r in train + test}
    assert len(kinds & {"statement", "statements", "block", "call_args", "condition", "assignment_rhs"}) >= 2, kinds
    assert kinds & {"line_rest", "line", "random", "empty"}, kinds
    train_files = {(r["repo"], r["path"]) for r in train}
    test_files = {(r["repo"], r["path"]) for r in test}
    assert not train_files & test_files
    assert len({r["repo"] for r in test}) == 1
    assert len({r["id"] for r in train + test}) == len(train + test)


def test_datasets_opens_the_folder(built: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(built))
    assert set(ds) == {"train", "test"}
    assert ds["train"].column_names == COLUMNS
    assert len(ds["train"]) == len(rows(built, "train"))


def test_same_inputs_give_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    repos = [str(FIXTURES / r) for r in REPOS]
    a = build_corpus(CorpusConfig(repos=repos, out=str(tmp_path / "a"), workers=1), progress=False)
    b = build_corpus(CorpusConfig(repos=repos, out=str(tmp_path / "b"), workers=2), progress=False)
    assert a["counts"] == b["counts"]
    first = shard_bytes(tmp_path / "a")
    assert first and first == shard_bytes(tmp_path / "b")
    other_seed = build_corpus(CorpusConfig(repos=repos, out=str(tmp_path / "c"), seed=1, workers=2), progress=False)
    assert other_seed["counts"]["files_kept"] == a["counts"]["files_kept"]
    assert shard_bytes(tmp_path / "c") != first


def test_hostile_repository(tmp_path: Path) -> None:
    from tests.hostile import PLANTED_SECRETS, make_hostile_repo

    repo = tmp_path / "hostile"
    repo.mkdir()
    expected = make_hostile_repo(repo)
    out = tmp_path / "out"
    manifest = build_corpus(CorpusConfig(repos=[str(repo)], out=str(out), workers=2), progress=False)
    want: dict[str, int] = {}
    for reason in expected.values():
        if reason != "kept":
            want[reason] = want.get(reason, 0) + 1
    for reason, n in want.items():
        assert manifest["dropped"].get(reason, 0) >= n, (reason, manifest["dropped"])
    kept = {r["path"] for r in rows(out)}
    assert kept <= {p for p, r in expected.items() if r == "kept"}
    assert manifest["secrets"]["redacted"] >= len(PLANTED_SECRETS)
    blob = "\n".join(json.dumps(r) for r in rows(out)) + (out / "manifest.json").read_text()
    blob += (out / "README.md").read_text()
    for secret in PLANTED_SECRETS:
        assert secret not in blob
    assert "<REDACTED>" in blob


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repos = [str(FIXTURES / r) for r in REPOS]
    cfg = CorpusConfig(repos=repos, out=str(tmp_path / "out"), workers=1, shard_examples=2)
    real = write.SplitWriter.add
    calls = {"n": 0}

    def interrupted(self: write.SplitWriter, f: write.FileExamples) -> None:  # Ctrl-C while shards are written
        calls["n"] += 1
        if calls["n"] == 6:
            concurrent.futures.wait(self._pending)  # the first shards are on disk, unfinished
            assert list((tmp_path / "out").glob(".staging-*/data/*.partial"))
            raise KeyboardInterrupt
        real(self, f)

    monkeypatch.setattr(write.SplitWriter, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(cfg, progress=False)
    out = tmp_path / "out"
    assert calls["n"] == 6
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("data/*.parquet"))
    assert not list(out.glob(".staging-*"))
    monkeypatch.setattr(write.SplitWriter, "add", real)

    # A kill -9 leaves a staging folder behind: the rerun cleans it and produces the full output.
    (out / ".staging-99999" / "data").mkdir(parents=True)
    (out / ".staging-99999" / "data" / "train-00000-of-00009.parquet").write_bytes(b"junk")
    build_corpus(cfg, progress=False)
    fresh = tmp_path / "fresh"
    build_corpus(CorpusConfig(repos=repos, out=str(fresh), workers=2, shard_examples=2), progress=False)
    assert shard_bytes(out) == shard_bytes(fresh)
    assert not list(out.glob(".staging-*"))
    assert len(shard_bytes(out)) > 2


@pytest.mark.parametrize("context", [False, True])
def test_an_error_in_the_build_stops_its_workers_before_it_reaches_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, context: bool
) -> None:
    def broken(self: write.SplitWriter, f: write.FileExamples) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(write.SplitWriter, "add", broken)
    cfg = CorpusConfig(repos=[str(FIXTURES / r) for r in REPOS], out=str(tmp_path / "out"), workers=2)
    cfg.context.enabled = context
    try:
        build_corpus(cfg, progress=False)
    except KeyboardInterrupt:  # in the handler, the traceback keeps the build's frames alive
        with pytest.raises(ChildProcessError):  # yet no worker is left running, or waiting to be reaped
            os.waitpid(-1, os.WNOHANG)
    else:
        pytest.fail("the build did not raise")
    assert not list((tmp_path / "out").glob(".staging-*"))


def test_rerun_same_command_is_fine_but_a_different_corpus_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    repo = str(FIXTURES / "pyshop")
    assert run_cli(repo, "--out", str(out), "-q").returncode == 0
    assert run_cli(repo, "--out", str(out), "-q").returncode == 0
    proc = run_cli(repo, "--out", str(out), "--seed", "5", "-q")
    assert proc.returncode == 1
    assert "already holds a different corpus" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_cli(repo, "--out", str(out), "--seed", "5", "--overwrite", "-q").returncode == 0


@pytest.mark.parametrize(
    "case", ["missing", "not_a_dir", "empty", "no_supported", "unwritable", "foreign_out", "bad_marker"]
)
def test_bad_input_is_one_line_and_non_zero(tmp_path: Path, case: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    out = tmp_path / "out"
    if case == "missing":
        repo = tmp_path / "nope"
    elif case == "not_a_dir":
        repo = tmp_path / "file.py"
        repo.write_text("x = 1\n")
    elif case == "no_supported":
        (repo / "notes.txt").write_text("hello\n")
        (repo / "data.csv").write_text("a,b\n")
    elif case in ("unwritable", "foreign_out"):
        shutil.copytree(FIXTURES / "pyshop", repo, dirs_exist_ok=True)
        if case == "unwritable":
            (tmp_path / "blocker").write_text("a file, not a folder")
            out = tmp_path / "blocker" / "out"
        else:
            out.mkdir()
            (out / "thesis.tex").write_text("precious")
    options: list[str] = []
    if case == "bad_marker":  # refused before any file is read, even where no file has a header comment
        (repo / "a.py").write_text("x = 1\n" * 5)
        (tmp_path / "recipe.yaml").write_text('filters:\n  generated_markers: ["(unclosed"]\n')
        options = ["--config", str(tmp_path / "recipe.yaml"), "--workers", "2"]
    proc = run_cli(str(repo), "--out", str(out), "-q", *options)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fimtune build-corpus: error:")
    if case in ("missing", "not_a_dir", "empty", "no_supported"):
        assert str(repo.name) in lines[0]
    if case == "foreign_out":
        assert (out / "thesis.tex").read_text() == "precious"
    if case == "bad_marker":
        assert "filters.generated_markers[0]" in lines[0]


def test_an_empty_repository_among_others_is_a_warning_and_a_count(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    proc = run_cli(str(FIXTURES / "pyshop"), str(empty), "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "empty" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["empty_repos"] == ["empty"]


def test_unparsable_file_still_yields_line_examples(tmp_path: Path) -> None:
    repo = tmp_path / "broken"
    repo.mkdir()
    (repo / "bad.py").write_text("def f(:\n    return [1, 2\nx = (\nprint('still code')\ny = 3\n" * 3)
    manifest = build_corpus(CorpusConfig(repos=[str(repo)], out=str(tmp_path / "o"), workers=1), progress=False)
    assert manifest["counts"]["parse_failures"] == 1
    assert rows(tmp_path / "o")  # line-based middles at least (and syntax ones from clean parts)


def test_pipeline_errors_name_the_path() -> None:
    with pytest.raises(CorpusError, match="nope"):
        pipeline.resolve_repos(["/definitely/nope"])


def test_shard_rows_are_cut_from_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fimtune.records import Snippet, Span

    text = "def f():\n    return 'é'\n\nx = f()\n"
    data = text.encode()
    spans = [Span(0, 0, "empty"), Span(4, 7, "line_rest"), Span(13, data.index(b"\n", 13), "line")]
    contexts = [(), (Snippet("b.py", "y = 1\n", "similar"),), (Snippet("c.py", "z", "definition"),) * 2]
    files = [
        write.FileExamples("r", "a.py", "python", "sha-a", data, spans, contexts),
        write.FileExamples("r", "b.py", "python", "sha-b", b"y = 1\n", [Span(0, 1, "line")]),
    ]
    monkeypatch.setattr(write, "ROW_GROUP_TEXT_BYTES", len(data) * 2)  # at most two rows of a.py per row group
    with write.SplitWriter(tmp_path, "s", shard_examples=100) as writer:
        for f in files:
            writer.add(f)
        assert writer.close() == ["s-00000-of-00001.parquet"]
    assert [p.name for p in tmp_path.iterdir()] == ["s-00000-of-00001.parquet"]
    shard = pq.ParquetFile(tmp_path / "s-00000-of-00001.parquet")
    assert [shard.metadata.row_group(i).num_rows for i in range(shard.metadata.num_row_groups)] == [2, 2]
    got = shard.read().to_pylist()
    assert [r["prefix"] + r["middle"] + r["suffix"] for r in got] == [text] * 3 + ["y = 1\n"]
    assert [r["middle"] for r in got] == ["", "f()", "return 'é'", "y"]
    assert [len(r["context"]) for r in got] == [0, 1, 2, 0]
    assert got[1]["context"] == [{"path": "b.py", "text": "y = 1\n", "kind": "similar"}]
    assert [r["file_sha"] for r in got] == ["sha-a"] * 3 + ["sha-b"]
    assert shard.schema_arrow == write.SCHEMA


def test_split_writer_bytes_depend_on_the_rows_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards of shard_examples rows, a file's rows cut across shards where the count says, and the same bytes
    whether the writer's threads keep up or the caller has to wait for them."""
    from fimtune.records import Span

    monkeypatch.setattr(write, "ROW_GROUP_ROWS", 2)
    files = [
        write.FileExamples("r", f"{name}.py", "python", name, f"x_{name} = {k}\n".encode(), [Span(0, 1, "line")] * k)
        for k, name in enumerate(["a", "b", "c", "d"], start=1)
    ]  # 1 + 2 + 3 + 4 rows
    written = {}
    for max_pending in (1, 100):
        folder = tmp_path / str(max_pending)
        folder.mkdir()
        with write.SplitWriter(folder, "train", shard_examples=4, max_pending=max_pending) as writer:
            for f in files:
                writer.add(f)
            names = writer.close()
        assert names == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
        shards = [pq.ParquetFile(folder / name) for name in names]
        assert [s.metadata.num_rows for s in shards] == [4, 4, 2]
        assert [[s.metadata.row_group(i).num_rows for i in range(s.num_row_groups)] for s in shards] == [[2, 2]] * 2 + [
            [2]
        ]
        paths = [row["path"] for s in shards for row in s.read(columns=["path"]).to_pylist()]
        assert paths == ["a.py"] + ["b.py"] * 2 + ["c.py"] * 3 + ["d.py"] * 4
        written[max_pending] = [(folder / name).read_bytes() for name in names]
    assert written[1] == written[100]


@pytest.mark.parametrize("where", ["row group", "footer"])
def test_split_writer_raises_what_its_thread_raised_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from fimtune.records import Span

    def broken(*args: object) -> None:
        raise OSError("disk full")

    if where == "row group":
        monkeypatch.setattr(write, "_table", broken)
    else:  # the shard's last step, on its thread: a shard whose footer failed must not be named as finished
        monkeypatch.setattr(write._ShardThread, "_close", broken)
    f = write.FileExamples("r", "a.py", "python", "a", b"x = 1\n", [Span(0, 1, "line")])
    with pytest.raises(OSError, match="disk full"), write.SplitWriter(tmp_path, "train", shard_examples=10) as writer:
        writer.add(f)
        writer.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fimtune-write")]
    assert not list(tmp_path.glob("*.parquet"))


@pytest.mark.parametrize("case", ["user_folder", "root", "home", "repo_root", "input", "holds_input", "file"])
def test_overwrite_never_replaces_what_is_not_a_fimtune_corpus(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "pyshop", repo)
    out = tmp_path / "out"
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    if case == "user_folder":
        out.mkdir()
        (out / "README.md").write_text("my notes\n")
        (out / "data").mkdir()
        (out / "data" / "keep.csv").write_text("a,b\n")
    elif case == "root":
        out = Path("/")
    elif case == "home":
        out = home
    elif case == "repo_root":
        out = tmp_path / "other-repo"
        (out / ".git").mkdir(parents=True)
        (out / "main.py").write_text("x = 1\n")
    elif case == "input":
        out = repo
    elif case == "holds_input":
        out = tmp_path
    else:
        out = tmp_path / "file.txt"
        out.write_text("mine\n")
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "fimtune", "build-corpus", str(repo), "--out", str(out), "--overwrite", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "--overwrite" not in lines[0], lines
    after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before  # nothing of the user's was touched


def test_overwrite_replaces_a_fimtune_corpus_and_an_empty_folder(tmp_path: Path) -> None:
    repo = str(FIXTURES / "pyshop")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(repo, "--out", str(empty), "--overwrite", "-q").returncode == 0
    assert run_cli(repo, "--out", str(empty), "--seed", "3", "--overwrite", "-q").returncode == 0
    assert json.loads((empty / "manifest.json").read_text())["config"]["seed"] == 3
