"""`python -m bastion.gateway.proxy`: mint virtual keys and serve the proxy.

    python -m bastion.gateway.proxy mint --tenant acme --max-budget-usd 20
    python -m bastion.gateway.proxy keys [--tenant acme]
    python -m bastion.gateway.proxy revoke <key_id>
    python -m bastion.gateway.proxy serve [--host 127.0.0.1] [--port 8700]

Keys live in `<home>/proxy-keys.db` and spend in `<home>/proxy-budgets.db` (SQLite; `home` is
`BASTION_HOME`, default `.bastion`), so limits hold across restarts. The gateway is built from
the settings: `tiers` and `default_model` (env `BASTION_*` or `bastion.toml`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bastion.gateway.proxy._keys import SQLiteKeyStore, mint_key

_DESCRIPTION = "Mint virtual keys and serve the Bastion OpenAI-compatible proxy."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bastion.gateway.proxy", description=_DESCRIPTION)
    parser.add_argument("--keys", type=Path, help="key store file (default <home>/proxy-keys.db)")
    sub = parser.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint", help="create a virtual key and print it (once)")
    mint.add_argument("--tenant", required=True)
    mint.add_argument("--user")
    mint.add_argument("--team")
    mint.add_argument("--model", action="append", dest="models", help="allowed model (repeat; default: all)")
    mint.add_argument("--max-budget-usd", type=float)
    mint.add_argument("--max-tokens", type=int)
    listing = sub.add_parser("keys", help="list keys (ids and limits, never the keys themselves)")
    listing.add_argument("--tenant")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    serve = sub.add_parser("serve", help="serve the OpenAI-compatible proxy")
    serve.add_argument("--host", default=None, help="default: settings.server_host (127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="default: settings.server_port (8700)")
    return parser


async def _keys_command(args: argparse.Namespace, store: SQLiteKeyStore) -> int:
    if args.command == "mint":
        plaintext, record = await mint_key(
            store,
            tenant=args.tenant,
            user=args.user,
            team=args.team,
            models=args.models,
            max_budget_usd=args.max_budget_usd,
            max_tokens=args.max_tokens,
        )
        print(plaintext)
        print(
            f"key id {record.key_id} (tenant {record.tenant}); the key is not stored and cannot be shown again",
            file=sys.stderr,
        )
        return 0
    if args.command == "revoke":
        if await store.revoke(args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"no key with id {args.key_id!r}; list them with `keys`", file=sys.stderr)
        return 1
    for k in await store.list_keys(args.tenant):
        models = ",".join(sorted(k.models)) if k.models is not None else "*"
        print(
            f"{k.key_id}  tenant={k.tenant} user={k.user or '-'} team={k.team or '-'} models={models} "
            f"max_usd={k.max_budget_usd if k.max_budget_usd is not None else '-'} "
            f"max_tokens={k.max_tokens if k.max_tokens is not None else '-'}{'  REVOKED' if k.revoked else ''}"
        )
    return 0


def _serve(args: argparse.Namespace, store: SQLiteKeyStore) -> int:
    import uvicorn

    from bastion.config import get_settings
    from bastion.gateway import Budget, Gateway, SQLiteBudgetStore
    from bastion.gateway.proxy._app import create_proxy_app

    settings = get_settings()
    gateway = Gateway(
        tiers=settings.tiers,
        default=settings.default_model,
        budgets=Budget(store=SQLiteBudgetStore(settings.path("proxy-budgets.db"))),
    )
    app = create_proxy_app(gateway, keys=store)
    host = args.host or settings.server_host
    port = args.port if args.port is not None else settings.server_port
    print(f"Bastion proxy on http://{host}:{port}/v1 (keys: {store.path})", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = args.keys
    if path is None:
        from bastion.config import get_settings

        path = get_settings().path("proxy-keys.db")
    with SQLiteKeyStore(path) as store:
        if args.command == "serve":
            return _serve(args, store)
        return asyncio.run(_keys_command(args, store))


if __name__ == "__main__":
    sys.exit(main())
