"""`bastion audit verify` and `bastion audit export`: check the audit log against its anchor.

Exit codes: 0 the log verifies, 1 it does not (the reason is printed), 2 a usage error."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from bastion.errors import UserError
from bastion.policy import AuditLog, VerifyResult, verify_audit_log, verify_export

console = Console(stderr=True, highlight=False)


def _report(what: str, result: VerifyResult) -> int:
    if result.ok:
        anchored = f", anchored at entry {result.anchor_seq}" if result.anchor_seq else ""
        print(f"ok: {what}: {result.entries} entries, chain intact{anchored}")
        return 0
    where = f" (entry {result.first_bad_seq})" if result.first_bad_seq is not None else ""
    print(f"FAILED: {what}{where}: {result.reason}")
    return 1


def verify(home: Path, *, log: Path | None, database: str | None, export: Path | None, key: str | None) -> int:
    if export is not None:
        if key is None:
            from bastion.policy import audit_key

            key = audit_key(home, create=False).decode()
        try:
            with export.open(encoding="utf-8") as f:
                return _report(str(export), verify_export(f, key=key))
        except OSError as e:
            return _report(str(export), VerifyResult(False, 0, None, f"cannot read the export: {e}"))
    if database:
        try:
            audit = AuditLog.postgres(database, key=key)
        except Exception as e:  # a verifier reports, it does not crash
            return _report("PostgreSQL audit log", VerifyResult(False, 0, None, f"cannot open it: {e}"))
        with audit:
            return _report("PostgreSQL audit log", audit.verify())
    path = log or home / "audit.db"
    return _report(str(path), verify_audit_log(path, key=key))


def export(home: Path, *, log: Path | None, database: str | None, out: Path | None) -> int:
    path = log or home / "audit.db"
    if not database and not path.exists():
        raise UserError(f"no audit log at {path}; pass --log or --home")
    audit = AuditLog.postgres(database) if database else AuditLog(path)
    with audit:
        result = audit.verify()
        if out is None:
            n = audit.export(sys.stdout)
        else:
            with out.open("w", encoding="utf-8") as f:
                n = audit.export(f)
    console.print(f"exported {n} entries{f' to {out}' if out else ''} with the anchor in the header")
    if not result.ok:
        console.print(f"[bold red]warning:[/] the log does not verify: {result.reason}")
        return 1
    return 0
