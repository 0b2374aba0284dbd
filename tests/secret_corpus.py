"""A planted-secrets corpus: credentials in the contexts real repositories hold them, in Python, JS/TS, Go, YAML,
JSON, shell and Dockerfiles, and lookalikes that must stay (hashes, UUIDs, fixtures, placeholders, labels).

Every value is built by concatenation, so this file holds no literal a scanner would flag.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path


def _v(*parts: str) -> str:
    return "".join(parts)


AKIA = _v("AKIA", "ZP4Q7W2M", "9XKD3VTB")
AWS_SECRET = _v("q9Zr4Lw2", "Xv7Tn3Kp", "8Ms1Hd6J", "f5Gb0Yc2", "Ua7Ee9Ri")
BASIC = base64.b64encode(_v("svc-reports:", "Qm8", "vZ2kLx").encode()).decode()

# (relative path, text with {name} slots); PLANTED maps each slot to its value.
PLANTED: dict[str, str] = {
    "py_env_default": _v("Tr0ub4dor", "Horse77"),
    "py_env_or": _v("local", "devtoken", "5521"),
    "py_libpq": _v("kP9mz", "2Qv"),
    "py_jdbc": _v("Zebra", "Lamp42"),
    "py_redis": _v("cache", "Pass9x"),
    "py_yaml_password": _v("yamlPass", "2024"),
    "py_yaml_secret_key": _v("d8f7a6s5", "qwe4r3t2"),
    "py_boto_id": AKIA,
    "py_boto_secret": AWS_SECRET,
    "py_bearer": _v("abc123", "XYZ789def456"),
    "py_basic": BASIC,
    "py_plain_password": _v("correct", "horsebattery"),
    "py_plain_smtp": _v("sunshine", "meadow"),
    "py_kwarg": _v("bluebird", "river"),
    "js_env_or": _v("jsDev", "Pass431"),
    "js_env_nullish": _v("quiet", "Tok3n9"),
    "js_bearer": _v("eyQ3dF", "9sLmK2pW"),
    "js_mongo": _v("m0ngo", "Secr3t"),
    "js_plain": _v("orange", "tulip88"),
    "ts_field": _v("tsSecret", "Value91"),
    "ts_redis": _v("redisTs", "Pw55"),
    "go_plain": _v("fallback", "Pass12"),
    "go_dsn": _v("goPg", "Pass77"),
    "go_bearer": _v("goBearer", "Tok9876"),
    "go_api_key": _v("orchard", "lantern9"),
    "go_mysql": _v("mysql", "Pw4455"),
    "yaml_password": _v("yamlTop", "Secret1"),
    "yaml_secret_key": _v("nestedKey", "778899"),
    "yaml_api_token": _v("quotedYaml", "Tok44"),
    "yaml_url": _v("yamlUrl", "Pw66"),
    "yaml_redis": _v("yamlRedis", "Pw11"),
    "json_password": _v("jsonPass", "Word9"),
    "json_client_secret": _v("jsonClient", "Sec88"),
    "json_bearer": _v("jsonBearer", "Tok777"),
    "json_dsn": _v("jsonDsn", "Pw321"),
    "sh_export": _v("shExport", "Pw90"),
    "sh_curl": _v("curlBearer", "Tok12345"),
    "sh_pgpassword": _v("pgEnv", "Pw8080"),
    "sh_api_key": _v("shQuoted", "Key4242"),
    "docker_env": _v("dockerEnv", "Pw1"),
    "docker_env_space": _v("dockerSpace", "Tok2"),
    "docker_arg": _v("npm_", "dockerArg", "Tok3"),
    "docker_npmrc": _v("npmrc", "AuthTok4"),
}

FILES: dict[str, str] = {
    "app/settings.py": '''"""Settings read from the environment, with local defaults."""

import os

import boto3
import psycopg2
import redis
import requests

DB_PASSWORD = os.environ.get("DB_PASSWORD", "{py_env_default}")
API_TOKEN = os.getenv("API_TOKEN") or "{py_env_or}"
conn = psycopg2.connect("host=db user=app password={py_libpq} dbname=orders")
JDBC_URL = "jdbc:postgresql://db:5432/app?user=app&password={py_jdbc}"
cache = redis.from_url("redis://:{py_redis}@cache:6379/0")
CONFIG = """
database:
  password: {py_yaml_password}
  secret_key: {py_yaml_secret_key}
"""
s3 = boto3.client("s3", "us-east-1", None, True, None, None, "{py_boto_id}", "{py_boto_secret}")
session = requests.Session()
session.headers.update({{"Authorization": "Bearer {py_bearer}"}})
REPORTS = {{"Authorization": "Basic {py_basic}"}}
DB_PASSWORD_PROD = "{py_plain_password}"
smtp_password = "{py_plain_smtp}"


def connect(user):
    return login(user=user, password="{py_kwarg}")
''',
    "web/client.js": """// The API client.
const dbPassword = process.env.DB_PASSWORD || "{js_env_or}";
const token = process.env.GH_TOKEN ?? "{js_env_nullish}";

export async function pulls() {{
  return fetch("https://api.example.org/pulls", {{ headers: {{ Authorization: "Bearer {js_bearer}" }} }});
}}

const mongoUrl = "mongodb://admin:{js_mongo}@mongo:27017/app";
const adminPassword = "{js_plain}";
""",
    "web/store.ts": """export class Store {{
  private readonly apiSecret: string = "{ts_field}";
  readonly redisUrl = "redis://:{ts_redis}@localhost:6379";
}}
""",
    "cmd/server/main.go": """package main

import (
\t"database/sql"
\t"net/http"
\t"os"
)

const apiKey = "{go_api_key}"

func main() {{
\tpassword := os.Getenv("DB_PASS")
\tif password == "" {{
\t\tpassword = "{go_plain}"
\t}}
\tdsn := "host=localhost user=app password={go_dsn} sslmode=disable"
\tdb, _ := sql.Open("mysql", "app:{go_mysql}@tcp(db:3306)/shop")
\treq, _ := http.NewRequest("GET", "https://api.example.org", nil)
\treq.Header.Set("Authorization", "Bearer {go_bearer}")
\t_, _, _ = dsn, db, req
}}
""",
    "deploy/values.yaml": """database:
  host: db
  password: {yaml_password}
  secret_key: {yaml_secret_key}
service:
  api_token: "{yaml_api_token}"
  url: postgres://app:{yaml_url}@db/app
  redis_url: redis://:{yaml_redis}@cache:6379
""",
    "deploy/config.json": """{{
  "password": "{json_password}",
  "clientSecret": "{json_client_secret}",
  "headers": {{"Authorization": "Bearer {json_bearer}"}},
  "dsn": "host=db password={json_dsn} user=x"
}}
""",
    "scripts/deploy.sh": """#!/bin/sh
export DB_PASSWORD={sh_export}
curl -H "Authorization: Bearer {sh_curl}" https://api.example.org/deploy
PGPASSWORD={sh_pgpassword} psql -h db -U app
API_KEY="{sh_api_key}"
""",
    "Dockerfile": """FROM python:3.11-slim
ENV DB_PASSWORD={docker_env}
ENV API_TOKEN {docker_env_space}
ARG NPM_TOKEN={docker_arg}
RUN echo "//registry.npmjs.org/:_authToken={docker_npmrc}" > ~/.npmrc
""",
}


def lookalikes() -> dict[str, list[str]]:
    """Per file: values that are not secrets and must stay as they are (200 in all)."""
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20)]
    md5s = [hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest() for i in range(10)]
    shas = [hashlib.sha1(str(i).encode(), usedforsecurity=False).hexdigest() for i in range(10)]
    uuids = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(40)]
    placeholders = [
        "changeme",
        "your-password-here",
        "<password>",
        "${DB_PASSWORD}",
        "$DB_PASSWORD",
        "xxxxxxxx",
        "********",
        "example-token",
        "REPLACE_ME",
        "TODO",
        "<your-api-key>",
        "{{ secret }}",
        "%(password)s",
        "sample-secret",
        "placeholder",
        "dummy-password",
        "test-token",
        "fake-secret",
        "mock-api-key",
        "not-a-real-secret",
    ]
    labels = [
        "bearer",
        "password_confirmation",
        "X-Api-Key",
        "prod-db-credentials",
        "secret_access_key",
        "bos_token_id",
        "gpt2-medium",
        "bert-base-uncased",
        "Authorization",
        "token_type",
        "access_token",
        "refresh_token",
        "utf-8",
        "HS256",
        "RS256",
        "application/json",
        "oauth2",
        "client_credentials",
        "basic",
        "password",
    ]
    urls = [
        "postgres://localhost/app",
        "redis://cache:6379/0",
        "https://example.org/login",
        "mysql://db/shop",
        "amqp://rabbit:5672",
        "https://api.github.com/repos",
        "s3://bucket/key",
        "file:///etc/hosts",
        "http://localhost:8080/token",
        "https://oauth2.googleapis.com/token",
    ]
    versions = [f"{a}.{b}.{c}" for a, b, c in zip(range(1, 21), range(20), range(5, 25), strict=True)]
    b64 = [base64.b64encode(hashlib.sha256(f"img{i}".encode()).digest()).decode() for i in range(10)]
    identifiers = [f"user_{i}_profile_id" for i in range(10)] + [f"PasswordResetView{i}" for i in range(10)]
    fixtures = [f"wrong-password-{i}" for i in range(10)] + [f"test-pass-{i}" for i in range(10)]
    return {
        "hashes": hashes + md5s + shas,
        "uuids": uuids,
        "placeholders": placeholders,
        "labels": labels,
        "urls": urls,
        "versions": versions,
        "b64": b64,
        "identifiers": identifiers,
        "fixtures": fixtures,
    }


LOOKALIKE_FILES: dict[str, str] = {
    "hashes": 'EXPECTED_SHA256_{i} = "{v}"\ncommit_{i} = "{v}"\n',
    "uuids": 'request_id_{i} = "{v}"\n',
    "placeholders": 'password = "{v}"\n',
    "labels": 'TOKEN_KIND_{i} = "{v}"\n',
    "urls": 'ENDPOINT_{i} = "{v}"\n',
    "versions": 'VERSION_{i} = "{v}"\n',
    "b64": 'ICON_{i} = "{v}"\n',
    "identifiers": 'view_name_{i} = "{v}"\n',
    "fixtures": 'def test_login_rejects_{i}(client):\n    assert not client.login(user="ada", password="{v}")\n',
}


def write_secret_corpus(root: Path) -> tuple[dict[str, str], list[str]]:
    """Write the planted repository under root; return (slot -> planted value, lookalike values)."""
    for rel, template in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**PLANTED))
    looks = lookalikes()
    for kind, values in looks.items():
        body = "".join(LOOKALIKE_FILES[kind].format(i=i, v=v) for i, v in enumerate(values))
        (root / "app" / f"known_{kind}.py").write_text(f'"""Known {kind}: not secrets."""\n\n' + body)
    return dict(PLANTED), [v for values in looks.values() for v in values]
