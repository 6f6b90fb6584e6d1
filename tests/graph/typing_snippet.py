"""Checked by pyright (strict) in test_typing.py, never run. A comment `T: <type>` marks a line
whose `reveal_type` must show that type; `E: <rule>` a line that must have that error, and no
other line may have an error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypedDict, reveal_type

from pydantic import BaseModel

from bastion.checkpoint import MemoryCheckpointer
from bastion.gateway import Gateway, Model
from bastion.graph import END, START, Command, Graph, NodeConfig, Send, append
from bastion.graph.agent import Agent, ModelSource
from bastion.testing import ScriptedModel


class State(TypedDict, total=False):
    topics: list[str]
    notes: Annotated[list[str], append]
    report: str


def plan(state: State) -> list[Send]:
    return [Send("research", t) for t in state.get("topics", [])]


def research(topic: str) -> State:
    return {"notes": [topic]}


async def write(state: State, config: NodeConfig) -> State:
    return {"report": f"{config.node}: " + "; ".join(state.get("notes", []))}


def route(state: State) -> str:
    return END if state.get("report") else "write"


g = Graph(State)
reveal_type(g)  # T: Graph[State]
g.add_node("plan", plan).add_node("research", research, input_schema=str).add_node("write", write)
g.add_edge(START, "plan").add_edge("research", "write").add_conditional_edges("write", route)
app = g.compile(checkpointer=MemoryCheckpointer())
reveal_type(app)  # T: CompiledGraph[State]
out = app.invoke({"topics": ["a"]}, thread_id="t")
reveal_type(out)  # T: State
reveal_type(app.get_state("t"))  # T: StateSnapshot[State]
reveal_type(app.get_state("t").values)  # T: State
reveal_type(app.invoke(Command(resume="yes"), thread_id="t"))  # T: State
reveal_type(out.get("report"))  # T: str | None

# Mistakes the types catch:
out["bogus"]  # E: reportGeneralTypeIssues


def wrong_key(state: State) -> State:
    return {"bogus": 1}  # E: reportReturnType


def not_an_update(state: State) -> str:
    return "done"


g.add_node("not_an_update", not_an_update)  # E: reportCallIssue
g.add_node("research_again", research)  # E: reportCallIssue  (a Send target needs input_schema=)
g.add_conditional_edges("plan", research)  # E: reportArgumentType


@dataclass
class Counter:
    n: int = 0


def bump(state: Counter) -> dict[str, int]:
    return {"n": state.n + 1}


counter = Graph(Counter).add_node("bump", bump).add_edge(START, "bump").compile()
reveal_type(counter.invoke({"n": 1}).n)  # T: int
reveal_type(counter.invoke(Counter(2)))  # T: Counter


class Doc(BaseModel):
    text: str = ""


def edit(state: Doc) -> dict[str, Any]:
    return {"text": state.text.upper()}


docs = Graph(Doc).add_node("edit", edit).add_edge(START, "edit").compile()
reveal_type(docs.invoke({"text": "hi"}))  # T: Doc
Graph(Doc).add_node("bump", bump)  # E: reportCallIssue

# The agent's pluggable backends are small protocols.
model: Model = ScriptedModel(["hi"])
gateway: ModelSource = Gateway()
agent = Agent(model, checkpointer=MemoryCheckpointer(), gateway=gateway)
reveal_type(agent.gateway)  # T: ModelSource | None
Agent(model, checkpointer=object())  # E: reportArgumentType
Agent(model, gateway="openai")  # E: reportArgumentType
reveal_type(agent)  # T: Agent[str]


class Answer(BaseModel):
    city: str


structured = Agent(model, output_type=Answer)
reveal_type(structured)  # T: Agent[Answer]
reveal_type(structured.run_sync("where?").output)  # T: Answer | None
