"""`bastion` command line: serve, worker, run, trace, eval, keys, audit, memory, doctor, bench, demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bastion.errors import BastionError


def _env(args: argparse.Namespace) -> object:
    from bastion.server import ProjectEnv

    return ProjectEnv(home=Path(args.home), database_url=args.database or os.environ.get("BASTION_DATABASE_URL"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion", description="A production runtime for AI agents.")
    p.add_argument("--home", default=os.environ.get("BASTION_HOME", ".bastion"), help="embedded data directory")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP API, web UI and (by default) in-process workers")
    s.add_argument("--app", required=True, help="project: 'module:attr' or 'path/file.py:attr'")
    s.add_argument("--database", help="postgresql://... for scale-out (default: SQLite under --home)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8700)
    s.add_argument("--workers", type=int, default=1, help="in-process workers (0: API only)")
    s.add_argument("--retention-days", type=float, help="delete threads idle for longer (kept while awaiting approval)")
    s.add_argument("--lease", type=float, default=30.0, help="lease seconds (a killed server's runs resume after it)")

    w = sub.add_parser("worker", help="claim and execute runs from a shared PostgreSQL")
    w.add_argument("--app", required=True)
    w.add_argument("--database", help="postgresql://... (required unless BASTION_DATABASE_URL is set)")
    w.add_argument("--concurrency", type=int, default=64)
    w.add_argument("--lease", type=float, default=30.0, help="lease seconds")

    r = sub.add_parser("run", help="run an agent once in this process and print the answer")
    r.add_argument("--app", required=True)
    r.add_argument("--database")
    r.add_argument("--tenant", default="default")
    r.add_argument("--thread")
    decide = r.add_mutually_exclusive_group()
    decide.add_argument("--yes", action="store_true", help="approve every approval request (non-interactive)")
    decide.add_argument("--no", action="store_true", help="reject every approval request (non-interactive)")
    r.add_argument("agent")
    r.add_argument("input")

    t = sub.add_parser("trace", help="inspect traces (embedded store, or PostgreSQL with --database)")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    tlist = tsub.add_parser("list", help="recent traces")
    show = tsub.add_parser("show", help="a trace as a tree")
    for trace_parser in (tlist, show):
        trace_parser.add_argument("--database", help="postgresql://... (default: BASTION_DATABASE_URL, else --home)")
    show.add_argument("trace_id", help="a trace id, a unique prefix of one, or a run id")

    # Every eval argument (`--suite`, `--help` ...) goes to the evals CLI untouched: with the
    # usual prefix chars argparse takes a leading `--option` as unknown instead of REMAINDER.
    e = sub.add_parser("eval", help="run an eval suite and/or gate a report (see `bastion eval --help`)",
                       add_help=False, prefix_chars="\x00")  # fmt: skip
    e.add_argument("rest", nargs=argparse.REMAINDER)

    k = sub.add_parser("keys", help="API keys and proxy virtual keys (<home>/keys.db)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="mint an API key and print it (once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", choices=["viewer", "operator", "admin"], default="operator")
    create.add_argument("--expires-in", help="e.g. 30d, 12h, 90m: the key stops working after that long")
    klist = ksub.add_parser("list", help="ids, tenants, roles, expiry and status (never the keys)")
    klist.add_argument("--tenant")
    klist.add_argument("--all", action="store_true", help="include revoked and expired keys")
    krevoke = ksub.add_parser("revoke", help="revoke a key by id, unique id prefix or the key itself")
    krevoke.add_argument("ref")
    for kp in (create, klist, krevoke):
        kp.add_argument("--database", help="postgresql://...: the key store of a scaled-out deployment")

    au = sub.add_parser("audit", help="check or export the audit log (exit 1 if it does not verify)")
    ausub = au.add_subparsers(dest="audit_command", required=True)
    averify = ausub.add_parser("verify", help="recompute the keyed chain and check it against its anchor")
    aexport = ausub.add_parser("export", help="write the log as JSON lines with its anchor in the header")
    for ap in (averify, aexport):
        ap.add_argument("--log", type=Path, help="SQLite audit log (default <home>/audit.db)")
        ap.add_argument("--database", help="postgresql://... of AuditLog.postgres (default: BASTION_DATABASE_URL)")
    averify.add_argument("--export", type=Path, help="verify an exported file instead")
    averify.add_argument("--key", help="the audit key (default: BASTION_SECRET_AUDIT_KEY, else <home>/audit.key)")
    aexport.add_argument("--out", type=Path, help="file to write (default: stdout)")

    mem = sub.add_parser("memory", help="long-term memory: ingest documents")
    msub = mem.add_subparsers(dest="memory_command", required=True)
    ming = msub.add_parser("ingest", help="load files or directories (text, markdown, HTML, PDF) with a progress bar")
    ming.add_argument("paths", nargs="+", type=Path)
    ming.add_argument("--tenant", required=True)
    ming.add_argument("--agent", default="", help="namespace fields; empty = shared at that level")
    ming.add_argument("--user", default="")
    ming.add_argument("--scope", default="")
    ming.add_argument("--app", help="write to this project's memory store (Project(memory=...))")
    ming.add_argument("--file", type=Path, help="SQLite memory file (default <home>/memory.db)")
    ming.add_argument("--database", help="postgresql://... memory store")
    ming.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    ming.add_argument("--untrusted", action="store_true", help="label the chunks untrusted (third-party content)")

    d = sub.add_parser("doctor", help="check the sandbox, the local model and the database")
    d.add_argument("--database")

    b = sub.add_parser("bench", help="run the benchmarks in bench/ (peers side by side)")
    b.add_argument("names", nargs="*", help="gateway, orchestration, memory, tracing, security, runtime")
    b.add_argument("--quick", action="store_true")

    demo = sub.add_parser("demo", help="set up and run the example support agent, then keep the UI up")
    demo.add_argument("--port", type=int, default=8700)
    demo.add_argument("--no-wait", action="store_true", help="exit after the scenario instead of serving the UI")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BastionError as e:
        from rich.console import Console
        from rich.markup import escape

        from bastion.config import redact_credentials

        Console(stderr=True).print(f"[bold red]error:[/] {escape(redact_credentials(str(e)))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # e.g. a database driver's error: it may quote the URL with its password
        import traceback

        from bastion.config import redact_credentials

        print(redact_credentials("".join(traceback.format_exception(e))), file=sys.stderr, end="")
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "serve":
        from bastion.cli._serve import serve

        retention = args.retention_days * 86400 if args.retention_days else None
        env, lease = _env(args), args.lease
        return asyncio.run(
            serve(args.app, env, host=args.host, port=args.port, workers=args.workers, retention=retention, lease=lease)  # type: ignore[arg-type]
        )
    if cmd == "worker":
        from bastion.cli._serve import worker

        # Not uvloop: it does not close inherited descriptors in child processes (its
        # subprocess_exec ignores close_fds), so sandboxed code saw the server's open files.
        return asyncio.run(worker(args.app, _env(args), concurrency=args.concurrency, lease=args.lease))  # type: ignore[arg-type]
    if cmd == "run":
        from bastion.cli._run import run

        return asyncio.run(
            run(args.app, _env(args), agent=args.agent, input=args.input, tenant=args.tenant, thread=args.thread,  # type: ignore[arg-type]
                approve_all=args.yes, reject_all=args.no)
        )  # fmt: skip
    if cmd == "trace":
        from bastion.cli._trace import list_traces, show_trace

        home = Path(args.home)
        database = args.database or os.environ.get("BASTION_DATABASE_URL")
        if args.trace_command == "show":
            return show_trace(home, args.trace_id, database)
        return list_traces(home, database)
    if cmd == "eval":
        from bastion.evals import main as eval_main

        return eval_main(args.rest, prog="bastion eval")
    if cmd == "keys":
        from bastion.cli import _keys

        home, db = Path(args.home), args.database or os.environ.get("BASTION_DATABASE_URL")
        if args.keys_command == "create":
            return _keys.create(home, db, tenant=args.tenant, role=args.role, expires_in=args.expires_in)
        if args.keys_command == "list":
            return _keys.list_keys(home, db, tenant=args.tenant, all_keys=args.all)
        return _keys.revoke(home, db, args.ref)
    if cmd == "audit":
        from bastion.cli import _audit

        home = Path(args.home)  # an explicit --log wins over BASTION_DATABASE_URL
        db = args.database or (None if args.log else os.environ.get("BASTION_DATABASE_URL"))
        if args.audit_command == "verify":
            return _audit.verify(home, log=args.log, database=db, export=args.export, key=args.key)
        return _audit.export(home, log=args.log, database=db, out=args.out)
    if cmd == "memory":
        from bastion.cli._memory import ingest_command

        return asyncio.run(
            ingest_command(args.paths, Path(args.home), tenant=args.tenant, agent=args.agent, user=args.user,
                           scope=args.scope, app=args.app, file=args.file, database=args.database,
                           embedder=args.embedder, untrusted=args.untrusted)
        )  # fmt: skip
    if cmd == "doctor":
        from bastion.cli._doctor import doctor

        return doctor(Path(args.home), args.database or os.environ.get("BASTION_DATABASE_URL"))
    if cmd == "bench":
        from bastion.cli._doctor import bench

        return bench(args.names, quick=args.quick)
    if cmd == "demo":
        from bastion.cli._demo import demo

        return asyncio.run(demo(Path(args.home), port=args.port, wait=not args.no_wait))
    raise AssertionError(cmd)  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
