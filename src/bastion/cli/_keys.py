"""`bastion keys create | list | revoke`: the deployment's one key store, `<home>/keys.db` (or
the PostgreSQL database given with `--database` / `BASTION_DATABASE_URL`).

It holds the server's API keys and the proxy's virtual keys (`python -m bastion.gateway.proxy
mint` writes to the same file); `list` and `revoke` cover both."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from rich.console import Console

from bastion.errors import UserError
from bastion.gateway.proxy import hash_key, open_key_store, parse_duration
from bastion.server import key_id_of, open_api_key_store

console = Console(stderr=True, highlight=False)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def create(home: Path, database: str | None, *, tenant: str, role: str, expires_in: str | None) -> int:
    seconds = parse_duration(expires_in) if expires_in else None
    store = open_api_key_store(home, database)
    try:
        key, principal = asyncio.run(store.mint(tenant, role, expires_in=seconds))  # type: ignore[arg-type]
    finally:
        store.close()
    print(key)
    until = f", expires {_when(dt.datetime.now(dt.UTC).timestamp() + seconds)} UTC" if seconds else ""
    console.print(
        f"key id {principal.key_id} (tenant={principal.tenant} role={principal.role}{until}); "
        "shown once: only its SHA-256 is stored"
    )
    return 0


def list_keys(home: Path, database: str | None, *, tenant: str | None, all_keys: bool) -> int:
    api = open_api_key_store(home, database)
    try:
        api_rows = api.keys(tenant)
    finally:
        api.close()
    with open_key_store(home, database) as proxy:
        proxy_rows = asyncio.run(proxy.list_keys(tenant))
    print(f"{'ID':<16} {'KIND':<6} {'TENANT':<12} {'ROLE/LIMITS':<24} {'SOURCE':<7} {'EXPIRES':<17} STATUS")
    shown = 0
    for a in api_rows:
        status = a.status()
        if status != "active" and not all_keys:
            continue
        why = f" ({a.revoked_reason})" if a.revoked_reason and status == "revoked" else ""
        print(
            f"{a.key_id:<16} {'api':<6} {a.tenant:<12} {a.role:<24} {a.source:<7} {_when(a.expires_at):<17} "
            f"{status}{why}"
        )
        shown += 1
    for p in proxy_rows:
        status = "revoked" if p.revoked else "active" if p.usable() else "expired"
        if status != "active" and not all_keys:
            continue
        limits = f"usd={p.max_budget_usd if p.max_budget_usd is not None else '-'}"
        limits += f" models={','.join(sorted(p.models)) if p.models is not None else '*'}"
        print(f"{p.key_id:<16} {'proxy':<6} {p.tenant:<12} {limits:<24} {'cli':<7} {_when(p.expires_at):<17} {status}")
        shown += 1
    if not shown:
        console.print("no keys" + ("" if all_keys else " (revoked and expired ones are hidden: --all shows them)"))
    return 0


def revoke(home: Path, database: str | None, ref: str) -> int:
    """Revoke by id, by a unique prefix of an id, or by the key itself."""
    api = open_api_key_store(home, database)
    try:
        with open_key_store(home, database) as proxy:
            ids = [("api", a.key_id) for a in api.keys()]
            ids += [("proxy", p.key_id) for p in asyncio.run(proxy.list_keys())]
            by_hash = asyncio.run(proxy.get(hash_key(ref)))
            if by_hash is not None:
                matches = [("proxy", by_hash.key_id)]
            else:
                exact = [(kind, i) for kind, i in ids if i in (ref, key_id_of(ref))]
                matches = exact or [(kind, i) for kind, i in ids if len(ref) >= 4 and i.startswith(ref)]
            if not matches:
                console.print(f"no key matches {ref!r}; `bastion keys list --all` shows the ids")
                return 1
            if len(matches) > 1:
                names = ", ".join(i for _, i in matches)
                raise UserError(f"{ref!r} matches several keys ({names}); give more of the id")
            kind, key_id = matches[0]
            done = api.revoke(key_id) if kind == "api" else asyncio.run(proxy.revoke(key_id))
    finally:
        api.close()
    if not done:
        console.print(f"{kind} key {key_id} was already revoked")
        return 0
    print(f"revoked {kind} key {key_id}")
    return 0


__all__ = ["create", "list_keys", "revoke"]
