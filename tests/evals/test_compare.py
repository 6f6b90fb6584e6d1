"""Experiment comparison: two reports case by case, in code and over the server's API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion.evals import Case, Dataset, EvalReport, OutcomeCheck, Trajectory, compare_reports, run_eval
from bastion.graph.agent import Agent
from bastion.server import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import FunctionModel, serve_app

CASES = ["a", "b", "c", "d"]


async def _report(answers: dict[str, str], cases: list[str] = CASES) -> EvalReport:
    """Case x passes when the answer contains 'x-ok'."""
    ds = Dataset.from_cases("exp", [Case(input=c, id=c) for c in cases])

    async def target(case: Case) -> Trajectory:
        return Trajectory(output=answers[case.id])

    return await run_eval(ds, target, [OutcomeCheck(lambda t: t.output.endswith("-ok"), required_outputs=["ok"])])


async def test_per_case_diff() -> None:
    base = await _report({"a": "a-ok", "b": "b-bad", "c": "c-ok", "d": "d-bad"})
    head = await _report({"a": "a-bad", "b": "b-ok", "c": "c-ok", "e": "e-ok", "d": "d ok"}, ["a", "b", "c", "d", "e"])
    diff = compare_reports(base, head, base_name="v1", head_name="v2")
    by_id = {c.case_id: c for c in diff.cases}
    assert by_id["a"].change == "regressed" and by_id["a"].base_pass_rate == 1.0 and by_id["a"].head_pass_rate == 0.0
    assert by_id["b"].change == "fixed"
    assert by_id["c"].change == "still_passing" and by_id["c"].score_deltas == {"outcome": 0.0}
    # d fails both times, but one more check passes now: same verdict, better score
    assert by_id["d"].change == "changed" and by_id["d"].score_deltas["outcome"] == pytest.approx(1 / 3)
    assert by_id["e"].change == "added"
    assert by_id["a"].score_deltas["outcome"] < 0
    assert diff.cases[0].case_id == "a"  # regressions first
    d = diff.to_dict()
    assert d["counts"]["regressed"] == 1 and d["counts"]["fixed"] == 1 and d["counts"]["added"] == 1
    shown = [line.split()[:2] for line in diff.render().splitlines()[1:]]
    assert shown == [["regressed", "a"], ["fixed", "b"], ["changed", "d"], ["added", "e"]]  # unchanged c hidden
    # Stored reports compare the same as fresh ones.
    again = compare_reports(EvalReport.from_dict(base.to_dict()), EvalReport.from_dict(head.to_dict()))
    assert again.to_dict()["cases"] == d["cases"]
    assert compare_reports(head, base).count("removed") == 1


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Any]:
    env = ProjectEnv(home=tmp_path / "home")
    agent = Agent(FunctionModel(lambda r: "hi"), name="echo")
    keys = {"k-acme": ("acme", "operator"), "k-view": ("acme", "viewer"), "k-evil": ("evil", "operator")}
    parts, stack = await build_server(Project({"echo": agent}, api_keys=keys), env, lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base, aiohttp.ClientSession() as session:

        async def call(key: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
            async with session.request(method, base + path, headers={"Authorization": f"Bearer {key}"}, **kw) as r:
                return r.status, await r.json()

        call.base = base  # type: ignore[attr-defined]
        yield call


async def test_compare_route_over_stored_reports(served: Any) -> None:
    call = served
    base = await _report({"a": "a-ok", "b": "b-bad", "c": "c-ok", "d": "d-bad"})
    head = await _report({"a": "a-bad", "b": "b-ok", "c": "c-ok", "d": "d-bad"})
    status, summary = await call("k-acme", "PUT", "/v1/evals/reports/v1", json=base.to_dict())
    assert status == 201 and summary["cases"] == 4
    assert (await call("k-acme", "PUT", "/v1/evals/reports/v2", json=head.to_dict()))[0] == 201
    # A viewer may read; only operators may upload; junk is a 422 that says what to send.
    assert (await call("k-view", "PUT", "/v1/evals/reports/v3", json=head.to_dict()))[0] == 403
    status, err = await call("k-acme", "PUT", "/v1/evals/reports/bad", json={"v": 1})
    assert status == 422 and "bastion eval --out" in str(err), err
    assert (await call("k-view", "GET", "/v1/evals/reports"))[1] == [{"name": "v1"}, {"name": "v2"}]
    status, diff = await call("k-view", "GET", "/v1/evals/compare?base=v1&head=v2")
    assert status == 200
    changes = {c["case_id"]: c["change"] for c in diff["cases"]}
    assert changes == {"a": "regressed", "b": "fixed", "c": "still_passing", "d": "still_failing"}
    assert diff["counts"]["regressed"] == 1 and diff["pass_rate_delta"] == 0.0
    # Another tenant sees neither report.
    assert (await call("k-evil", "GET", "/v1/evals/reports"))[1] == []
    assert (await call("k-evil", "GET", "/v1/evals/compare?base=v1&head=v2"))[0] == 404
    assert (await call("k-acme", "GET", "/v1/evals/reports/..%2Fx"))[0] in (404, 422)


@pytest.mark.browser
async def test_evals_page_shows_per_case_diff_in_chromium(served: Any, browser_page: Any) -> None:
    call = served
    page = browser_page
    base = await _report({"a": "a-ok", "b": "b-bad", "c": "c-ok", "d": "d-bad"})
    head = await _report({"a": "a-bad", "b": "b-ok", "c": "c-ok", "d": "d-bad"})
    assert (await call("k-acme", "PUT", "/v1/evals/reports/v1", json=base.to_dict()))[0] == 201
    assert (await call("k-acme", "PUT", "/v1/evals/reports/v2", json=head.to_dict()))[0] == 201
    # One navigation, key already stored: no runs-page poll racing the evals view.
    await page.add_init_script("localStorage.setItem('bastion.key', 'k-view')")
    await page.goto(f"{call.base}/#/evals?base=v1&head=v2")
    await page.wait_for_selector("#eval-diff-table")
    rows = await page.locator("#eval-diff-table tbody tr").all_inner_texts()
    regressed = await page.locator("tr.change-regressed").get_attribute("data-case")
    assert regressed == "a"
    assert rows[0].split("\t")[:4] == ["a", "regressed", "100%", "0%"]
    assert rows[1].split("\t")[:2] == ["b", "fixed"]
    assert "outcome -0.67" in rows[0]
