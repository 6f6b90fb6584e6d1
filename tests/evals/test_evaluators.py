from __future__ import annotations

import pytest

from bastion.errors import UserError
from bastion.evals import (
    Case,
    EvalResult,
    Expected,
    LLMJudge,
    OutcomeCheck,
    ToolCallPrecisionRecall,
    Trajectory,
    TrajectoryMatch,
    parse_verdict,
)
from bastion.testing import ScriptedModel
from bastion.types import Message, ToolCall, ToolResult

A = ToolCall("search", {"q": "paris", "limit": 5})
B = ToolCall("get_weather", {"city": "Paris"})
C = ToolCall("send_email", {"to": "a@b.c", "body": "hi"})


def case(*calls: ToolCall, **expected: object) -> Case:
    return Case("weather in Paris?", Expected(tool_calls=list(calls), **expected))  # type: ignore[arg-type]


async def check(evaluator: object, c: Case, actual: list[ToolCall]) -> bool:
    result = await evaluator.evaluate(c, Trajectory(tool_calls=actual))  # type: ignore[attr-defined]
    return result.passed


@pytest.mark.parametrize(
    ("mode", "actual", "expected_pass"),
    [
        ("strict", [A, B], True),
        ("strict", [B, A], False),
        ("strict", [A], False),
        ("unordered", [B, A], True),
        ("unordered", [B, A, C], False),
        ("unordered", [A, A], False),
        ("subset", [B], True),  # nothing beyond the reference
        ("subset", [B, C], False),
        ("subset", [], True),
        ("superset", [C, B, A], True),  # the reference and more
        ("superset", [A, C], False),
    ],
)
async def test_trajectory_modes(mode: str, actual: list[ToolCall], expected_pass: bool) -> None:
    assert await check(TrajectoryMatch(mode), case(A, B), actual) is expected_pass  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "actual_args", "expected_pass"),
    [
        ("exact", {"q": "paris", "limit": 5}, True),
        ("exact", {"q": "paris"}, False),
        ("ignore", {"anything": 1}, True),
        ("subset", {"q": "paris"}, True),  # actual args within the reference's
        ("subset", {"q": "paris", "lang": "fr"}, False),
        ("superset", {"q": "paris", "limit": 5, "lang": "fr"}, True),  # actual includes every reference arg
        ("superset", {"q": "paris"}, False),
        ("superset", {"q": "london", "limit": 5}, False),
    ],
)
async def test_argument_modes(args: str, actual_args: dict[str, object], expected_pass: bool) -> None:
    ev = TrajectoryMatch("strict", args=args)  # type: ignore[arg-type]
    assert await check(ev, case(A), [ToolCall("search", actual_args)]) is expected_pass


async def test_per_tool_overrides_and_custom_matchers() -> None:
    ev = TrajectoryMatch(
        "strict",
        args="exact",
        per_tool={
            "search": "ignore",
            "get_weather": lambda actual, expected: actual["city"].lower() == expected["city"].lower(),
        },
    )
    actual = [ToolCall("search", {"q": "whatever"}), ToolCall("get_weather", {"city": "PARIS"})]
    assert await check(ev, case(A, B), actual)
    assert not await check(ev, case(A, B), [actual[0], ToolCall("get_weather", {"city": "Rome"})])


async def test_unordered_matching_finds_the_assignment_greedy_would_miss() -> None:
    # actual[0] matches both references under "ignore" for search; a greedy pairing of
    # actual[0] with ref[0] would leave actual[1] (which only fits ref[0]) unmatched.
    ev = TrajectoryMatch("unordered", args="superset")
    refs = [ToolCall("search", {"q": "a"}), ToolCall("search", {})]
    actual = [ToolCall("search", {"q": "a", "x": 1}), ToolCall("search", {"q": "b"})]
    assert await check(ev, case(*refs), actual)


async def test_trajectory_failure_explains_what_differs() -> None:
    result = await TrajectoryMatch("unordered").evaluate(case(A, B), Trajectory(tool_calls=[A, C]))
    assert not result.passed and result.score == 0.0
    assert "missing" in result.explanation and "get_weather" in result.explanation
    assert "unexpected" in result.explanation and "send_email" in result.explanation


async def test_trajectory_evaluators_without_reference_are_not_applicable() -> None:
    for evaluator in (TrajectoryMatch(), ToolCallPrecisionRecall()):
        r = await evaluator.evaluate(Case("x", id="no-ref"), Trajectory(tool_calls=[A]))
        assert (r.applicable, r.label, r.score) == (False, "not_applicable", 0.0)
        assert "'no-ref' has no expected tool calls" in r.explanation
        assert r.to_dict()["applicable"] is False and EvalResult.from_dict(r.to_dict()) == r
        # an evaluator-level reference makes every case applicable
        assert evaluator.applies_to(Case("x")) is False
    with_ref = TrajectoryMatch(expected=[A])
    assert with_ref.applies_to(Case("x")) and (await with_ref.evaluate(Case("x"), Trajectory(tool_calls=[A]))).passed


async def test_bad_trajectory_configuration_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown trajectory mode"):
        TrajectoryMatch("fuzzy")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="unknown argument match mode"):
        TrajectoryMatch(args="close-enough")  # type: ignore[arg-type]


async def test_tool_call_precision_recall() -> None:
    ev = ToolCallPrecisionRecall(min_precision=0.5, min_recall=1.0)
    # 3 actual calls, 2 of them expected; both expected calls made
    r = await ev.evaluate(case(A, B), Trajectory(tool_calls=[A, B, C]))
    assert r.passed and r.score == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert "precision=0.667 recall=1.000" in r.explanation
    r = await ev.evaluate(case(A, B), Trajectory(tool_calls=[A]))
    assert not r.passed and "recall=0.500" in r.explanation
    strict_args = ToolCallPrecisionRecall(args="exact")
    r = await strict_args.evaluate(case(A), Trajectory(tool_calls=[ToolCall("search", {"q": "rome"})]))
    assert not r.passed and r.score == 0.0
    assert ToolCallPrecisionRecall.scores(0, 0, 0) == (1.0, 1.0, 1.0)


async def test_outcome_checks() -> None:
    ev = OutcomeCheck(lambda t: t.state.get("booked") is True, required_outputs=["confirmation"])
    c = Case("book it", Expected(output_contains=["PNR"], state={"seats": 2}))
    good = Trajectory(output="Confirmation: PNR X1", state={"booked": True, "seats": 2})
    r = await ev.evaluate(c, good)
    assert r.passed and r.score == 1.0
    bad = Trajectory(output="sorry", state={"booked": False, "seats": 3})
    r = await ev.evaluate(c, bad)
    assert not r.passed and r.score == 0.2  # only "did not raise" of 5 checks holds
    assert "predicate is false" in r.explanation and "'PNR'" in r.explanation and "state['seats']" in r.explanation
    crashed = await ev.evaluate(c, Trajectory(error="RuntimeError: boom"))
    assert not crashed.passed and "boom" in crashed.explanation
    exact = await OutcomeCheck().evaluate(Case("2+2", Expected(output="4")), Trajectory(output=" 4\n"))
    assert exact.passed
    raising = OutcomeCheck(lambda t: t.state["missing"])
    r = await raising.evaluate(Case("x"), Trajectory())
    assert not r.passed and "raised KeyError" in r.explanation


@pytest.mark.parametrize(
    ("answer", "passed", "score"),
    [
        ('{"reasoning": "correct", "score": 0.9, "pass": true}', True, 0.9),
        ('```json\n{"score": 0.2, "pass": false, "reasoning": "wrong city"}\n```', False, 0.2),
        ('Let me think. The answer is fine.\n{"Score": 0.8, "Verdict": "PASS", "Reason": "ok"} done', True, 0.8),
        ('{"score": "7/10"}', True, 0.7),
        ('{"rating": "30%"}', False, 0.3),
        ('{"score": 85%, "reasoning": "mostly right"}', True, 0.85),  # not JSON as written
        ("Score of 85%", True, 0.85),
        ("I would give it 85%.", True, 0.85),
        ("score: 3 out of 10", False, 0.3),
        ("The output misses the date.\nScore: 2/5\nVERDICT: FAIL", False, 0.4),
        ("**Score:** 85%", True, 0.85),
        ("PASS", True, 1.0),
        ('{"score": 0.4, "pass": true}', True, 0.4),  # an explicit verdict wins over the threshold
    ],
)
async def test_llm_judge_parses_verdicts_robustly(answer: str, passed: bool, score: float) -> None:
    model = ScriptedModel([answer], name="test:judge")
    judge = LLMJudge(model, "The answer must state the weather in Paris.", threshold=0.5)
    c = Case("weather in Paris?", Expected(output="sunny"))
    r = await judge.evaluate(c, Trajectory(tool_calls=[B], output="It is sunny in Paris."))
    assert (r.passed, r.score) == (passed, pytest.approx(score))
    [request] = model.requests
    prompt = request.messages[-1].text
    assert "The answer must state the weather in Paris." in prompt
    assert "It is sunny in Paris." in prompt and "get_weather" in prompt and "sunny" in prompt
    assert request.messages[0].role == "system" and '"score"' in request.messages[0].text


@pytest.mark.parametrize(
    ("answer", "scale", "label", "score"),
    [
        # the judge was asked for 0-1 and answered on another scale: never guessed, never a pass
        ("score: 4 (0-10 scale)", 1.0, "out_of_scale", 0.0),
        ('{"score": 4, "pass": true}', 1.0, "out_of_scale", 0.0),
        ("score: 4 (0-10 scale)", 10.0, "fail", 0.4),
        ('{"score": 8}', 10.0, "pass", 0.8),
        ('{"score": 30}', 100.0, "fail", 0.3),
    ],
)
async def test_llm_judge_reads_scores_on_its_explicit_scale(
    answer: str, scale: float, label: str, score: float
) -> None:
    model = ScriptedModel([answer])
    judge = LLMJudge(model, "be right", scale=scale)
    r = await judge.evaluate(Case("x"), Trajectory(output="y"))
    assert (r.label, r.score, r.passed) == (label, pytest.approx(score), label == "pass")
    if label == "out_of_scale":
        assert "outside the scale 0-1" in r.explanation and "LLMJudge(scale=...)" in r.explanation
    assert f"number from 0 to {scale:g}" in model.requests[0].messages[0].text
    with pytest.raises(UserError, match="scale=0 must be positive"):
        LLMJudge(model, "x", scale=0)
    with pytest.raises(UserError, match="0-1 fraction"):
        LLMJudge(model, "x", threshold=7)


async def test_llm_judge_sees_tool_results() -> None:
    call = ToolCall("lookup_order", {"id": "A7"}, id="call_1")
    messages = [
        Message.user("where is order A7?"),
        Message.assistant(tool_calls=[call]),
        Message.tool(ToolResult("call_1", "lookup_order", {"status": "lost in transit"})),
        Message.assistant("Your order has shipped."),
    ]
    model = ScriptedModel(['{"score": 0, "pass": false, "reasoning": "contradicts the tool"}'])
    r = await LLMJudge(model, "The answer must agree with the tool results.").evaluate(
        Case("where is order A7?"), Trajectory.from_messages(messages)
    )
    assert not r.passed and r.explanation == "contradicts the tool"
    prompt = model.requests[0].messages[-1].text
    assert 'lookup_order({"id": "A7"})' in prompt and 'returned: {"status": "lost in transit"}' in prompt
    long = Trajectory(tool_calls=[call], tool_results=[ToolResult("call_1", "lookup_order", "x" * 5000)])
    assert "[3000 chars cut]" in LLMJudge(model, "r").prompt(Case("q"), long)


async def test_llm_judge_unparseable_or_failing_judge_is_a_failed_result() -> None:
    judge = LLMJudge(ScriptedModel(["I am not sure what you want."]), "be right")
    r = await judge.evaluate(Case("x"), Trajectory(output="y"))
    assert not r.passed and r.label == "unparseable" and "not sure" in r.explanation
    broken = LLMJudge(ScriptedModel([RuntimeError("judge down")]), "be right")
    r = await broken.evaluate(Case("x"), Trajectory(output="y"))
    assert not r.passed and r.label == "judge_error" and "judge down" in r.explanation


def test_parse_verdict_ignores_json_without_a_verdict() -> None:
    assert parse_verdict('{"note": "nothing here"}') is None
    v = parse_verdict('{"note": 1} then {"score": 1.0}')
    assert v is not None and v.score == 1.0


def test_trajectory_from_messages() -> None:
    msgs = [
        Message.user("hi"),
        Message.assistant(tool_calls=[A]),
        Message.assistant("done", tool_calls=[B]),
        Message.assistant("final"),
    ]
    t = Trajectory.from_messages(msgs, state={"x": 1})
    assert [c.name for c in t.tool_calls] == ["search", "get_weather"]
    assert t.output == "final" and t.state == {"x": 1}
