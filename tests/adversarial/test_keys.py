"""Key lifecycle on a real `bastion serve`: removed, revoked and expired keys get 401 (also after
a restart), a viewer cannot act as an operator, and a proxy key minted exactly as the docs say
works on the server's `/openai/v1`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Served = Any  # tests/adversarial/conftest.py's `Served`
ServerFactory = Callable[..., Any]
KEYS_APP = f"{Path(__file__).with_name('keys_app.py')}:build"
CONFIG = {"key-a-op": ["a", "operator"], "key-a-view": ["a", "viewer"], "key-gone": ["a", "operator"]}


def call(served: Served, method: str, path: str, key: str | None, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(served.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def cli(*args: str, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bastion.cli", *(["--home", str(home)] if home else []), *args]
    env = {k: v for k, v in os.environ.items() if k != "BASTION_HOME"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def serve(factory: ServerFactory, home: Path, config: dict[str, list[str]], database: str | None = None) -> Served:
    return factory(KEYS_APP, home=home, database=database, env={"BASTION_TEST_API_KEYS": json.dumps(config)})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def test_a_key_removed_from_the_configuration_is_revoked_at_the_next_start(
    bastion_server: ServerFactory, tmp_path: Path, database: str | None
) -> None:
    home = tmp_path / "home"
    db = ["--database", database] if database else []
    first = serve(bastion_server, home, CONFIG, database)
    assert call(first, "GET", "/v1/runs", "key-gone")[0] == 200
    first.stop()

    # a fresh home on the same database is another API server of the same deployment
    home2 = tmp_path / "home2" if database else home
    second = serve(bastion_server, home2, {k: v for k, v in CONFIG.items() if k != "key-gone"}, database)
    status, body = call(second, "GET", "/v1/runs", "key-gone")
    assert status == 401, body
    assert call(second, "GET", "/v1/runs", "key-a-op")[0] == 200
    assert "no longer configured" in second.output()
    listing = cli("keys", "list", "--all", *db, cwd=tmp_path, home=home).stdout
    assert "removed from the configuration" in listing
    assert "key-gone" not in listing  # ids only, never keys
    second.stop()

    third = serve(bastion_server, home, {k: v for k, v in CONFIG.items() if k != "key-gone"}, database)
    assert call(third, "GET", "/v1/runs", "key-gone")[0] == 401  # and it stays that way


def test_revoked_and_expired_keys_get_401_at_once_and_after_restart(
    bastion_server: ServerFactory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    served = serve(bastion_server, home, CONFIG)
    created = cli("keys", "create", "--tenant", "a", "--role", "operator", cwd=tmp_path, home=home)
    assert created.returncode == 0, created.stderr
    minted = created.stdout.strip()
    key_id = created.stderr.split("key id ")[1].split()[0]
    assert call(served, "GET", "/v1/runs", minted)[0] == 200

    revoked = cli("keys", "revoke", key_id[:8], cwd=tmp_path, home=home)  # a unique id prefix will do
    assert revoked.returncode == 0 and f"revoked api key {key_id}" in revoked.stdout
    assert call(served, "GET", "/v1/runs", minted)[0] == 401  # the running server sees it at once
    assert call(served, "GET", "/v1/runs", "key-a-op")[0] == 200

    # a configured key revoked by hand stays revoked though the configuration still lists it
    assert cli("keys", "revoke", "key-a-view", cwd=tmp_path, home=home).returncode == 0
    assert call(served, "GET", "/v1/runs", "key-a-view")[0] == 401

    expiring = cli("keys", "create", "--tenant", "a", "--role", "viewer", "--expires-in", "1h", cwd=tmp_path, home=home)
    soon = expiring.stdout.strip()
    assert call(served, "GET", "/v1/runs", soon)[0] == 200
    # Move its expiry into the past rather than sleeping for it.
    from bastion.server._auth import SQLiteApiKeyStore

    store = SQLiteApiKeyStore.for_home(home)
    store.add(soon, "a", "viewer", source="cli", expires_at=time.time() - 1)
    store.close()
    assert call(served, "GET", "/v1/runs", soon)[0] == 401
    assert "expired" in cli("keys", "list", "--all", cwd=tmp_path, home=home).stdout
    assert cli("keys", "revoke", "nothing-like-it", cwd=tmp_path, home=home).returncode == 1

    served.stop()
    again = serve(bastion_server, home, CONFIG)
    for key in (minted, soon, "key-a-view"):
        assert call(again, "GET", "/v1/runs", key)[0] == 401, key
    assert call(again, "GET", "/v1/runs", "key-a-op")[0] == 200


def test_a_viewer_cannot_do_what_an_operator_does(bastion_server: ServerFactory, tmp_path: Path) -> None:
    served = serve(bastion_server, tmp_path / "home", CONFIG)
    status, run = call(
        served,
        "POST",
        "/v1/runs",
        "key-a-op",
        {"agent": "bank", "input": "pay 5 to DE89370400440532013000", "wait": True},
    )
    assert status == 201, run
    attempts = [
        ("POST", "/v1/runs", {"agent": "echo", "input": "hi"}),
        ("POST", "/v1/threads", {}),
        ("DELETE", f"/v1/threads/{run['thread_id']}", None),
        ("POST", f"/v1/threads/{run['thread_id']}/fork", {}),
        ("POST", f"/v1/runs/{run['id']}/cancel", {}),
        ("POST", f"/v1/runs/{run['id']}/resume", {"decision": "approve"}),
        ("POST", f"/v1/approvals/{run['id']}", {"decision": "approve"}),
    ]
    for method, path, body in attempts:
        status, reply = call(served, method, path, "key-a-view", body)
        assert status == 403, (method, path, status, reply)
    # nothing the viewer tried took effect
    status, after = call(served, "GET", f"/v1/runs/{run['id']}", "key-a-view")
    assert status == 200 and after["status"] == run["status"]
    assert [r["id"] for r in call(served, "GET", "/v1/runs", "key-a-view")[1]] == [run["id"]]
    # no key, a malformed header or another scheme is not a viewer either
    assert call(served, "GET", "/v1/runs", None)[0] == 401
    assert call(served, "GET", "/v1/runs", "")[0] == 401
    assert call(served, "GET", "/v1/runs", "key-a-view ")[0] in (200, 401)  # trimmed or refused, never more


def _chat(served: Served, key: str, model: str = "cheap") -> tuple[int, Any]:
    return call(served, "POST", "/openai/v1/chat/completions", key,
                {"model": model, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


def test_a_proxy_key_minted_as_documented_works_on_bastion_serve(bastion_server: ServerFactory, tmp_path: Path) -> None:
    # docs/gateway-proxy.md, word for word, from the directory the server runs in (home `.bastion`)
    env = {k: v for k, v in os.environ.items() if k != "BASTION_HOME"}
    documented = "python -m bastion.gateway.proxy mint --tenant acme --user ana --model cheap --max-budget-usd 20"
    argv = [sys.executable, *documented.split()[1:]]
    minted = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert minted.returncode == 0, minted.stderr
    key = minted.stdout.strip()
    assert key.startswith("bst-")

    served = serve(bastion_server, tmp_path / ".bastion", CONFIG)
    status, body = _chat(served, key)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "hello from the cheap model"
    assert _chat(served, key, model="other")[0] in (400, 403, 404)  # the key is limited to `cheap`
    assert _chat(served, "bst-not-a-key")[0] == 401

    listing = subprocess.run([sys.executable, "-m", "bastion.gateway.proxy", "keys"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    key_id = listing.split()[0]
    revoke = [sys.executable, "-m", "bastion.gateway.proxy", "revoke", key_id]
    assert subprocess.run(revoke, cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False).returncode == 0
    assert _chat(served, key)[0] == 401
    # `bastion keys` sees the same store
    assert "revoked" in cli("keys", "list", "--all", cwd=tmp_path).stdout


@pytest.mark.parametrize("expires_in", ["1h"])
def test_an_expired_proxy_key_gets_401(bastion_server: ServerFactory, tmp_path: Path, expires_in: str) -> None:
    home = tmp_path / "home"
    env = {**{k: v for k, v in os.environ.items() if k != "BASTION_HOME"}, "BASTION_HOME": str(home)}
    argv = [sys.executable, "-m", "bastion.gateway.proxy", "mint", "--tenant", "acme", "--expires-in", expires_in]
    key = subprocess.run(
        argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    served = serve(bastion_server, home, CONFIG)
    assert _chat(served, key)[0] == 200
    import sqlite3

    db = sqlite3.connect(home / "keys.db")
    record = json.loads(db.execute("SELECT record FROM virtual_keys").fetchone()[0])
    record["expires_at"] = time.time() - 1
    db.execute("UPDATE virtual_keys SET record = ?", (json.dumps(record),))
    db.commit()
    db.close()
    assert _chat(served, key)[0] == 401
