"""Provenance of every argument value: where in the run did the model get it?

For each value in a tool call (strings and free text, numbers, ids, dates and times, hosts,
URLs, e-mail addresses, IBANs, phone numbers, items of lists and nested objects) the gateway
finds the earliest-trusted place it occurs:

    user          the user's own words in this run
    trusted       the output of a tool declared trusted (the user's own account data), or the
                  system prompt the developer wrote
    schema        a value the tool's schema enumerates (an enum member, a boolean)
    declassified  untrusted output the developer allowed for this argument (`Declassify`)
    untrusted     only the output of an untrusted tool (which calls are listed)
    invented      nowhere in the conversation: the model made it up

Matching is per kind and normalised (`bastion.policy._matchers`): IBANs, e-mails, hosts,
URLs, amounts, dates and times compare in canonical form; ids compare as tokens or, when long
enough, with separators and case ignored; free text is grounded when it is contained in a
source or when its content words are. An identifier split across several argument fields is
caught by looking for untrusted identifiers in the fields joined together.

What value provenance cannot see: which text made the model CHOOSE a value that also occurs
in trusted data (an attacker who names a real hotel from the catalogue), values the model
derives by computation (a sum, "tomorrow" turned into a date: those show as invented), and
meaning carried by paraphrase rather than by the value itself.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bastion.policy import _matchers as mt
from bastion.types import Message, TextPart, ToolCall, ToolResult

Origin = Literal["user", "trusted", "schema", "declassified", "untrusted", "invented"]
GROUNDED: frozenset[str] = frozenset({"user", "trusted", "schema", "declassified"})
SourceTrust = Literal["user", "trusted", "untrusted"]

# Free text that carries data legitimately copied from tools (a body, a note): only the
# destinations written inside it (addresses, links, IBANs) are key values there.
DEFAULT_CONTENT_ARGS = frozenset(
    {"body", "content", "text", "message", "summary", "subject", "note", "notes", "description", "memo", "comment"}
)
_MONEY = re.compile(r"amount|total|sum|price|fee|cost|value|balance|refund", re.I)
_SECRET = re.compile(r"pass(word|phrase)?|pin|secret|token|otp|code$", re.I)
_HOST_ARG = re.compile(r"^(host|hostname|domain|server)$", re.I)
_PHONE_ARG = re.compile(r"phone|mobile|tel$|telephone|fax|sms", re.I)
_MAX_RECORDS = 500
_STOP = frozenset(
    "a an and are as at be by for from has have i in is it its me my of on or our re fw fwd the this "
    "that to was we with you your please new".split()
)


@dataclass(frozen=True, slots=True)
class ArgProvenance:
    """Where one value in the arguments came from."""

    argument: str  # the argument path: "to", "recipients[1]", "payee.iban", "body"
    kind: str  # iban, email, url, host, amount, date, time, phone, id, secret, text
    value: str  # as compared (normalised), shortened for display
    origin: Origin
    sources: tuple[str, ...] = ()  # "get_contacts#call_1" for trusted / untrusted / declassified
    key: bool = True  # a key value (a destination or a choice), not free text carried as data
    note: str = ""

    @property
    def grounded(self) -> bool:
        return self.origin in GROUNDED

    def to_dict(self) -> dict[str, Any]:
        return {
            "argument": self.argument,
            "kind": self.kind,
            "value": self.value,
            "origin": self.origin,
            "sources": list(self.sources),
            "key": self.key,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Declassify:
    """A developer's statement that values of `args` of `tool` may come from the output of
    the tools in `sources`, optionally only when the user's request contains one of the
    words in `when`. Policy, not code::

        Declassify("send_email", ["to", "cc"], sources=["get_contacts"])
        Declassify("send_money", ["recipient", "amount"], sources=["get_transactions"], when=["refund"])

    `tool` and `args` accept "*". It never widens anything but provenance: Cedar grants,
    argument rules and host allowlists still apply."""

    tool: str
    args: Collection[str] | str = "*"
    sources: Collection[str] = ()
    when: Collection[str] = ()
    id: str = ""

    def applies(self, tool: str, argument: str, user_words: frozenset[str]) -> bool:
        if self.tool not in ("*", tool):
            return False
        if self.args != "*" and argument not in self.args:
            return False
        return not self.when or any(_word_in(w, user_words) for w in self.when)

    @property
    def label(self) -> str:
        return self.id or f"declassify:{self.tool}<-{'|'.join(sorted(self.sources))}"


def _word_in(word: str, user_words: frozenset[str]) -> bool:
    """A stated word (or phrase) occurs in the user's words; "book" matches "booking"."""
    parts = [p for p in re.findall(r"\w+", word.casefold()) if p]
    if not parts:
        return False
    return all(any(u == p or (len(p) >= 3 and u.startswith(p)) for u in user_words) for p in parts)


@dataclass(frozen=True, slots=True)
class Source:
    """One piece of text the model saw, indexed once per kind of value."""

    label: str  # "user", "system", "get_contacts#call_1"
    trust: SourceTrust
    tool: str
    raw: str
    lower: str
    compact: str
    words: frozenset[str]
    hosts: frozenset[str]
    urls: frozenset[str]
    emails: frozenset[str]
    ibans: frozenset[str]
    amounts: frozenset[str]
    moments: mt.Moments
    phones: frozenset[str]
    runs: tuple[str, ...]
    records: tuple[Source, ...] = ()  # one per line of a multi-line output (a row, an e-mail)


def _leaf_strings(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for v in value.values():  # pyright: ignore[reportUnknownVariableType]
            yield from _leaf_strings(v)
    elif isinstance(value, list | tuple):
        for v in value:  # pyright: ignore[reportUnknownVariableType]
            yield from _leaf_strings(v)
    elif value is not None:
        yield str(value)  # pyright: ignore[reportUnknownArgumentType]


def build_source(label: str, trust: SourceTrust, tool: str, text: str, *, records: bool = True) -> Source:
    lower = " ".join(text.casefold().split())
    packed = mt.compact(text)
    if text[:1] in "[{":
        # Fields joined without their keys: an identifier split across two fields of a
        # JSON result is still found.
        try:
            packed += "|" + mt.compact("".join(_leaf_strings(json.loads(text))))
        except ValueError:
            pass
    found = mt.urls_in(text)
    return Source(
        label=label,
        trust=trust,
        tool=tool,
        raw=text,
        lower=lower,
        compact=packed,
        words=mt.words(text),
        hosts=frozenset(h for _, h, _ in found),
        urls=frozenset(u for u, _, _ in found),
        emails=frozenset(mt.emails_in(text)),
        ibans=frozenset(mt.ibans_in(text)),
        amounts=frozenset(mt.amounts_in(text)),
        moments=mt.moments_in(text),
        phones=frozenset(mt.phones_in(text)),
        runs=mt.alnum_runs(text),
        # entries of a listing; a very long text (a whole web page) is read as one entry
        records=tuple(build_source(label, trust, tool, line, records=False) for line in lines)
        if records and 1 < len(lines := [ln for ln in text.splitlines() if ln.strip()]) <= _MAX_RECORDS
        else (),
    )


class SourceCache:
    """Indexed sources by (label, text hash): histories only grow, so each tool result and
    user turn is indexed once however many decisions read it."""

    def __init__(self, limit: int = 20_000) -> None:
        self._items: OrderedDict[tuple[str, str, int], Source] = OrderedDict()
        self._limit = limit

    def get(self, label: str, trust: SourceTrust, tool: str, text: str) -> Source:
        key = (label, trust, hash(text))
        hit = self._items.get(key)
        if hit is None:
            hit = build_source(label, trust, tool, text)
            self._items[key] = hit
            if len(self._items) > self._limit:
                self._items.popitem(last=False)
        return hit


@dataclass(slots=True)
class RunView:
    """The sources of one history, split by trust."""

    user: list[Source] = field(default_factory=list)
    trusted: list[Source] = field(default_factory=list)
    untrusted: list[Source] = field(default_factory=list)
    user_words: frozenset[str] = frozenset()
    untrusted_results: list[ToolResult] = field(default_factory=list)
    call_args: dict[str, str] = field(default_factory=dict)  # source label -> its call's arguments, compact

    @property
    def untrusted_seen(self) -> bool:
        return bool(self.untrusted)

    @classmethod
    def from_messages(cls, messages: Sequence[Message], cache: SourceCache | None = None) -> RunView:
        cache = cache or SourceCache()
        view = cls()
        words: set[str] = set()
        args: dict[str, str] = {}
        for message in messages:
            for i, part in enumerate(message.parts):
                if isinstance(part, ToolCall):
                    args[part.id] = mt.compact(" ".join(_leaf_strings(part.arguments)))
                elif isinstance(part, ToolResult):
                    if part.is_error and not part.content:
                        continue
                    text = part.content_text()
                    trust: SourceTrust = "trusted" if part.trust == "trusted" else "untrusted"
                    src = cache.get(f"{part.name}#{part.tool_call_id}", trust, part.name, text)
                    (view.trusted if trust == "trusted" else view.untrusted).append(src)
                    if trust == "untrusted":
                        view.untrusted_results.append(part)
                        view.call_args[src.label] = args.get(part.tool_call_id, "")
                elif isinstance(part, TextPart) and message.role in ("user", "system"):
                    if message.role == "user":
                        src = cache.get(f"user#{message.id}:{i}", "user", "", part.text)
                        view.user.append(src)
                        words |= src.words
                    else:  # the developer's system prompt: trusted, but not the user's request
                        view.trusted.append(cache.get(f"system#{message.id}:{i}", "trusted", "", part.text))
        view.user_words = frozenset(words)
        return view


# --- classifying argument values --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Value:
    path: str
    top: str
    kind: str
    norm: str
    raw: str
    key: bool
    readings: frozenset[str] = frozenset()  # amounts with several readings; date/time parts


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():  # pyright: ignore[reportUnknownVariableType]
            yield from _walk(v, f"{path}.{k}" if path else str(k))  # pyright: ignore[reportUnknownArgumentType]
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def _enum_values(schema: Mapping[str, Any], top: str) -> frozenset[str]:
    prop: Any = (schema.get("properties") or {}).get(top) or {}
    found: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, Mapping):
            for key in ("enum",):
                values: Any = node.get(key)  # pyright: ignore[reportUnknownMemberType]
                if isinstance(values, list):
                    found.update(str(v) for v in values)  # pyright: ignore[reportUnknownVariableType]
            if "const" in node:
                found.add(str(node["const"]))  # pyright: ignore[reportUnknownArgumentType]
            for key in ("anyOf", "oneOf", "allOf", "items"):
                sub: Any = node.get(key)  # pyright: ignore[reportUnknownMemberType]
                for s in sub if isinstance(sub, list) else [sub] if sub else []:  # pyright: ignore[reportUnknownVariableType]
                    collect(s)

    collect(prop)
    return frozenset(found)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify_string(top: str, raw: str) -> tuple[str, str, frozenset[str]]:
    """(kind, normalised value, extra readings) of one string argument that is not free text."""
    s = raw.strip()
    if _SECRET.search(top):
        return "secret", s, frozenset()
    iban = mt.norm_iban(s)
    if iban is not None:
        return "iban", iban, frozenset()
    email = mt.norm_email(s)
    if email is not None:
        return "email", email, frozenset()
    if " " not in s:
        url = mt.norm_url(s)
        if url is not None:
            host = mt.norm_host(s) or url
            if _HOST_ARG.match(top) or url == host:
                return "host", host, frozenset()
            return "url", url, frozenset()
    if _PHONE_ARG.search(top):
        digits = mt.phone_digits(s)
        if digits is not None:
            return "phone", digits, frozenset()
    moments = mt.moments_in(s)
    if (moments.dates or moments.times) and mt.mostly_moment(s):
        parts = {f"date:{d}" for d in moments.dates} | {f"time:{t}" for t in moments.times}
        return "datetime", s, frozenset(parts)
    if _MONEY.search(top):
        readings = mt.amount_readings(re.sub(r"[^\d.,'\-]", "", s)) if re.search(r"\d", s) else set()
        if readings:
            return "amount", sorted(readings)[0], frozenset(readings)
    if len(s) <= 64 and not re.search(r"\s", s):
        return "id", s, frozenset()
    return "text", s, frozenset()


def argument_values(
    arguments: Mapping[str, Any],
    *,
    schema: Mapping[str, Any] | None = None,
    content_args: Collection[str] = DEFAULT_CONTENT_ARGS,
) -> Iterator[_Value | tuple[str, str]]:
    """Every value to trace, or (path, enum/boolean value) for values the schema grounds."""
    schema = schema or {}
    enums: dict[str, frozenset[str]] = {}
    for path, value in _walk(arguments, ""):
        top = re.split(r"[.\[]", path, maxsplit=1)[0]
        if value is None:
            continue
        if isinstance(value, bool):
            yield (path, str(value).lower())
            continue
        if top not in enums:
            enums[top] = _enum_values(schema, top)
        if str(value) in enums[top]:
            yield (path, str(value))
            continue
        if isinstance(value, int | float):
            if _MONEY.search(top) or isinstance(value, float):
                norm = mt.canon_amount(value)
                yield _Value(path, top, "amount", norm, str(value), True, frozenset({norm}))
            else:
                yield _Value(path, top, "id", str(value), str(value), True)
            continue
        raw = str(value)
        if top in content_args:
            yield from _content_values(path, top, raw)
            continue
        kind, norm, readings = classify_string(top, raw)
        if kind == "text":
            # a free-text choice (a title, a name): its embedded links count on their own too
            yield from (v for v in _content_values(path, top, raw) if v.kind != "text")
        yield _Value(path, top, kind, norm, raw, True, readings)


def _content_values(path: str, top: str, raw: str) -> Iterator[_Value]:
    """The destinations written inside free text (key), then the text itself (not key)."""
    masked = raw
    for email in mt.emails_in(raw):
        yield _Value(path, top, "email", email, email, True)
        masked = re.sub(re.escape(email), " ", masked, flags=re.I)
    for iban in mt.ibans_in(masked):
        yield _Value(path, top, "iban", iban, iban, True)
    for url, host, _ in mt.urls_in(masked):
        yield _Value(path, top, "url" if url != host else "host", url, url, True)
    if raw.strip():
        yield _Value(path, top, "text", raw.strip(), raw, False)


# --- matching ------------------------------------------------------------------------------------


def _host_in(host: str, src: Source) -> bool:
    # a subdomain of a host the source names is that party's too
    return host in src.hosts or any(host.endswith("." + h) for h in src.hosts)


def _found(v: _Value, src: Source) -> bool:
    kind = v.kind
    if kind == "iban":
        return v.norm in src.ibans or v.norm in src.compact or mt.assembled_from(v.norm, src.runs)
    if kind == "email":
        return v.norm in src.emails or v.norm in src.lower
    if kind == "host":
        return _host_in(v.norm, src)
    if kind == "url":
        return v.norm in src.urls or any(u.startswith(v.norm) for u in src.urls) or v.norm in src.lower
    if kind == "amount":
        return bool(v.readings & src.amounts)
    if kind == "datetime":
        return all(_moment_in(p, src) for p in v.readings)
    if kind == "phone":
        return any(mt.same_phone(v.norm, p) for p in src.phones)
    if kind == "secret":
        return v.norm in src.raw
    if kind == "id":
        low = v.norm.casefold()
        if low in src.words or low in src.lower:
            return True
        packed = mt.compact(v.norm)
        return len(packed) >= 6 and packed in src.compact
    return " ".join(v.norm.casefold().split()) in src.lower  # text: containment first


def _moment_in(part: str, src: Source) -> bool:
    kind, value = part.split(":", 1)
    if kind == "date":
        return value in src.moments.dates or (value[5:] in src.moments.monthdays)
    return value in src.moments.times


_RIVAL_KINDS = {"iban": "ibans", "email": "emails", "host": "hosts", "url": "hosts", "phone": "phones"}


def _rivals(v: _Value, src: Source) -> bool:
    """Another destination of the same kind in the same entry."""
    attr = _RIVAL_KINDS.get(v.kind)
    if attr is None:
        return False
    mine = mt.norm_host(v.norm) if v.kind == "url" else v.norm
    others: frozenset[str] = getattr(src, attr)
    if v.kind == "email":
        return any(o != mine for o in others)
    if v.kind in ("host", "url"):
        # an e-mail address in the entry names its domain too; only other link hosts rival
        link_hosts = others - {e.rsplit("@", 1)[-1] for e in src.emails}
        return any(o != mine for o in link_hosts)
    if v.kind == "phone":
        return any(not mt.same_phone(o, mine or "") for o in others)
    return any(o != mine for o in others)


def _content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text.casefold()) if w not in _STOP and (len(w) > 1 or w.isdigit())]


class Tracer:
    """Computes `ArgProvenance` for the arguments of one call against one `RunView`."""

    def __init__(
        self, view: RunView, declassify: Sequence[Declassify] = (), *, signalled: Collection[str] = ()
    ) -> None:
        self.view = view
        self.declassify = list(declassify)
        # outputs an injection detector fired on: data, maybe, but never declassified
        self.signalled = frozenset(signalled)
        self.action_words: tuple[str, ...] = ()  # the words that ask for the traced tool
        self._grounded_words: frozenset[str] | None = None

    def _grounded_vocab(self) -> frozenset[str]:
        if self._grounded_words is None:
            vocab: set[str] = set(self.view.user_words)
            for src in self.view.trusted:
                vocab |= src.words
            self._grounded_words = frozenset(vocab)
        return self._grounded_words

    def trace(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        schema: Mapping[str, Any] | None = None,
        content_args: Collection[str] = DEFAULT_CONTENT_ARGS,
        intents: Collection[str] | None = None,
    ) -> list[ArgProvenance]:
        self.action_words = (*(intents if intents is not None else _name_words(tool)), *_all_name_words(tool))
        out: list[ArgProvenance] = []
        key_strings: list[tuple[str, str]] = []
        for item in argument_values(arguments, schema=schema, content_args=content_args):
            if isinstance(item, tuple):
                out.append(ArgProvenance(item[0], "choice", item[1], "schema", key=False))
                continue
            if item.key:
                key_strings.append((item.path, item.raw))
            out.append(self._one(tool, item))
        out.extend(self._split(key_strings, out))
        return out

    def _one(self, tool: str, v: _Value) -> ArgProvenance:
        shown = _short(v.norm if v.kind not in ("text", "datetime") else v.raw.strip())
        if v.kind == "text":
            return self._text(tool, v, shown)
        for src in self.view.user:
            if _found(v, src):
                return ArgProvenance(v.path, v.kind, shown, "user", ("user",), v.key)
        trusted = tuple(s.label for s in self.view.trusted if _found(v, s))
        if trusted:
            return ArgProvenance(v.path, v.kind, shown, "trusted", trusted, v.key)
        untrusted = [s for s in self.view.untrusted if _found(v, s)]
        if untrusted:
            return self._from_untrusted(tool, v, shown, untrusted)
        if v.kind == "url":
            # a URL nobody wrote, on a host somebody did: the host decides who gets the request
            host = mt.norm_host(v.norm)
            if host is not None:
                by_host = self._one(tool, _Value(v.path, v.top, "host", host, host, v.key))
                return ArgProvenance(
                    v.path, "url", shown, by_host.origin, by_host.sources, v.key, f"the host {host} is; the URL is not"
                )
        return ArgProvenance(v.path, v.kind, shown, "invented", (), v.key, "not in the conversation")

    def _from_untrusted(self, tool: str, v: _Value, shown: str, found: list[Source]) -> ArgProvenance:
        labels = tuple(s.label for s in found)
        note = ""
        for rule in self.declassify:
            if not rule.applies(tool, v.top, self.view.user_words):
                continue
            named = [s for s in found if s.tool in rule.sources]
            if not named:
                continue
            allowed = [s for s in named if s.label not in self.signalled and self._users_record(v, s, rule)]
            if not allowed:
                note = (
                    "not declassified: an injection detector fired on that output"
                    if any(s.label in self.signalled for s in named)
                    else "not declassified: not the one value the entry the user points to offers"
                )
                continue
            # the same value also put forward by other untrusted text (not an echo of the
            # model's own query) means someone else chose it
            others = [s for s in found if s not in allowed and not self._echo(v, s)]
            if others:
                note = f"not declassified: also suggested by {', '.join(s.label for s in others)}"
                continue
            return ArgProvenance(
                v.path, v.kind, shown, "declassified", tuple(s.label for s in allowed), v.key, rule.label
            )
        return ArgProvenance(v.path, v.kind, shown, "untrusted", labels, v.key, note)

    def _users_record(self, v: _Value, src: Source, rule: Declassify) -> bool:
        """A declassified value must come from the entry the user pointed at, and be the only
        value of its kind there. In a multi-entry output (rows, e-mails, messages) that entry
        shares a word with the user's request, other than the words naming the action ("pay",
        "refund", "event"): "refund MARK", "pay SPOTIFY again". A bill that offers two IBANs, a
        page that offers two addresses, leaves the choice to the model, not to the user."""
        records = src.records or (src,)
        if src.records:
            wanted = self._pointer_words(rule)
            # the entry pointed at is the one sharing the most of the user's words: a planted
            # note that repeats one of them ("...from the drive") does not outrank the entry
            # the request describes ("my old drafts")
            best = max(len(r.words & wanted) for r in records)
            pointed = tuple(r for r in records if best and len(r.words & wanted) == best)
            if v.kind == "text":
                tokens = set(_content_words(v.norm))
                records = tuple(r for r in pointed if r.words & tokens)
            else:
                records = tuple(r for r in pointed if _found(v, r))
        return any(not _rivals(v, r) for r in records)

    def _pointer_words(self, rule: Declassify) -> frozenset[str]:
        action = [*rule.when, *self.action_words]
        return frozenset(
            w
            for w in self.view.user_words
            # numbers (dates, amounts) point at nothing: "2024" matches every dated row
            if w not in _STOP
            and len(w) >= 3
            and not w.isdigit()
            and not any(_word_in(a, frozenset({w})) for a in action)
        )

    def _echo(self, v: _Value, src: Source) -> bool:
        """The output only repeats what the model asked for (reviews of the hotel it named)."""
        asked = self.view.call_args.get(src.label, "")
        packed = mt.compact(v.norm)
        return bool(asked) and len(packed) >= 3 and packed in asked

    def _text(self, tool: str, v: _Value, shown: str) -> ArgProvenance:
        """Free text: contained in a source, or grounded word by word."""
        for src in self.view.user:
            if _found(v, src):
                return ArgProvenance(v.path, "text", shown, "user", ("user",), v.key)
        for src in self.view.trusted:
            if _found(v, src):
                return ArgProvenance(v.path, "text", shown, "trusted", (src.label,), v.key)
        tokens = _content_words(v.norm)
        grounded = self._grounded_vocab()
        rest = [t for t in tokens if t not in grounded]
        if not rest:
            if all(t in self.view.user_words for t in tokens):
                return ArgProvenance(v.path, "text", shown, "user", ("user",), v.key, "composed from the user's words")
            labels = tuple(s.label for s in self.view.trusted if any(t in s.words for t in tokens))
            return ArgProvenance(v.path, "text", shown, "trusted", labels, v.key, "composed from trusted data")
        found = [s for s in self.view.untrusted if any(t in s.words for t in rest)]
        from_untrusted = {t for t in rest if any(t in s.words for s in found)}
        if found:
            result = self._from_untrusted(tool, v, shown, found)
            # a word shared with untrusted output in otherwise grounded text is coincidence
            if result.origin == "declassified" or len(from_untrusted) * 4 >= len(tokens):
                return result
        if len(rest) * 2 > len(tokens):
            return ArgProvenance(v.path, "text", shown, "invented", (), v.key, "mostly not in the conversation")
        return ArgProvenance(v.path, "text", shown, "user", ("user",), v.key, "mostly the user's words")

    def _split(self, key_strings: list[tuple[str, str]], seen: list[ArgProvenance]) -> list[ArgProvenance]:
        """Untrusted identifiers that appear only when several fields are read together."""
        if len(key_strings) < 2 or not self.view.untrusted:
            return []
        joined = mt.compact("".join(raw for _, raw in key_strings))
        singles = [mt.compact(raw) for _, raw in key_strings]
        known = {p.value for p in seen if p.grounded}
        out: list[ArgProvenance] = []
        for src in self.view.untrusted:
            for ident in (*src.ibans, *(mt.compact(e) for e in src.emails)):
                if len(ident) < 8 or ident in known or ident not in joined or any(ident in s for s in singles):
                    continue
                if any(ident in u.compact for u in (*self.view.user, *self.view.trusted)):
                    continue
                out.append(
                    ArgProvenance(
                        "+".join(p for p, _ in key_strings),
                        "iban" if mt.iban_valid(ident) else "email",
                        ident,
                        "untrusted",
                        (src.label,),
                        True,
                        "split across fields",
                    )
                )
                known.add(ident)
        return out


def tool_choice_grounded(tool: str, intents: Iterable[str] | None, user_words: frozenset[str]) -> bool:
    """Did the user ask for this kind of action? `intents` are the words a developer stated
    for the tool; by default the verb of its name and common synonyms."""
    stated = list(intents) if intents is not None else _name_words(tool)
    return any(_word_in(w, user_words) for w in stated)


_GENERIC = frozenset({"get", "set", "the", "for", "and", "new", "all", "my", "do", "run", "make", "add", "to"})


# Default intents are the verb of the tool's name plus these everyday synonyms; a developer
# states the rest per tool (`Policy(intents=...)`).
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "send": ("email", "mail", "message", "forward", "reply", "pay", "transfer"),
    "transfer": ("pay", "wire"),
    "payment": ("pay",),
    "email": ("mail", "reply", "forward"),
    "delete": ("remove", "erase"),
    "remove": ("delete",),
    "reserve": ("book",),
    "book": ("reserve",),
    "refund": ("refund", "reimburse"),
}


def _all_name_words(tool: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", tool)
    return [w for w in re.split(r"[\W_]+", spaced.lower()) if len(w) >= 3]


def _name_words(tool: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", tool)
    words = [w for w in re.split(r"[\W_]+", spaced.lower()) if len(w) >= 3 and w not in _GENERIC]
    # the verb names the action ("delete_file": delete); the noun alone ("file") does not ask for it
    verb = words[:1]
    return verb + [s for w in verb for s in _SYNONYMS.get(w, ())]


__all__ = [
    "DEFAULT_CONTENT_ARGS",
    "GROUNDED",
    "ArgProvenance",
    "Declassify",
    "Origin",
    "RunView",
    "Source",
    "SourceCache",
    "Tracer",
    "argument_values",
    "build_source",
    "classify_string",
    "tool_choice_grounded",
]
