"""Secret detection: find credentials in a file's text and replace exactly each secret value by a placeholder.

Detectors come from detect-secrets' plugins (their regular expressions and checks). detect-secrets 1.5 has no
plugin for Google API keys or GitHub fine-grained tokens (github_pat_), and its KeywordDetector flags any value,
low entropy or not, misses `token`/`access_key` names and Go's `:=`; those three get a small regex here.

detect-secrets has no plugin for a credential known by where it sits rather than by its shape, so those
contexts are detectors of this table too: the default of an environment lookup of a secret-named variable, a
password in a connection string (libpq, JDBC, a URL without a user, Go's MySQL DSN), an Authorization header's
credentials, `key: value` / `NAME=value` lines of YAML, .env, shell and Dockerfiles, AWS's secret passed
positionally beside its key id, and a plain-word value of a variable whose name ends in a secret word
(`db_password = "correcthorsebattery"`). Placeholders, fixtures, templates and identifiers stay.

Speed: the plugins' regular expressions are run only on candidate lines, found in one Aho-Corasick pass
(ahocorasick_rs) over the lower-cased text for the literal hints of each detector.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import cast

import ahocorasick_rs
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector

from fimtune.config import SecretsConfig


@dataclass(frozen=True, slots=True)
class SecretScan:
    """The text with every detected secret value replaced by cfg.placeholder, and what was replaced."""

    text: str
    redacted: int
    kinds: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Detector:
    """A kind of secret: hints (lower-case literals; a line holding one is a candidate), patterns, checks."""

    kind: str
    hints: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    group: int | str = 0  # which group of a match is the secret value
    extend: str = ""  # characters the value extends over on both sides (a token longer than the pattern)
    check: Callable[[re.Match[str], str], bool] | None = None  # a further test: (match, extended value)
    expand: Callable[[str, re.Match[str]], tuple[int, int] | None] | None = None  # match -> secret span
    # Every match starts where a hint does (the pattern opens with the hints): tried only there, not at every
    # character of the line.
    at_hints: bool = False


def _plugin(cls: type[RegexBasedDetector], token: bool = True) -> tuple[re.Pattern[str], ...]:
    """A plugin's patterns; a token must not start in the middle of a word (this also keeps a long run of
    letters from being searched from every one of its positions)."""
    patterns = list(cast("Iterable[re.Pattern[str]]", cls.denylist))
    if token:
        patterns = [re.compile(r"(?<![A-Za-z0-9])(?:" + p.pattern + ")", p.flags) for p in patterns]
    return tuple(patterns)


_TOKEN = "A-Za-z0-9_-"

# Private keys: detect-secrets' PrivateKeyDetector finds the marker (BEGIN, the key type, PRIVATE KEY; or the
# PuTTY header); the whole block around it is the secret. Its body may sit in one string literal with "\n"
# escapes or in several concatenated ones, so quotes, backslashes and "+" may sit between BEGIN and END, but
# nothing that only code has (parentheses, brackets, semicolons), so two unrelated markers never pair up.
_KEY_OPEN = re.compile(r"-{4,5} ?$")
_KEY_HEADER_TAIL = re.compile(r"(?: BLOCK)? ?-{4,5}|: [^\n]*")
_KEY_BODY = re.compile(r"[A-Za-z0-9+/=\s\\\"'`,:.\-]*")
_KEY_END = re.compile(r"-{4,5} ?END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5}|Private-MAC: [0-9a-fA-F]+")
_KEY_RUN = re.compile(r"[A-Za-z0-9+/=]{40,}")


def _private_key_block(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    """The whole key block around a marker, or None when no base64 body follows (code about keys)."""
    start = m.start()
    opener = _KEY_OPEN.search(text, max(0, start - 6), start)
    if opener:
        start = opener.start()
    header = _KEY_HEADER_TAIL.match(text, m.end())
    body_start = header.end() if header else m.end()
    # The body ends at the first character only code has, at the next marker, or after 64 KB.
    limit = text.find("BEGIN", body_start, body_start + 65536)
    body = _KEY_BODY.match(text, body_start, body_start + 65536 if limit < 0 else limit)
    body_end = body.end() if body else body_start
    end_marker = _KEY_END.search(text, body_start, body_end)
    runs = list(_KEY_RUN.finditer(text, body_start, end_marker.start() if end_marker else body_end))
    if not runs:
        return None
    return start, end_marker.end() if end_marker else runs[-1].end()


_KEY_NAMES = ("api", "access", "private", "auth", "signing", "encryption", "master", "client", "service", "account")
# A secret-looking name assigned (=, :=, :, =>, ==) a quoted literal: password, passwd, pass, passphrase,
# secret, token, credential(s), api/access/private/auth/... key. The name must not go on with a lower-case
# letter (tokenizer, secretary, passage), and a type annotation may sit between name and "=".
_ASSIGNMENT = re.compile(
    r"(?P<name>(?i:pass(?:w(?:or)?d|phrase)?|pwd|secret|token|credential|"
    rf"(?:{'|'.join(_KEY_NAMES)})[_-]?key)"
    r"s?(?![a-z])[\w.-]{0,40}?)[\"'\]]{0,2}"
    r"(?:\s*:\s*(?:&(?:'\w+\s+)?)?[\w.\[\]<>|, ]{1,40}?(?=\s*=))?"
    r"\s*(?P<op>={1,3}|!==?|:=|=>|:)\s*(?:[rRbBuU]{1,2}|@)?"
    r"(?P<q>[\"'`])(?P<value>[^\"'`\\\n]{8,256})(?P=q)"
)
_PLACEHOLDER_WORDS = re.compile(
    r"(?i)example|placeholder|changeme|change[_-]me|dummy|redacted|your[_-]|xxxx|\*\*\*|\.\.\.|sample|todo"
)
_TEMPLATE = re.compile(r"[{}<>\s\\]|^\$|%[sdr(]|^(?:https?|ftp|s3|gs|file)://|^[/~.]")
_ENTROPY = Base64HighEntropyString()


def _class_changes(value: str) -> float:
    """Changes between lower case, upper case and digits per letter or digit, not counting the start of a
    capitalised word: random strings score about 0.4-0.5, identifiers and words under 0.2."""
    classes = ["d" if c.isdigit() else "u" if c.isupper() else "l" for c in value if c.isalnum()]
    changes = sum(1 for a, b in itertools.pairwise(classes) if a != b and (a, b) != ("u", "l"))
    return changes / max(1, len(classes) - 1)


def looks_like_secret_value(value: str) -> bool:
    """Whether a literal assigned to a secret-looking name is a real secret rather than code or a label.

    Random-looking: not a template, path, URL or placeholder; some entropy; and letters, digits and cases
    mixed the way random strings mix them (so "bos_token_id", "X-Api-Token" or "gpt2-medium" are labels).
    Low-entropy human passwords such as "password123" are not caught.
    """
    if len(value) < 8 or not any(c.isalpha() for c in value):
        return False
    if _TEMPLATE.search(value) or _PLACEHOLDER_WORDS.search(value):
        return False
    entropy = _ENTROPY.calculate_shannon_entropy(value)
    if entropy < 2.5:
        return False
    if _class_changes(value) >= 0.25:
        return True
    return len(value) >= 20 and entropy >= 4.0 and any(c.isdigit() for c in value)


# Passwords of documentation and examples in URLs ("user:pass" at a host), not secrets.
_EXAMPLE_PASSWORDS = frozenset(
    (
        "pass",
        "password",
        "passwd",
        "pwd",
        "pw",
        "secret",
        "token",
        "key",
        "apikey",
        "changeme",
        "example",
        "placeholder",
        "mypassword",
        "yourpassword",
        "xxx",
        "xxxx",
        "xxxxxx",
        "repo",
    )
)
_BASIC_AUTH_USER = re.compile(r"://([^:/\s]*):")


def _basic_auth_ok(m: re.Match[str], value: str) -> bool:
    user = _BASIC_AUTH_USER.match(m.group(0))
    if re.search(r"[{}$%<>*]", value) or value.lower() in _EXAMPLE_PASSWORDS:
        return False
    return not (user and user.group(1).lower() == value.lower())


def _aws_key_id_ok(m: re.Match[str], value: str) -> bool:
    """Exactly 20 characters (not a piece of a longer token) and not a DNA sequence."""
    return len(value) == 20 and not set(value) <= set("ACGT")


def _jwt_ok(m: re.Match[str], value: str) -> bool:
    return bool(JwtTokenDetector.is_formally_valid(m.group(0)))


# Names whose last part says the value itself is a credential (not its type, field, header or file).
_SECRET_TAIL = re.compile(
    r"(?i)(?:pass(?:w(?:or)?d|phrase)|pwd|secret|token|credentials?|(?:api|access|secret|private|auth|client|"
    r"signing|encryption|master|service|account)[_-]?key)s?"
    r"(?:[_-]?(?:prod|production|dev|development|staging|stage|local|live|qa|uat|\d{1,3}))?$"
)
# Values of fixtures and documentation, and words that name a kind of credential rather than being one.
_FIXTURE_WORDS = re.compile(r"(?i)test|fake|mock|dummy|stub|foo|bar|baz|invalid|wrong|insecure|not[_-]?a")
_NOT_VALUES = frozenset(
    {
        "bearer",
        "basic",
        "token",
        "password",
        "passwd",
        "secret",
        "true",
        "false",
        "string",
        "str",
        "bytes",
        "int",
        "optional",
        "required",
        "hidden",
        "env",
        "environ",
        "password1",
        "secret_key",
        "api_key",
        "access_token",
        "object",
        "float",
        "boolean",
        "dict",
        "list",
        "tuple",
        "callable",
        "sequence",
        "mapping",
    }
)
# Identifiers and labels: snake_case, dotted.names, CONSTANT_CASE, kebab-case, Header-Names, TypeNames.
_LABEL = re.compile(
    r"_*[a-z][a-z0-9]*(?:[_.]+[a-z0-9]+)+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[a-z][a-z0-9]*(?:-[a-z0-9]+)+"
    r"|[A-Z][A-Za-z0-9]*(?:-[A-Z][A-Za-z0-9]*)+|[A-Z][a-z]+(?:[A-Z][a-z]+)+"
)
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.+/=@!#%^&*~:;,?|-]{6,256}")
# A model's vocabulary markers ("__start__", "|SPEAKER|", "<|endoftext|>", "[MASK]"): labels, not credentials.
_VOCAB_MARKER = re.compile(r"__\w+__|\|\w+\||<\|?[\w.-]+\|?>|\[\w+\]")
# The tokens of a model's vocabulary (bos_token, image_token, embed_tokens) are named like credentials.
_MODEL_TOKEN_NAME = re.compile(
    r"(?i)(?:^|_)(?:bos|eos|pad|unk|sep|cls|mask|image|audio|video|newline|start|end|special|embed|added|boi|eoi"
    r"|vision|fim|prefix|suffix|middle|speaker)_?tokens?(?:_id)?$"
)


def _secret_named(name: str, at: int, text: str) -> bool:
    """Whether `name` (starting at `at` in text) is a whole name whose last part is a secret word: `db_password`,
    `dbPassword`, `API_TOKEN`; not `bypass`, `token_type`, `password_field`."""
    if at > 0 and text[at - 1].isalpha() and not text[at].isupper():
        return False  # inside a word: byPass is a word boundary, bypass is not
    return _SECRET_TAIL.search(name) is not None


def plain_secret(value: str) -> bool:
    """A literal that a secret-named variable, key, DSN or header holds and that is a credential even when it
    is a plain word ("correcthorsebattery"): not empty, a placeholder, a fixture, a template or a label."""
    if not _PLAIN_VALUE.fullmatch(value) or value.lower() in _NOT_VALUES or value.lower() in _EXAMPLE_PASSWORDS:
        return False
    if _TEMPLATE.search(value) or _PLACEHOLDER_WORDS.search(value) or _FIXTURE_WORDS.search(value):
        return False
    if _LABEL.fullmatch(value) or _VOCAB_MARKER.fullmatch(value):
        return False  # an identifier (bos_token_id, my_secret_key) or a vocabulary marker, not a credential
    return len(set(value.lower())) >= 4 and not set(value) <= set("xX*.-_#=")


def _assignment_ok(m: re.Match[str], value: str) -> bool:
    if looks_like_secret_value(value):
        return True
    if m.group("op") in ("==", "===", "!=", "!=="):
        return False  # a comparison with a plain word checks a label (token == "#bygroup"), not a credential
    name = m.group("name")
    if _MODEL_TOKEN_NAME.search(name):
        return False  # a model's vocabulary token (pad_token = "__null__"), not a credential
    return _secret_named(name, m.start("name"), m.string) and plain_secret(value) and not _names_itself(name, value)


def _names_itself(name: str, value: str) -> bool:
    """A value that is its own name's secret word with digits ("token1234" for a token) is a fixture."""
    tail = _SECRET_TAIL.search(name)
    word = re.sub(r"[^a-z]", "", tail.group(0).lower()).rstrip("s") if tail else ""
    rest = value.lower().replace(word, "", 1) if word and word in value.lower() else None
    return rest is not None and not re.search(r"[a-z]", rest)  # the word and digits or symbols only


def _named_value_ok(m: re.Match[str], value: str) -> bool:
    """An environment lookup's default or a key: value line: the name must be a secret's, the value plain."""
    name = m.group("name")
    return _SECRET_TAIL.search(name.replace("-", "_")) is not None and plain_secret(value)


def _plain_ok(m: re.Match[str], value: str) -> bool:
    return plain_secret(value)


def _in_string(text: str, pos: int) -> bool:
    """Whether pos sits inside a string literal of its line (an odd number of one kind of quote before it):
    `password=v` in "host=db password=v" is a connection string, in f(password=v) a keyword argument."""
    line = text[text.rfind("\n", 0, pos) + 1 : pos].replace("\\\\", "").replace('\\"', "").replace("\\'", "")
    return any(line.count(q) % 2 == 1 for q in "\"'`")


def _dsn_ok(m: re.Match[str], value: str) -> bool:
    return _in_string(m.string, m.start()) and plain_secret(value)


# Kinds whose values may be plain words (not random-looking): found again elsewhere only as whole literals.
_PLAIN_KINDS = frozenset(
    {
        "basic_auth",
        "env_default",
        "dsn_password",
        "url_password",
        "auth_header",
        "secret_key_value",
        "secret_assignment",
    }
)
_Q = r"(?P<q>[\"'`])(?P<value>[^\"'`\\\n]{1,256})(?P=q)"
# The default of an environment lookup: os.environ.get("DB_PASSWORD", "v"), os.getenv("X") or "v",
# process.env.API_TOKEN || "v", process.env["API_TOKEN"] ?? "v".
_ENV_DEFAULT = (
    re.compile(r"(?:environ\.get|getenv)\(\s*[\"'](?P<name>[\w.-]{1,80})[\"']\s*,\s*" + _Q),
    re.compile(r"(?:environ\.get|getenv)\(\s*[\"'](?P<name>[\w.-]{1,80})[\"']\s*\)\s*or\s+" + _Q),
    re.compile(r"process\.env(?:\.|\[[\"'])(?P<name>\w{1,80})[\"']?\]?\s*(?:\|\||\?\?)\s*" + _Q),
)
# A password inside a connection string: libpq's "password=v" (and pwd=), JDBC's "?password=v"/"&password=v".
_DSN_PASSWORD = re.compile(
    r"(?i)(?<![\w-])(?:password|passwd|pwd|_authtoken|access_token|auth_token|api_?key|token|secret)="
    r"(?P<value>[^\s;&\"'`<>{}$,()\[\]]{1,256})"
)
# A URL with a password and no user (redis://:v@host), and Go's MySQL DSN (user:v@tcp(host)).
_URL_NO_USER = re.compile(r"://:(?P<value>[^@/\s\"'`]{1,256})@")
_MYSQL_DSN = re.compile(r"(?<![\w/:])\w{1,64}:(?P<value>[^@/\s\"'`:]{1,256})@(?:tcp|unix)\(")
# An Authorization header's credentials (Bearer, Basic, token), in code, curl, JSON or YAML.
_AUTH_HEADER = re.compile(
    r"(?i)authorization[\"']?\s*[:=,]\s*[\"']?\s*(?:bearer|basic|token)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,512})"
)
# key: value and NAME=value lines of YAML, .env files, shell and Dockerfiles (unquoted or quoted), the key a
# secret's: "  password: v", "export DB_PASSWORD=v", "ENV API_TOKEN v", "ARG NPM_TOKEN=v". A lower-case name
# with "=" is a keyword argument in code (password=pw), so "=" takes an upper-case name or export/ENV/ARG.
_KEY_VALUE_LINE = re.compile(
    r"(?m)^[ \t]*(?:- )?(?:"
    r"(?P<name>[A-Za-z_][\w.-]{0,80}):[ \t]+"
    r"|(?:export[ \t]+|ENV[ \t]+|ARG[ \t]+)(?P<name2>[A-Za-z_][\w.-]{0,80})(?:=|[ \t]+)"
    r"|(?P<name3>[A-Z_][A-Z0-9_]{0,80})="
    r")(?P<q>[\"']?)(?P<value>[^\s\"'#,;:()\[\]{}]{1,256})(?P=q)[ \t]*(?:#.*)?$"
)


# An environment variable set for one command: PGPASSWORD=v psql ...
_ENV_PREFIX = re.compile(
    r"(?m)(?:^|[;&|(][ \t]*)(?P<name3>[A-Z_][A-Z0-9_]{0,80})=(?P<q>[\"']?)(?P<value>[^\s\"'#$;&|]{1,256})(?P=q)"
    r"[ \t]+[\w./-]"
)


def _key_value_ok(m: re.Match[str], value: str) -> bool:
    groups = m.groupdict()
    if groups.get("name") and not (re.search(r"[\d\W_]", value) or (value.islower() and len(value) >= 10)):
        return False  # `token: object` is an annotation in code; a YAML secret has digits, symbols or length
    name = groups.get("name") or groups.get("name2") or groups.get("name3") or ""
    return _SECRET_TAIL.search(name.replace("-", "_").replace(".", "_")) is not None and plain_secret(value)


# AWS's secret access key passed positionally next to its key id, as boto3.client(..., "AKIA...", "secret").
_AWS_POSITIONAL = re.compile(r"(?P<q>[\"'])(?P<value>[A-Za-z0-9/+]{40})(?P=q)")


_DETECTORS: tuple[_Detector, ...] = (
    _Detector(
        "private_key",
        ("private key", "putty-user-key"),
        _plugin(PrivateKeyDetector, token=False),
        expand=_private_key_block,
    ),
    _Detector(
        "aws_access_key",
        ("akia", "asia", "abia", "acca", "a3t"),
        _plugin(AWSKeyDetector)[:1],
        extend=_TOKEN,
        check=_aws_key_id_ok,
    ),
    _Detector("aws_secret_key", ("aws",), _plugin(AWSKeyDetector, token=False)[1:], group=1),
    _Detector(
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        (
            *_plugin(GitHubTokenDetector),
            re.compile(r"(?<![A-Za-z0-9])github_pat_[A-Za-z0-9_]{40,}"),
        ),  # no plugin for github_pat_
        extend="A-Za-z0-9_",
    ),
    _Detector(
        "gitlab_token",
        ("glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "gr1348941", "glcbt-", "glimt-", "glptt-", "glagent-"),
        _plugin(GitLabTokenDetector),
        extend=_TOKEN,
    ),
    _Detector("slack", ("xox", "hooks.slack.com"), _plugin(SlackDetector), extend=_TOKEN),
    _Detector("stripe", ("k_live_",), _plugin(StripeDetector), extend="A-Za-z0-9"),
    _Detector("google_api_key", ("aiza",), (re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}"),), extend=_TOKEN),
    _Detector("openai", ("t3blbkfj",), _plugin(OpenAIDetector), extend=_TOKEN),
    _Detector("pypi_token", ("pypi-ag",), _plugin(PypiTokenDetector), extend=_TOKEN),
    _Detector("sendgrid", ("sg.",), _plugin(SendGridDetector), extend=_TOKEN),
    _Detector("square_oauth", ("sq0csp-",), _plugin(SquareOAuthDetector), extend=_TOKEN),
    _Detector(
        "jwt",
        ("eyj",),
        _plugin(JwtTokenDetector),
        extend="A-Za-z0-9_\\-.+/=",
        check=_jwt_ok,
    ),
    _Detector("basic_auth", ("://",), _plugin(BasicAuthDetector, token=False), group=1, check=_basic_auth_ok),
    _Detector("aws_secret_key", ("akia", "asia"), (_AWS_POSITIONAL,), group="value"),
    _Detector(
        "env_default", ("getenv", "environ.get", "process.env"), _ENV_DEFAULT, group="value", check=_named_value_ok
    ),
    _Detector(
        "dsn_password",
        ("password=", "passwd=", "pwd=", "token=", "secret=", "key="),
        (_DSN_PASSWORD,),
        group="value",
        check=_dsn_ok,
    ),
    _Detector("url_password", ("://:", "@tcp(", "@unix("), (_URL_NO_USER, _MYSQL_DSN), group="value", check=_plain_ok),
    _Detector("auth_header", ("authorization",), (_AUTH_HEADER,), group="value", check=_plain_ok),
    _Detector(
        "secret_key_value",
        ("pass", "pwd", "secret", "token", "credential", "key"),
        (_KEY_VALUE_LINE, _ENV_PREFIX),
        group="value",
        check=_key_value_ok,
    ),
    _Detector(
        "secret_assignment",
        (
            "pass",
            "pwd",
            "secret",
            "token",
            "credential",
            *(f"{p}{sep}key" for p in _KEY_NAMES for sep in ("", "_", "-")),
        ),
        (_ASSIGNMENT,),
        group="value",
        check=_assignment_ok,
        at_hints=True,
    ),
)


@cache
def _automaton() -> tuple[ahocorasick_rs.AhoCorasick, list[int]]:
    hints: list[str] = []
    owner: list[int] = []
    for i, det in enumerate(_DETECTORS):
        for hint in det.hints:
            hints.append(hint)
            owner.append(i)
    return ahocorasick_rs.AhoCorasick(hints), owner


def _lower_same_length(text: str) -> str:
    """text.lower() with the same character offsets (only U+0130 grows when lower-cased)."""
    low = text.lower()
    if len(low) != len(text):
        low = text.replace("\u0130", "i").lower()
    return low if len(low) == len(text) else text


def _candidates(text: str) -> Iterator[tuple[_Detector, int, int, list[int]]]:
    """(detector, start, end, hint starts) of each candidate line: one holding a hint of the detector."""
    automaton, owner = _automaton()
    low = _lower_same_length(text)
    lines: dict[tuple[int, int], tuple[int, list[int]]] = {}  # in order of each line's first hit
    line_start = line_end = -1
    for pattern, start, _end in automaton.find_matches_as_indexes(low, overlapping=True):
        if not line_start <= start < line_end:  # hits come in order: find each line once
            line_start = text.rfind("\n", 0, start) + 1
            line_end = text.find("\n", start)
            line_end = len(text) if line_end < 0 else line_end
        key = (owner[pattern], line_start)
        if key in lines:
            lines[key][1].append(start)
        else:
            lines[key] = (line_end, [start])
    for (det_index, start), (end, hints) in lines.items():
        yield _DETECTORS[det_index], start, end, hints


def _matches(
    det: _Detector, pattern: re.Pattern[str], text: str, start: int, end: int, hints: list[int]
) -> Iterator[re.Match[str]]:
    """pattern.finditer(text, start, end), tried only at the hints when the detector's matches start there."""
    if not det.at_hints:
        yield from pattern.finditer(text, start, end)
        return
    pos = start
    for at in sorted(set(hints)):
        if at >= pos:
            m = pattern.match(text, at, end)
            if m is not None:
                yield m
                pos = m.end()


@cache
def _run(chars: str) -> re.Pattern[str]:
    return re.compile(f"[{chars}]*")


def _extend(text: str, start: int, end: int, chars: str, reach: int = 4096) -> tuple[int, int]:
    """Grow a span over `chars` on both sides (at most `reach` each way): a token longer than its pattern
    is replaced whole."""
    if not chars:
        return start, end
    run = _run(chars)
    back = run.match(text[max(0, start - reach) : start][::-1])
    ahead = run.match(text, end, min(len(text), end + reach))
    return start - (back.end() if back else 0), ahead.end() if ahead else end


def find_secrets(text: str) -> list[tuple[int, int, str]]:
    """Character spans (start, end, kind) of the secret values in text, sorted and not overlapping."""
    found: list[tuple[int, int, str]] = []
    for det, line_start, line_end, hints in _candidates(text):
        covered = -1  # end of this detector's last span on the line: a run of tokens is searched once
        for pattern in det.patterns:
            for m in _matches(det, pattern, text, line_start, line_end, hints):
                if det.expand is not None:
                    span = det.expand(text, m)
                    if span is None:
                        continue
                    start, end = span
                else:
                    start, end = m.span(det.group)
                    if start < 0 or start == end or start < covered:
                        continue
                    start, end = _extend(text, start, end, det.extend)
                    if det.check and not det.check(m, text[start:end]):
                        continue
                found.append((start, end, det.kind))
                covered = max(covered, end)
    # The same random-looking value elsewhere in the file (used again without a telltale name) is a secret too.
    # A plain-word value is found again only as a whole string literal, never as a piece of code.
    kind_of = {text[s:e]: k for s, e, k in found if k != "private_key"}
    for value, kind in sorted(kind_of.items()):
        if looks_like_secret_value(value) or (kind not in _PLAIN_KINDS and len(value) >= 16):
            reuse = rf"(?<![\w]){re.escape(value)}(?![\w])"
        else:
            reuse = rf"(?<=[\"'`]){re.escape(value)}(?=[\"'`])"
        for m in re.finditer(reuse, text):
            found.append((m.start(), m.end(), kind))
    return _merge(found)


def _merge(spans: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping spans become one, named after the first (the most specific detector on a tie)."""
    rank = {det.kind: i for i, det in enumerate(_DETECTORS)}
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(spans, key=lambda s: (s[0], -s[1], rank[s[2]])):
        if merged and start < merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2])
        else:
            merged.append((start, end, kind))
    return merged


def scan_secrets(text: str, cfg: SecretsConfig) -> SecretScan:
    """Replace exactly each detected secret value (not its line) by cfg.placeholder, so the code stays valid."""
    spans = find_secrets(text)
    if not spans:
        return SecretScan(text, 0, {})
    pieces: list[str] = []
    kinds: dict[str, int] = {}
    pos = 0
    for start, end, kind in spans:
        pieces.append(text[pos:start])
        pieces.append(cfg.placeholder)
        kinds[kind] = kinds.get(kind, 0) + 1
        pos = end
    pieces.append(text[pos:])
    return SecretScan("".join(pieces), len(spans), dict(sorted(kinds.items())))
