"""The graph builder: nodes, edges, conditional edges and joins, checked by `compile()`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

from bastion.errors import InvalidGraphError
from bastion.graph._state import StateSchema
from bastion.graph._types import END, START, NodeFn, RetryPolicy, RouterFn, StateT

if TYPE_CHECKING:
    from bastion.checkpoint import Checkpointer
    from bastion.graph._compiled import CompiledGraph
    from bastion.graph._pregel import Engine

InT = TypeVar("InT")


def _wants_config(fn: Callable[..., Any]) -> bool:
    """True when `fn` takes a second positional argument (the NodeConfig): a required one, or
    one named `config` (`lambda s, n=n: ...` closures must not receive it)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
            if positional == 2 and (p.default is p.empty or p.name == "config"):
                return True
    return False


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


@dataclass(slots=True)
class NodeSpec:
    name: str
    fn: Callable[..., Any] | None
    is_async: bool
    wants_config: bool
    retry: RetryPolicy | None
    timeout: float | None
    subgraph: Engine | None


@dataclass(slots=True)
class Branch:
    router: Callable[..., Any]
    path_map: dict[Hashable, str] | None
    is_async: bool
    wants_config: bool


class Graph(Generic[StateT]):
    """Build a graph over a state schema (TypedDict, dataclass or pydantic model).

    ```python
    g = Graph(State)  # a Graph[State]: nodes take a State, invoke() returns one
    g.add_node("a", fn)
    g.add_edge(START, "a")
    app = g.compile(checkpointer=SqliteCheckpointer("runs.db"))
    ```
    """

    def __init__(self, state_schema: type[StateT]) -> None:
        caller = inspect.currentframe()
        localns = caller.f_back.f_locals if caller is not None and caller.f_back is not None else None
        self.schema = StateSchema(state_schema, localns)
        bad = [c for c in self.schema.channels if c.startswith("__")]
        if bad:
            raise InvalidGraphError(f"state field names starting with '__' are reserved: {bad}; rename them")
        self.nodes: dict[str, NodeSpec] = {}
        self.edges: dict[str, list[str]] = {}
        self.joins: list[tuple[tuple[str, ...], str]] = []
        self.branches: dict[str, list[Branch]] = {}

    @overload
    def add_node(
        self,
        name: str,
        fn: CompiledGraph[Any] | Graph[Any],
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Self: ...
    @overload
    def add_node(
        self, name: str, fn: NodeFn[StateT], *, retry: RetryPolicy | None = None, timeout: float | None = None
    ) -> Self: ...
    @overload
    def add_node(
        self,
        name: str,
        fn: NodeFn[InT],
        *,
        input_schema: type[InT],
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Self: ...
    @overload
    def add_node(
        self, name: NodeFn[StateT], *, retry: RetryPolicy | None = None, timeout: float | None = None
    ) -> Self: ...
    def add_node(
        self,
        name: str | Callable[..., Any],
        fn: Callable[..., Any] | CompiledGraph[Any] | Graph[Any] | None = None,
        *,
        input_schema: type[Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Self:
        """Add a node: `fn(state)` or `fn(state, config)`, sync or async, returning a dict of
        updates, a `Command`, `Send`s or None. A compiled graph as `fn` runs as a subgraph.

        A node reached only through `Send(name, arg)` receives `arg` instead of the state: say
        its type with `input_schema=` so type checkers accept `fn` (it changes nothing at run
        time)."""
        from bastion.graph._compiled import CompiledGraph

        del input_schema  # for type checkers only
        if fn is None:
            if isinstance(name, str):
                raise InvalidGraphError(f"add_node({name!r}) needs a function: add_node({name!r}, fn)")
            fn, name = name, getattr(name, "__name__", "")
        if not isinstance(name, str) or not name:
            raise InvalidGraphError("node names must be non-empty strings")
        if name in (START, END) or name.startswith("__"):
            raise InvalidGraphError(f"node name {name!r} is reserved; choose another")
        if name in self.nodes:
            raise InvalidGraphError(f"node {name!r} already exists; node names must be unique")
        if timeout is not None and timeout <= 0:
            raise InvalidGraphError(f"timeout for node {name!r} must be positive seconds, got {timeout}")
        if isinstance(fn, Graph):
            fn = fn.compile()
        if isinstance(fn, CompiledGraph):
            engine = fn._engine  # pyright: ignore[reportPrivateUsage]  (one package: the builder wires engines)
            self.nodes[name] = NodeSpec(name, None, True, False, retry, timeout, engine)
        elif callable(fn):
            self.nodes[name] = NodeSpec(name, fn, _is_async(fn), _wants_config(fn), retry, timeout, None)
        else:
            raise InvalidGraphError(f"node {name!r} must be a callable or a compiled graph, not {fn!r}")
        return self

    def add_edge(self, src: str | Sequence[str], dst: str) -> Self:
        """`add_edge("a", "b")`: b runs in the step after a. `add_edge(["a", "b"], "c")`: c runs
        once both a and b have finished (a join)."""
        if isinstance(src, str):
            self.edges.setdefault(src, []).append(dst)
        else:
            sources = tuple(src)
            if not sources:
                raise InvalidGraphError("add_edge with a list needs at least one source node")
            self.joins.append((sources, dst))
        return self

    def add_conditional_edges(
        self,
        src: str,
        router: RouterFn[StateT],
        path_map: Mapping[Hashable, str] | Sequence[str] | None = None,
    ) -> Self:
        """After `src`, call `router(state)` (or `router(state, config)`); it returns a node
        name, END, a `Send`, or a list of those. `path_map` maps the router's return values to
        node names."""
        pm: dict[Hashable, str] | None
        if path_map is None:
            pm = None
        elif isinstance(path_map, Mapping):
            pm = dict(path_map)
        else:
            pm = {p: p for p in path_map}
        self.branches.setdefault(src, []).append(Branch(router, pm, _is_async(router), _wants_config(router)))
        return self

    def set_entry_point(self, name: str) -> Self:
        return self.add_edge(START, name)

    def set_finish_point(self, name: str) -> Self:
        return self.add_edge(name, END)

    def add_sequence(self, nodes: Sequence[NodeFn[StateT] | tuple[str, NodeFn[StateT]]]) -> Self:
        """Add nodes chained one after another (not connected to START)."""
        prev: str | None = None
        for item in nodes:
            if isinstance(item, tuple):
                self.add_node(item[0], item[1])
                name = item[0]
            else:
                self.add_node(item)
                name = getattr(item, "__name__", "")
            if prev is not None:
                self.add_edge(prev, name)
            prev = name
        return self

    def _check(self, interrupt_before: Sequence[str], interrupt_after: Sequence[str]) -> None:
        known = set(self.nodes)

        def need(name: str, where: str, allow_end: bool = True) -> None:
            if name == END and allow_end:
                return
            if name not in known:
                raise InvalidGraphError(
                    f"{where} refers to unknown node {name!r}; known nodes: {sorted(known)}. "
                    "Add it with graph.add_node() first"
                )

        for src, dsts in self.edges.items():
            if src != START:
                need(src, f"edge {src!r} -> ...", allow_end=False)
            for d in dsts:
                if d == START:
                    raise InvalidGraphError(f"edge {src!r} -> START is not allowed; START has no inputs")
                need(d, f"edge {src!r} -> {d!r}")
        for sources, dst in self.joins:
            for s in sources:
                need(s, f"join {list(sources)} -> {dst!r}", allow_end=False)
            need(dst, f"join {list(sources)} -> {dst!r}")
        for src, branches in self.branches.items():
            if src != START:
                need(src, f"conditional edges from {src!r}", allow_end=False)
            for b in branches:
                for d in (b.path_map or {}).values():
                    need(d, f"path_map of conditional edges from {src!r}")
        for n in [*interrupt_before, *interrupt_after]:
            need(n, "interrupt_before/interrupt_after", allow_end=False)
        if START not in self.edges and START not in self.branches:
            raise InvalidGraphError(
                "the graph has no entry point; add graph.add_edge(START, '<first node>') "
                "(from bastion.graph import START)"
            )

    def compile(
        self,
        checkpointer: Checkpointer | None = None,
        *,
        interrupt_before: Sequence[str] = (),
        interrupt_after: Sequence[str] = (),
        step_limit: int = 25,
        keyframe_every: int = 200,
        name: str = "graph",
        trace_nodes: bool = False,
    ) -> CompiledGraph[StateT]:
        """Check the graph and return a runnable `CompiledGraph`.

        `step_limit` bounds supersteps per invocation (`GraphRecursionError` beyond it);
        `keyframe_every`: a complete keyframe is written after at least this many delta
        checkpoints once the deltas outweigh the last keyframe, and always after 10x as many;
        this bounds what is read to rebuild a cold state.
        When tracing is configured, checkpoint writes are spans; `trace_nodes` adds a
        `graph node <name>` span around every node (off by default: agent traces stay flat).
        """
        from bastion.graph._compiled import CompiledGraph
        from bastion.graph._pregel import Engine

        self._check(interrupt_before, interrupt_after)
        if step_limit < 1:
            raise InvalidGraphError(f"step_limit must be >= 1, got {step_limit}")
        if keyframe_every < 1:
            raise InvalidGraphError(f"keyframe_every must be >= 1, got {keyframe_every}")
        engine = Engine(
            self,
            checkpointer=checkpointer,
            interrupt_before=frozenset(interrupt_before),
            interrupt_after=frozenset(interrupt_after),
            step_limit=step_limit,
            keyframe_every=keyframe_every,
            name=name,
            trace_nodes=trace_nodes,
        )
        return CompiledGraph(engine)


__all__ = ["Branch", "Graph", "NodeSpec"]
