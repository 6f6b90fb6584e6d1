"""Session-level evaluation: a multi-turn conversation between an agent and a simulated user
(as in tau-bench), on one thread, scored as a whole.

The user side is a `UserSimulator`: `ScriptedUser` (fixed turns, or a function of the agent's
last answer) or `ModelUser` (any `Model` playing a persona with a goal). A session ends when
the simulator says it is done (returns None) or after `max_turns` user turns. The result is a
`Trajectory` whose messages, tool calls and results cover every turn, with the transcript and
why it ended in `state["session"]`, so every evaluator sees the whole session.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bastion.errors import UserError
from bastion.evals._types import Case, Trajectory
from bastion.types import Message, ModelRequest, ModelSettings, new_id

if TYPE_CHECKING:
    from bastion.gateway import Model


@dataclass(slots=True)
class Turn:
    user: str
    agent: str


@dataclass(slots=True)
class SessionView:
    """What a simulator sees: the case and the turns so far."""

    case: Case
    turns: list[Turn] = field(default_factory=list)

    @property
    def last_answer(self) -> str | None:
        return self.turns[-1].agent if self.turns else None


class UserSimulator(Protocol):
    """Plays the user. Returns the next user message, or None when the conversation is over."""

    async def next_message(self, session: SessionView) -> str | None: ...


ScriptFn = Callable[[SessionView], str | Awaitable[str | None] | None]


class ScriptedUser:
    """A fixed list of user turns, or `fn(session)` returning the next turn (None: done).
    With neither, the turns are the case's input, which must then be a list of strings (so a
    JSONL dataset can carry sessions: `{"id": "refund", "input": ["hi", "order 42"]}`)."""

    def __init__(self, turns: Sequence[str] | ScriptFn | None = None) -> None:
        if turns is not None and not callable(turns) and not turns:
            raise UserError("ScriptedUser needs at least one user turn (or a function of the session)")
        self._turns = turns

    async def next_message(self, session: SessionView) -> str | None:
        if callable(self._turns):
            reply = self._turns(session)
            if inspect.isawaitable(reply):
                reply = await reply
            return reply
        turns = self._turns if self._turns is not None else session.case.input
        if isinstance(turns, str) or not isinstance(turns, list | tuple):
            raise UserError(
                f"ScriptedUser() without turns plays the case input as the user's turns, but case "
                f"{session.case.id!r} has input {turns!r}; give it a list of strings or pass ScriptedUser([...])"
            )
        i = len(session.turns)
        return str(turns[i]) if i < len(turns) else None  # pyright: ignore[reportUnknownArgumentType]


DONE = "###DONE###"


def _user_system(persona: str, goal: str, done: str) -> str:
    return (
        "You are simulating a human user talking to an AI assistant. Stay in character; write "
        "only the user's next message, short and natural. Do not solve the task yourself.\n"
        f"## Persona\n{persona}\n## Your goal\n{goal}\n"
        f"When your goal is met (or clearly cannot be met), answer exactly {done} and nothing else."
    )


class ModelUser:
    """A `Model` plays the user: given a persona and a goal (default: the case's input), it
    writes each user turn from the conversation so far, with roles swapped (the agent's answers
    are its "user" messages). It ends the session by answering `done_token`."""

    def __init__(
        self,
        model: Model,
        *,
        persona: str = "A customer of the service.",
        goal: str | None = None,
        done_token: str = DONE,
        settings: ModelSettings | None = None,
    ) -> None:
        self.model = model
        self.persona = persona
        self.goal = goal
        self.done_token = done_token
        self.settings = settings or ModelSettings(temperature=0.0)

    async def next_message(self, session: SessionView) -> str | None:
        goal = self.goal if self.goal is not None else str(session.case.input)
        messages = [Message.system(_user_system(self.persona, goal, self.done_token))]
        # The simulator speaks first; the conversation so far, from its side.
        messages.append(Message.user("(The assistant is waiting for your first message.)"))
        for t in session.turns:
            messages.append(Message.assistant(t.user))
            messages.append(Message.user(t.agent))
        response = await self.model.request(ModelRequest(messages, settings=self.settings))
        text = response.text.strip()
        if not text or self.done_token in text:
            return None
        return text


EndReason = Literal["done", "max_turns", "error"]


class AgentLike(Protocol):
    async def run(self, input: Any, *, thread_id: str | None = None) -> Any: ...


def session_target(
    agent: AgentLike,
    simulator: UserSimulator | Callable[[Case], UserSimulator],
    *,
    max_turns: int = 10,
) -> Callable[[Case], Awaitable[Trajectory]]:
    """A `run_eval` target that runs each case as a session. The agent keeps the thread by
    `thread_id` when it has a checkpointer; otherwise the history so far is sent each turn.
    `simulator` may be a factory called once per attempt (for simulators with their own state)."""
    if max_turns < 1:
        raise UserError(f"session_target: max_turns={max_turns} must be at least 1")

    async def run(case: Case) -> Trajectory:
        sim: UserSimulator = simulator if hasattr(simulator, "next_message") else simulator(case)  # type: ignore[operator]
        return await run_session(agent, sim, case, max_turns=max_turns)

    return run


async def run_session(agent: AgentLike, simulator: UserSimulator, case: Case, *, max_turns: int = 10) -> Trajectory:
    """Converse until the simulator is done or `max_turns` user turns were sent."""
    view = SessionView(case)
    thread_id = new_id("evalsess_")
    keeps_thread = getattr(agent, "checkpointer", None) is not None
    history: list[Message] = []
    ended: EndReason = "max_turns"
    error: str | None = None
    for _ in range(max_turns):
        try:
            text = await simulator.next_message(view)
        except UserError:
            raise  # a mis-configured simulator is the caller's bug
        except Exception as e:  # a failed simulator call ends the session, keeping its turns
            ended, error = "error", f"user simulator, turn {len(view.turns) + 1}: {type(e).__name__}: {e}"
            break
        if text is None:
            ended = "done"
            break
        user = Message.user(text)
        try:
            if keeps_thread:
                result = await agent.run(user, thread_id=thread_id)
            else:
                result = await agent.run([*history, user])
        except Exception as e:  # the agent failing mid-session fails the session, with its turns
            ended, error = "error", f"turn {len(view.turns) + 1}: {type(e).__name__}: {e}"
            break
        history = [m for m in result.messages if m.role != "system"]
        answer = result.text if hasattr(result, "text") else str(result.output)
        view.turns.append(Turn(text, answer))
    trajectory = Trajectory.from_messages(history)
    trajectory.error = error
    trajectory.state = {
        "session": {
            "turns": [{"user": t.user, "agent": t.agent} for t in view.turns],
            "ended": ended,
            "thread_id": thread_id,
        }
    }
    return trajectory


__all__ = [
    "ModelUser",
    "ScriptedUser",
    "SessionView",
    "Turn",
    "UserSimulator",
    "run_session",
    "session_target",
]
