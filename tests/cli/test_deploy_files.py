"""The deployment files (Dockerfile, compose.yaml, docs/deploy.md) name only commands, flags,
settings and metrics that exist. No container runtime works on the build machine, so this
is what checks them: a renamed flag or setting fails here, not in someone's cluster."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from bastion.cli._main import _parser
from bastion.config import Settings, load_settings
from bastion.policy import EnvSecretProvider
from bastion.tracing._queue_gauges import _GAUGES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text()


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)  # type: ignore[arg-type]


def check_bastion_argv(argv: list[str]) -> None:
    """`argv` (after `bastion`) parses, and every flag is spelled in full (argparse would
    otherwise accept abbreviations and unknown-looking prefixes)."""
    parser = _parser()
    args = parser.parse_args(argv)  # SystemExit on an unknown command or flag
    sub = _subcommands()[args.command]
    known = set(sub._option_string_actions) | set(parser._option_string_actions)
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag.startswith("--"):
            assert flag in known, f"`bastion {args.command}` has no flag {flag} (used in {argv})"


def check_env(env: dict[str, str]) -> None:
    fields = set(Settings.model_fields)
    secrets = EnvSecretProvider().prefix  # BASTION_SECRET_*: read by the secret provider, not settings
    for name in env:
        if name.startswith("BASTION_") and not name.startswith(secrets):
            assert name.removeprefix("BASTION_").lower() in fields, f"{name} is not a Bastion setting"


def _dockerfile_json(instruction: str) -> list[str]:
    [line] = re.findall(rf"^{instruction} (\[.*\])$", DOCKERFILE, re.M)
    return json.loads(line)


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", DOCKERFILE, re.M):
        for pair in shlex.split(block.replace("\\\n", " ")):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def test_dockerfile_is_multi_stage_non_root_and_has_no_compiler_in_the_final_image() -> None:
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    assert len(stages) >= 2 and " AS builder" in stages[0]
    final = stages[-1]
    assert re.search(r"^USER (?!root\b|0\b)\S+", final, re.M), "the final stage must switch to a non-root user"
    for compiler in ("build-essential", "gcc", "g++", "clang", "cmake", "make "):
        assert compiler not in final, f"{compiler} in the final image"
    assert "--no-index" in final  # installs the builder's wheels, nothing fetched or built


def test_dockerfile_commands_and_settings_exist() -> None:
    assert _dockerfile_json("ENTRYPOINT") == ["bastion"]
    check_bastion_argv(_dockerfile_json("CMD"))
    env = _dockerfile_env()
    assert env["BASTION_HOME"] == "/data"
    check_env(env)


def _bastion_services() -> dict[str, dict[str, Any]]:
    anchor = COMPOSE["x-bastion"]
    return {name: {**anchor, **svc} for name, svc in COMPOSE["services"].items() if "command" in svc}


def test_compose_is_postgres_one_api_server_and_two_workers() -> None:
    services = COMPOSE["services"]
    assert "pgvector" in services["postgres"]["image"]
    bastion = _bastion_services()
    api, worker = bastion["api"], bastion["worker"]
    assert api["command"][0] == "serve" and "--workers" in api["command"]
    assert api["command"][api["command"].index("--workers") + 1] == "0"
    assert worker["command"][0] == "worker" and worker["deploy"]["replicas"] == 2
    assert all(s["depends_on"]["postgres"]["condition"] == "service_healthy" for s in bastion.values())


@pytest.mark.parametrize("service", ["api", "worker"])
def test_compose_commands_and_settings_exist(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _bastion_services()[service]
    check_bastion_argv(svc["command"])
    env = {k: str(v) for k, v in svc["environment"].items()}
    check_env(env)
    # The values parse too (sizes, numbers), with compose's ${VAR:-default} substituted.
    for key, value in env.items():
        monkeypatch.setenv(key, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value))
    settings = load_settings()
    assert settings.database_url and settings.database_url.startswith("postgresql://")
    assert settings.trace_max_bytes == 20 * 2**30 and settings.trace_max_age_days == 30


def test_deploy_doc_commands_flags_and_metrics_exist() -> None:
    commands = [
        shlex.split(line)[1:]
        for block in re.findall(r"```bash\n(.*?)```", DEPLOY_DOC, re.S)
        for line in block.splitlines()
        if line.startswith("bastion ")
    ]
    assert len(commands) >= 3
    for argv in commands:
        check_bastion_argv(argv)
    for name in set(re.findall(r"BASTION_[A-Z_]+", DEPLOY_DOC)):
        check_env({name: ""})
    gauges = {name for name, _, _ in _GAUGES} | {"bastion_workers_busy", "bastion_workers_live"}
    used = set(re.findall(r"\bbastion_(?:runs|workers)_[a-z_]+", DEPLOY_DOC))
    assert used and used <= gauges, used - gauges
    for block in re.findall(r"```yaml\n(.*?)```", DEPLOY_DOC, re.S):
        assert yaml.safe_load(block)  # the autoscaling examples are valid YAML
