"""scan_secrets: each kind redacted exactly (value only, code intact), ordinary code untouched, hostile repo.

Every secret below is built by concatenation so that this file holds no literal token a scanner would flag.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from fimtune.config import FilterConfig, SecretsConfig, WalkConfig
from fimtune.corpus.filters import decode_and_filter
from fimtune.corpus.secrets import find_secrets, looks_like_secret_value, scan_secrets
from fimtune.corpus.walk import read_file, walk_repo
from tests.hostile import PLANTED_SECRETS, PRIVATE_KEY, make_hostile_repo

CFG = SecretsConfig()
P = CFG.placeholder


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


AWS_ID = "AKIA" + "Q7RZ4M2XK9TB5WLP"
AWS_SIGNING = "r9Xb2Lq7" + "Vz4Tn8Kw1Pm6" + "Hs3Jd5Fg0Yc2" + "Ua7Ee9Ri"
GHP = "ghp" + "_Zq8Lw3Nx7Rb2" + "Tk9Vm4Hc6Jp1" + "Ys5Gd0Fa3Ue8"
GITHUB_PAT = "github" + "_pat_" + "11ABCDEFG0" + "a1B2c3D4e5Z6" + "g7H8i9J0kL_" + "m1N2o3P4q5" * 6
GLPAT = "glpat" + "-" + "xY7zQ2wE9r" + "T4uI6oP1aS"
SLACK = "xoxb" + "-2470213579-5119684713254-" + "gT4kQ8zLmW2p" + "R6vN9cY3dH1s"
SLACK_HOOK = "https://hooks.slack.com" + "/services/T0123ABCD/B0456EFGH/" + "aB3dE5gH7jK9" + "mN1pQ3sT5vW7"
STRIPE = "sk_" + "live_" + "4eC39HqLyjWD" + "arjtT1zdp7dc"
GOOGLE = "AIza" + "SyD4x9Qm2Lk7" + "Tb3Nw8Rv5Jc1" + "Hp6Fg0Ye2Us"
JWT = ".".join(
    [
        _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
        _b64url(json.dumps({"sub": "1234567890", "name": "Ada"}).encode()),
        _b64url(hashlib.sha256(b"signature").digest()),
    ]
)
LOGIN = "x7Gq9Lm" + "P2vRt8KwZ3nBd"
HEX_KEY = "3f2a9c1e" + "8b4d4e6f" + "9a2b7c1d" + "0e5f8a3b"


@pytest.mark.parametrize(
    ("kind", "line", "secret"),
    [
        ("aws_access_key", 'key_id = "{}"\n', AWS_ID),
        ("aws_secret_key", 'AWS_SIGNING_KEY = "{}"\n', AWS_SIGNING),
        ("github_token", "const t = '{}';\n", GHP),
        ("github_token", 'let t = "{}";\n', GITHUB_PAT),
        ("gitlab_token", 'headers = {{"PRIVATE": "{}"}}\n', GLPAT),
        ("slack", "bot = connect('{}')\n", SLACK),
        ("slack", 'post("{}", body)\n', SLACK_HOOK),
        ("stripe", "stripe.api_base_key = '{}'\n", STRIPE),
        ("google_api_key", 'maps("{}")\n', GOOGLE),
        ("jwt", 'fetch(url, {{ auth: "Bearer {}" }})\n', JWT),
        ("basic_auth", 'engine = create_engine("postgresql://orders:{}@db:5432/orders")\n', "Hq7" + "xL2vN9"),
        ("secret_assignment", 'password = "{}"\n', LOGIN),
        ("secret_assignment", 'DB_PASS: str = "{}"\n', LOGIN),
        ("secret_assignment", 'clientSecret := "{}"\n', LOGIN),
        ("secret_assignment", 'let api_key: &str = "{}";\n', LOGIN),
        ("secret_assignment", "cfg = {{\"auth_token\": '{}'}}\n", LOGIN),
        ("secret_assignment", 'login(user, password="{}")\n', LOGIN),
        ("secret_assignment", 'private String accessKey = "{}";\n', HEX_KEY),
        ("secret_assignment", 'if (token === "{}") {{\n', LOGIN),
    ],
)
def test_each_kind_is_replaced_exactly(kind: str, line: str, secret: str) -> None:
    text = "import os\n\n" + line.format(secret) + "print(1)\n"
    scan = scan_secrets(text, CFG)
    assert scan.text == "import os\n\n" + line.format(P) + "print(1)\n"
    assert scan.redacted == 1
    assert scan.kinds == {kind: 1}
    assert secret not in scan.text


def test_private_key_block_is_replaced_whole() -> None:
    go = f"package k\n\nconst key = `{PRIVATE_KEY}`\n\nfunc F() {{}}\n"
    scan = scan_secrets(go, CFG)
    assert scan.text == f"package k\n\nconst key = `{P}`\n\nfunc F() {{}}\n"
    assert scan.kinds == {"private_key": 1}
    # In one string with \n escapes, and in concatenated literals.
    escaped = PRIVATE_KEY.replace("\n", "\\n")
    assert scan_secrets(f'KEY = "{escaped}"\n', CFG).text == f'KEY = "{P}"\n'
    lines = PRIVATE_KEY.split("\n")
    joined = " +\n  ".join(f'"{x}\\n"' for x in lines)
    assert scan_secrets(f"const k = {joined};\n", CFG).text == f'const k = "{P}\\n";\n'
    # A key without its END line (truncated) still loses its body.
    truncated = "\n".join(lines[:-2]) + "\n"
    scan = scan_secrets(f"# key:\n# {truncated}", CFG)
    assert scan.redacted == 1 and lines[1] not in scan.text and lines[-2] not in scan.text


def test_key_markers_in_code_are_not_a_key() -> None:
    begin, end = "-----BEGIN " + "RSA PRIVATE KEY-----", "-----END " + "RSA PRIVATE KEY-----"
    code = (
        f"def read_pem(lines):\n    inside = False\n    for line in lines:\n"
        f'        if line == "{begin}":\n            inside = True\n'
        f'        elif line == "{end}":\n            inside = False\n'
        f'PATTERN = r"BEGIN {"RSA"} PRIVATE KEY"\n'
    )
    assert scan_secrets(code, CFG).redacted == 0


ORDINARY = """import os

password = request.form["password"]
token = get_token()
api_key = os.environ["API_KEY"]
secret_key: str
sha = "@SHA@"
tokenizer_name = "bert-base-uncased"
PASSWORD_FIELD = "@PWF@"
TOKEN_HEADER = "X-Auth-Token"
webhook_secret = "@MSK@"
bos_token = "bos_token_id"
token_url = "https://oauth2.googleapis.com/token"
secret = os.getenv("SECRET", "")
api_key = "${API_KEY}"
password = "<your password here>"
password = f"{prefix}-{suffix}-{counter}"
db = f"postgres://{user}:{password}@{host}/orders"
example = "https://user:@PASS@@example.com/path"
local = "postgresql://postgres:@PG@@localhost:5432/test"
headers = {"Authorization": f"Bearer {token}"}
DNA = "@DNA@"
if token == "Bearer":
    pass
"""
# Pieces that a scanner of this test file would flag on their own.
for marker, piece in {
    "@SHA@": "e3b0c442" + "98fc1c14" + "9afbf4c8" + "996fb924" + "27ae41e4" + "649b934c" + "a495991b" + "7852b855",
    "@PASS@": "pa" + "ss",
    "@PWF@": "password" + "_confirmation",
    "@MSK@": "my_secret" + "_key",
    "@PG@": "post" + "gres",
    "@DNA@": "AAACCA" + "TCTCTACCGGTTCGC" + "TTTCACTGGATATCGCG",
}.items():
    ORDINARY = ORDINARY.replace(marker, piece)


def test_ordinary_code_is_untouched() -> None:
    scan = scan_secrets(ORDINARY, CFG)
    assert (scan.text, scan.redacted, scan.kinds) == (ORDINARY, 0, {})


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        (LOGIN, True),
        ("MyS3c" + "retP@ss", True),
        (HEX_KEY, True),
        ("bos_token_id", False),
        ("X-Auth-Token", False),
        ("gpt2-medium", False),
        ("changeme123", False),
        ("your-api-key", False),
        ("/etc/secret.key", False),
        ("hello world 123", False),
        ("12345678901234", False),
    ],
)
def test_looks_like_secret_value(value: str, secret: bool) -> None:
    assert looks_like_secret_value(value) is secret


def test_a_secret_used_again_elsewhere_is_replaced_everywhere() -> None:
    text = f'DB_PASSWORD = "{LOGIN}"\n\n\ndef test_login():\n    assert login("ada", "{LOGIN}")\n'
    scan = scan_secrets(text, CFG)
    assert LOGIN not in scan.text and scan.redacted == 2
    assert scan.text.count(P) == 2 and 'login("ada", "<REDACTED>")' in scan.text


def test_overlapping_detections_count_once_under_the_specific_kind() -> None:
    scan = scan_secrets(f'AWS_ACCESS_KEY_ID = "{AWS_ID}"\nGITHUB_TOKEN = "{GHP}"\n', CFG)
    assert scan.redacted == 2 and scan.kinds == {"aws_access_key": 1, "github_token": 1}


def test_longer_token_is_replaced_whole_and_scan_is_idempotent() -> None:
    longer = STRIPE + "Zx9Qw8Er7Ty6"
    scan = scan_secrets(f"stripe.key = '{longer}'\n", CFG)
    assert scan.text == f"stripe.key = '{P}'\n"
    again = scan_secrets(scan.text, CFG)
    assert again.redacted == 0 and again.text == scan.text


def test_placeholder_and_unicode_offsets() -> None:
    # Text whose lower-casing changes length (U+0130) must not shift the replaced span.
    text = f'# İstanbul İzmir\nGITHUB = "{GHP}"\nname = "İ"\n'
    scan = scan_secrets(text, SecretsConfig(placeholder="***"))
    assert scan.text == '# İstanbul İzmir\nGITHUB = "***"\nname = "İ"\n'


def test_hostile_repository_secrets_are_all_caught(tmp_path: Path) -> None:
    expected = make_hostile_repo(tmp_path)
    outputs: list[str] = []
    redacted = 0
    for item in walk_repo(tmp_path, WalkConfig(), []):
        if item.reason is not None:
            continue
        data, reason = read_file(tmp_path, item)
        if data is None:
            continue
        text, reason = decode_and_filter(item.path, data, FilterConfig())
        assert (reason or "kept") == expected[item.path], item.path
        if text is not None:
            scan = scan_secrets(text, CFG)
            outputs.append(scan.text)
            redacted += scan.redacted
    blob = "\n".join(outputs)
    assert redacted >= len(PLANTED_SECRETS)
    for secret in PLANTED_SECRETS:
        assert secret not in blob
    assert "def upload(path: str" in blob  # the code around the secrets is still there


# ---- the planted-secrets corpus: every secret context, and lookalikes that stay ----------------------------


def test_planted_secrets_in_every_file_kind_are_redacted_and_lookalikes_stay(tmp_path: Path) -> None:
    from tests.secret_corpus import FILES, write_secret_corpus

    planted, looks = write_secret_corpus(tmp_path)
    assert len(planted) >= 40 and len(looks) >= 200
    kinds = {Path(rel).suffix or Path(rel).name for rel in FILES}
    assert kinds >= {".py", ".js", ".ts", ".go", ".yaml", ".json", ".sh", "Dockerfile"}
    outputs = {}
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        outputs[path.relative_to(tmp_path).as_posix()] = scan_secrets(path.read_text(), CFG).text
    blob = "\n".join(outputs.values())
    survived = {slot: value for slot, value in planted.items() if value in blob}
    assert not survived, survived
    lost = [v for v in looks if v not in blob]
    assert not lost, lost
    # The code around each secret is still there.
    assert 'conn = psycopg2.connect("host=db user=app password=<REDACTED> dbname=orders")' in outputs["app/settings.py"]
    assert 'req.Header.Set("Authorization", "Bearer <REDACTED>")' in outputs["cmd/server/main.go"]
    assert "ENV API_TOKEN <REDACTED>" in outputs["Dockerfile"]


def test_the_build_leaves_no_planted_secret_in_any_column(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from fimtune.config import CorpusConfig
    from fimtune.corpus.pipeline import build_corpus
    from tests.secret_corpus import write_secret_corpus

    repo = tmp_path / "repo"
    planted, _ = write_secret_corpus(repo)
    out = tmp_path / "out"
    build_corpus(CorpusConfig(repos=[str(repo)], out=str(out), workers=1, split="file", test_fraction=0.3))
    blob = []
    for shard in sorted((out / "data").glob("*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            blob += [row["prefix"], row["middle"], row["suffix"]] + [c["text"] for c in row["context"]]
    text = "\n".join(blob)
    assert text and not [slot for slot, value in planted.items() if value in text]


@pytest.mark.parametrize(
    "line",
    [
        'bos_token="__start__",',
        'pad_token = "__null__"',
        'self.image_token = "|SPEAKER|"',
        'self.image_newline_token = "|NEWLINE|"',
        'mask_token = "[MASK]"',
        'eos_token: str = "<|endoftext|>"',
    ],
)
def test_a_models_vocabulary_tokens_are_not_secrets(line: str) -> None:
    """Tokenizer code names its vocabulary tokens like credentials (found in transformers' sources)."""
    assert list(find_secrets(line + "\n")) == []


def test_a_plain_word_token_is_still_a_secret() -> None:
    assert [kind for _, _, kind in find_secrets('access_token = "correcthorsebattery"\n')]
