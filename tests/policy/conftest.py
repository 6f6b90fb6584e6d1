"""Fixtures for the security layer: a small banking/e-mail tool set and a history builder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.policy import AuditLog, CallbackApprover, Policy, StaticSecretProvider, ToolGateway
from bastion.tools import ToolCallContext, tool
from bastion.types import Message, RunContext, ToolCall, ToolResult


class Bank:
    def __init__(self) -> None:
        self.transfers: list[tuple[str, float]] = []
        self.emails: list[tuple[str, str]] = []
        self.fetched: list[str] = []


@pytest.fixture
def bank() -> Bank:
    return Bank()


@pytest.fixture
def tools(bank: Bank) -> dict[str, Any]:
    @tool(side_effect="read")
    def read_inbox() -> str:
        """Read the latest e-mail."""
        return ""

    @tool(side_effect="irreversible")
    def transfer(iban: str, amount: float, memo: str = "") -> dict[str, Any]:
        """Send money."""
        bank.transfers.append((iban, amount))
        return {"status": "sent", "iban": iban, "amount": amount}

    @tool(side_effect="write")
    def send_email(to: str, subject: str, body: str) -> str:
        """Send an e-mail."""
        bank.emails.append((to, body))
        return "sent"

    @tool(side_effect="read", network=["api.example.com", "*.wikipedia.org"])
    def fetch(url: str) -> str:
        """Fetch a web page."""
        bank.fetched.append(url)
        return "<html>ok</html>"

    @tool(side_effect="read", trust="trusted", secrets=["api_key"])
    def whoami(api_key: str) -> str:
        """A tool that (badly) echoes its credential back."""
        return f"authenticated with key {api_key}"

    return {t.name: t for t in (read_inbox, transfer, send_email, fetch, whoami)}


GRANTS = {"assistant": ["read_inbox", "transfer", "send_email", "fetch", "whoami"]}


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    with AuditLog(tmp_path / "audit.db") as log:
        yield log


Answers = list[Any]


@pytest.fixture
def make_gateway(audit: AuditLog) -> Callable[..., tuple[ToolGateway, list[Any]]]:
    """A gateway whose approver pops scripted answers and records every request."""

    def make(policy: Policy | None = None, answers: Answers | None = None, **kw: Any) -> tuple[ToolGateway, list[Any]]:
        asked: list[Any] = []
        queue = list(answers or [])

        def decide(request: Any) -> Any:
            asked.append(request)
            if not queue:
                raise AssertionError(f"unexpected approval request: {request.risk.text}")
            return queue.pop(0)

        gw = ToolGateway(
            policy if policy is not None else Policy(GRANTS),
            approver=CallbackApprover(decide),
            audit=audit,
            secrets=kw.pop("secrets", StaticSecretProvider({"api_key": "sk-canary-0123456789abcdefXYZ"})),
            **kw,
        )
        return gw, asked

    return make


def _history(user: str, *tool_outputs: tuple[str, str]) -> list[Message]:
    """A realistic run: the user's request, then the model's reads and their (untrusted) results."""
    msgs = [Message.system("You are a helpful banking assistant."), Message.user(user)]
    for i, (name, content) in enumerate(tool_outputs):
        call = ToolCall(name, {}, id=f"call_read_{i}")
        msgs.append(Message.assistant(tool_calls=[call]))
        msgs.append(Message.tool(ToolResult(call.id, name, content, trust="untrusted")))
    return msgs


def _ctx(messages: list[Message], *, agent: str = "assistant", run_id: str = "run-1") -> ToolCallContext:
    return ToolCallContext(run=RunContext(tenant="acme", user="alice", run_id=run_id), messages=messages, agent=agent)


@pytest.fixture
def history() -> Callable[..., list[Message]]:
    return _history


@pytest.fixture
def ctx() -> Callable[..., ToolCallContext]:
    return _ctx


@pytest.fixture(autouse=True)
def _reset_trace_redactor() -> Iterator[None]:
    """Gateways plug their redactor into the tracer (process-wide); leave it as we found it."""
    yield
    from bastion.tracing import set_redactor

    set_redactor(None)
