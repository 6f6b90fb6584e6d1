"""`bastion doctor` (is this machine ready?) and `bastion bench`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bastion.config import redact_credentials

console = Console()


def _check_sandbox() -> tuple[bool, str]:
    from bastion.tools.sandbox import Sandbox

    try:
        Sandbox.check()
    except Exception as e:
        return False, str(e)
    return True, "bubblewrap sandbox works (no network, read-only system)"


def _check_local_model() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return False, "llama-cpp-python missing: pip install 'bastion[local]'"
    try:
        from bastion.gateway.formats.llamacpp import bundled_model_path

        path = bundled_model_path()
    except Exception as e:
        return False, f"model file not found: {e}"
    return True, f"local:gemma-3-270m at {path}"


def _check_database(home: Path, url: str | None) -> tuple[bool, str]:
    if url:
        try:
            import psycopg

            with psycopg.connect(url, connect_timeout=5) as conn:
                version = conn.execute("SHOW server_version").fetchone()
            return True, f"PostgreSQL {version[0] if version else '?'} reachable"
        except Exception as e:
            return False, f"PostgreSQL unreachable: {e}"
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".doctor"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return False, f"{home} is not writable: {e}"
    return True, f"embedded SQLite under {home.resolve()}"


def doctor(home: Path, database_url: str | None) -> int:
    checks = {
        "sandbox": _check_sandbox(),
        "local model": _check_local_model(),
    }
    if database_url:  # connectivity, schema versions, pgvector
        from bastion.cli._doctor_db import database_checks

        checks.update({name: (ok, detail) for name, ok, detail in database_checks(database_url)})
    else:
        checks["database"] = _check_database(home, None)
    table = Table("check", "ok", "detail")
    for name, (ok, detail) in checks.items():
        # Redacted (a connection error may quote the URL) and escaped (rich would read `[...]` as markup).
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", escape(redact_credentials(detail)))
    console.print(table)
    return 0 if all(ok for ok, _ in checks.values()) else 1


def bench(names: list[str], *, quick: bool) -> int:
    bench_dir = Path("bench")
    if not bench_dir.is_dir():
        console.print("[red]run `bastion bench` from a checkout (it needs the bench/ directory)[/]")
        return 2
    targets = names or sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_"))
    missing = [n for n in targets if not (bench_dir / f"{n}.py").exists()]
    for name in missing:
        console.print(f"[red]no benchmark {name!r}[/]")
    code = 2 if missing else 0
    todo = [n for n in targets if n not in missing]
    if not console.is_terminal:
        for name in todo:
            console.rule(name)
            code = max(code, subprocess.run(_bench_args(bench_dir, name, quick), check=False).returncode)
        return code
    from bastion.cli._progress import progress

    # On a terminal a bar counts the benchmarks; their tables scroll above it.
    with progress(console) as bar:
        task = bar.add_task("benchmarks", total=len(todo))
        for name in todo:
            bar.update(task, description=f"benchmark {name}", refresh=True)
            console.rule(name)
            with subprocess.Popen(
                _bench_args(bench_dir, name, quick), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    console.print(line, end="", markup=False, highlight=False)
            code = max(code, proc.returncode)
            bar.advance(task)
    return code


def _bench_args(bench_dir: Path, name: str, quick: bool) -> list[str]:
    return [sys.executable, str(bench_dir / f"{name}.py"), *(["--quick"] if quick else [])]
