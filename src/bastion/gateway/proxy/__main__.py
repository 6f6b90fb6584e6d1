"""`python -m bastion.gateway.proxy`: mint virtual keys and serve the proxy.

    python -m bastion.gateway.proxy mint --tenant acme --max-budget-usd 20 [--expires-in 30d]
    python -m bastion.gateway.proxy keys [--tenant acme]
    python -m bastion.gateway.proxy revoke <key_id>
    python -m bastion.gateway.proxy serve [--host 127.0.0.1] [--port 8700]

Keys live in `<home>/keys.db`, the deployment's one key store that `bastion serve --home <home>`
reads too (so a key minted here works on its `/openai/v1`), and spend in
`<home>/proxy-budgets.db` (SQLite; `home` is `BASTION_HOME`, default `.bastion`), so limits
hold across restarts. The gateway is built from
the settings: `tiers` and `default_model` (env `BASTION_*` or `bastion.toml`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bastion.errors import UserError
from bastion.gateway.proxy._keys import PostgresKeyStore, SQLiteKeyStore, mint_key, open_key_store, parse_duration

_DESCRIPTION = "Mint virtual keys and serve the Bastion OpenAI-compatible proxy."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bastion.gateway.proxy", description=_DESCRIPTION)
    parser.add_argument("--keys", type=Path, help="key store file (default <home>/keys.db)")
    sub = parser.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint", help="create a virtual key and print it (once)")
    mint.add_argument("--tenant", required=True)
    mint.add_argument("--user")
    mint.add_argument("--team")
    mint.add_argument("--model", action="append", dest="models", help="allowed model (repeat; default: all)")
    mint.add_argument("--max-budget-usd", type=float)
    mint.add_argument("--max-tokens", type=int)
    mint.add_argument("--expires-in", help="e.g. 30d, 12h, 90m: the key stops working after that long")
    listing = sub.add_parser("keys", help="list keys (ids and limits, never the keys themselves)")
    listing.add_argument("--tenant")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    serve = sub.add_parser("serve", help="serve the OpenAI-compatible proxy")
    serve.add_argument("--host", default=None, help="default: settings.server_host (127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="default: settings.server_port (8700)")
    return parser


async def _keys_command(args: argparse.Namespace, store: SQLiteKeyStore | PostgresKeyStore) -> int:
    if args.command == "mint":
        plaintext, record = await mint_key(
            store,
            tenant=args.tenant,
            user=args.user,
            team=args.team,
            models=args.models,
            max_budget_usd=args.max_budget_usd,
            max_tokens=args.max_tokens,
            expires_in=parse_duration(args.expires_in) if args.expires_in else None,
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
            f"max_tokens={k.max_tokens if k.max_tokens is not None else '-'}"
            f"{'  REVOKED' if k.revoked else '  EXPIRED' if not k.usable() else ''}"
        )
    return 0


def _serve(args: argparse.Namespace, store: SQLiteKeyStore | PostgresKeyStore) -> int:
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
    try:
        return _main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.keys is None:
        from bastion.config import get_settings

        settings = get_settings()
        opened = open_key_store(settings.home, settings.database_url)
    else:
        opened = SQLiteKeyStore(args.keys)
    with opened as store:  # PostgreSQL when BASTION_DATABASE_URL is set (a scaled-out deployment)
        if args.command == "serve":
            return _serve(args, store)
        return asyncio.run(_keys_command(args, store))


if __name__ == "__main__":
    sys.exit(main())
