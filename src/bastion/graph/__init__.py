"""Layer 2, orchestration: durable graphs of nodes over a typed state.

A `Graph` is built from nodes (functions over the state) and edges, compiled with a
checkpointer, and run in supersteps: every superstep is one durable checkpoint, so runs survive
errors, interrupts for humans and process crashes. `memo()` journals expensive calls inside a
node so they are not repeated when it re-runs. The agent loop and multi-agent patterns live in
`bastion.graph.agent`, built on this engine.
"""

from __future__ import annotations

from bastion.graph._builder import Graph
from bastion.graph._compiled import CompiledGraph
from bastion.graph._runtime import emit, get_config, interrupt, memo
from bastion.graph._state import append
from bastion.graph._types import (
    END,
    START,
    Command,
    GraphEvent,
    Interrupt,
    NodeConfig,
    RetryPolicy,
    Send,
    StateSnapshot,
)

__all__ = [
    "END",
    "START",
    "Command",
    "CompiledGraph",
    "Graph",
    "GraphEvent",
    "Interrupt",
    "NodeConfig",
    "RetryPolicy",
    "Send",
    "StateSnapshot",
    "append",
    "emit",
    "get_config",
    "interrupt",
    "memo",
]
