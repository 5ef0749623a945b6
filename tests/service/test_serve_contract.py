"""Property tests of the whole HTTP contract of ``timesclip-darts serve`` (hypothesis, against the
session's real server of ``tests/service/serving.py``).

Request bodies are real ETTh1 rows (the rows that a primed stream expects next, or a window at
a random place) mutated by hypothesis: odd numbers written as raw JSON text (``1e308``,
``1e-320``, ``-0.0``, 400- and 5000-digit integers, ``NaN``/``Infinity`` literals), wrong types,
deep and odd nesting, odd timestamps (``"NaT"``, ``""``, ``"now"``, years 1 and 2300, offsets,
integers, null), duplicate JSON keys, unknown fields, empty objects and lists, unicode and
percent-encoded stream ids in the path, and mixtures of good and bad streams in ``/v1/rows``.
They go to ``POST /v1/streams/{id}/rows``, ``POST /v1/rows`` and ``POST /v1/forecast``.

The properties, for every request:

1. No 5xx for client input (a 503 with ``Retry-After`` excepted); the answer is strict JSON, and
   every non-200 answer is ``{"error": {"code": str, "message": str, ...}}``; in a 200 of
   ``/v1/rows`` every stream sent has an entry, ``failed`` counts the refused ones, and each
   refused entry has a 4xx (or 503) ``status`` and the same error format. A stream id that is not
   a valid id (after percent-decoding the path) is never accepted.
2. No state change on a refusal: a few streams primed once per module (``input_chunk_length``
   consecutive ETT rows each, under a random prefix) and new streams are read with
   ``GET /v1/streams/{id}`` before and after every request aimed at them and must be identical
   unless their rows were accepted; an accepted stream advances by exactly the rows sent (the
   body as Python's ``json`` reads it: the last of duplicate keys), its last timestamp by that
   many hours; a new stream refused does not exist afterwards. ``POST /v1/forecast`` changes no
   stream.
3. A 200 has the documented shape: a ``forecasts`` list (one per window, or one per completed
   window of a stream), each ``{"time", "horizon", "values": {target: [horizon finite numbers]}}``,
   timed streams with ISO times and an increasing horizon after ``time``.

Each property runs on hypothesis' examples (derandomized, so reproducible in CI; no example
database) and on a catalogue of the odd inputs above, one pytest case each, since a hypothesis
test stops at the first failure it finds. About 40 s on two busy cores once the session's
server is up (shrinking a failure takes longer).
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from tests.conftest import DATA_DIR, ETTH1_COLUMNS
from tests.service.serving import TOKEN, Server

pytestmark = pytest.mark.integration  # a real Ray Serve server

HOUR = pd.Timedelta(hours=1)
PRIMED_OFFSETS = (0, 5000, 10000)  # ETT rows where the primed streams start
FRESH_OFFSET = 14000  # new streams' rows start here (or a little after)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no database, no explain phase
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# ------------------------------------------------------------------------- raw JSON writing
@dataclass(frozen=True)
class Raw:
    """A JSON fragment written verbatim (numbers ``json`` would not write, deep nesting)."""

    text: str


class Obj(list):
    """A JSON object as ``(key, value)`` pairs in order, so that a key may repeat."""


def dump(node: Any) -> str:
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, Obj):
        pairs = (f"{json.dumps(k, ensure_ascii=False)}: {dump(v)}" for k, v in node)
        return "{" + ", ".join(pairs) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(dump(v) for v in node) + "]"
    return json.dumps(node, ensure_ascii=False, allow_nan=False)


def _slots(root: Any) -> list[tuple[list, int]]:
    """Every value below ``root`` as (its container, its index there), in document order."""
    found: list[tuple[list, int]] = []

    def walk(node: Any) -> None:
        if isinstance(node, Obj):
            for i, (_, value) in enumerate(node):
                found.append((node, i))
                walk(value)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                found.append((node, i))
                walk(value)

    walk(root)
    return found


def _get(container: list, i: int) -> Any:
    return container[i][1] if isinstance(container, Obj) else container[i]


def _put(container: list, i: int, value: Any) -> None:
    container[i] = (container[i][0], value) if isinstance(container, Obj) else value


def mutate(root: Any, mutations: list[tuple]) -> Any:
    """Apply generic mutations (at node ``n % count``) to a tree of Obj/list/scalars."""
    for mutation in mutations:
        kind = mutation[0]
        if kind == "add":  # a field at the top (known or not, maybe a repeat)
            if isinstance(root, Obj):
                root.append((mutation[1], mutation[2]))
            continue
        if kind == "body":  # the whole body replaced
            root = mutation[1]
            continue
        slots = _slots(root)
        if not slots:
            continue
        container, i = slots[mutation[1] % len(slots)]
        if kind == "node":
            _put(container, i, mutation[2])
        elif kind == "drop":
            del container[i]
        elif kind == "dup" and isinstance(container, Obj):  # the key again, before or after
            key = container[i][0]
            container.insert(i + 1 if mutation[3] else i, (key, mutation[2]))
        elif kind == "wrap":
            _put(container, i, [_get(container, i)])
        elif kind == "shorten":
            value = _get(container, i)
            if isinstance(value, list) and value:
                value.pop()
        elif kind == "empty":
            value = _get(container, i)
            _put(container, i, Obj() if isinstance(value, Obj) else [])
    return root


def local_json(text: str) -> Any:
    """The body as Python's ``json`` reads it (the last of duplicate keys wins), or UNREADABLE."""
    try:
        return json.loads(
            text,
            parse_int=lambda s: int(s) if len(s) < 4000 else Decimal(s),
            parse_constant=float,
        )
    except (ValueError, RecursionError):
        return UNREADABLE


UNREADABLE = object()


# ------------------------------------------------------------------------- odd values
def _deep(n: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * n + "1" + "]" * n)
    return Raw('{"a": ' * n + "1" + "}" * n)


# Numbers as raw JSON text, by kind (each kind is drawn about as often as plain floats).
NUMBER_KINDS = {
    "huge integers": ["1" + "0" * 399, "-" + "9" * 400, "9" * 5000, "18446744073709551616"],
    "overflowing floats": ["1e308", "-1e308", "1e309", "-1e400", "1" + "0" * 399 + ".5"],
    "tiny floats": ["1e-320", "-1e-320", "5e-324", "1e-400", "0." + "0" * 400 + "1"],
    "zeros and spellings": ["-0.0", "-0", "0e0", "1E2", "-9223372036854775809"],
    "non-finite literals": ["NaN", "Infinity", "-Infinity"],
    "near the bound": ["1e17", "1e18", "1.0000001e18", "1e19", "123456789012345678901234567890"],
}
ODD_NUMBER_TEXTS = [text for texts in NUMBER_KINDS.values() for text in texts]
ODD_NUMBER = st.one_of(
    *(st.sampled_from(texts).map(Raw) for texts in NUMBER_KINDS.values()),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**30), max_value=10**30),
)
ODD_LITERALS = [
    "true",
    "false",
    "null",
    '"12.5"',
    '"NaN"',
    '""',
    "[]",
    "{}",
    "[1.0]",
    "[[]]",
    "[[[[1]]]]",
    '{"value": 1}',
    "[null]",
    '"\\u0000"',
    '"\\ud800"',
]
# Deep nesting, lists and objects (Python's json gives up at about 1000 levels).
DEEP = st.sampled_from(
    [_deep(n, "list") for n in (2, 50, 1000, 20000, 100000)]
    + [_deep(n, "object") for n in (2, 1000, 40000)]
)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(ODD_NUMBER_TEXTS).map(Raw),
)
JSONISH = st.recursive(
    SCALAR,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.dictionaries(st.text(max_size=6), kids, max_size=3).map(lambda d: Obj(d.items())),
    ),
    max_leaves=6,
)
ODD_VALUE = st.one_of(st.sampled_from(ODD_LITERALS).map(Raw), JSONISH, ODD_NUMBER, DEEP)
ODD_CELL = st.one_of(ODD_NUMBER, st.sampled_from(ODD_LITERALS).map(Raw), JSONISH)
ODD_TIME_TEXTS = [
    "NaT",
    "nat",
    "",
    "now",
    "today",
    "2300-01-01T00:00:00",
    "2020-01-01T00:00:00+05:00",
    "0001-01-01",
    "9999-12-31T23:59:59",
    "1677-09-21T00:12:43",
    "2262-04-11T23:47:17",
    "2016-07-01",
    "1467331200",
    "x" * 65,
    "２０１６-07-01",
    "2016-13-01T00:00:00",
    "2016-02-30T00:00:00",
    "NaN",
    "None",
    "-1",
]
ODD_TIME = st.one_of(
    st.sampled_from(ODD_TIME_TEXTS),
    st.sampled_from([0, 1467331200, -1, None, True, 1.5, [], Obj()]),
    st.sampled_from(["1e400", "-0.0", "9" * 400]).map(Raw),
    st.text(max_size=12),
)
# The right timestamp, written otherwise: accepted or refused alike, but consistently.
RESTAMP = st.sampled_from(["T", "Z", "+00:00", "+05:00", ".5", ".000000001", " ", "date"])
FIELD = st.sampled_from(
    ["quantiles", "parameters", "colour", "", "Values", "values", "timestamps", "streams", "é"]
)
QUANTILES = st.one_of(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3),
    st.sampled_from([[0.1, 0.9], [0.5], [], [0.5, 0.5], [0.0], [1.0]]),
    st.sampled_from(["[NaN]", "[1e400]", '"0.5"', "0.5", "null", "[0.1, null]"]).map(Raw),
)
GENERIC = st.one_of(
    st.tuples(st.just("node"), st.integers(0, 10**6), ODD_VALUE),
    st.tuples(st.just("drop"), st.integers(0, 10**6)),
    st.tuples(st.just("dup"), st.integers(0, 10**6), ODD_VALUE, st.booleans()),
    st.tuples(st.just("add"), FIELD, ODD_VALUE),
    st.tuples(st.just("add"), st.just("quantiles"), QUANTILES),
    st.tuples(st.just("add"), st.just("parameters"), st.sampled_from([True, False, 1, "true"])),
    st.tuples(st.just("wrap"), st.integers(0, 10**6)),
    st.tuples(st.just("shorten"), st.integers(0, 10**6)),
    st.tuples(st.just("empty"), st.integers(0, 10**6)),
)
ODD_BODY = st.one_of(
    st.sampled_from(ODD_LITERALS + ["1", '"x"', "[[1, 2]]"]).map(Raw),
    DEEP,
    JSONISH,
    st.sampled_from(["", "{", '{"values": [}', "\ufeff{}", '{"a": 1}{"b": 2}']).map(Raw),
)


# ------------------------------------------------------------------------- rows bodies
@dataclass
class RowsSpec:
    """A rows body: ``n`` ETT rows from ``offset`` past where it would start, in a layout, with
    targeted changes (cells, timestamps) and generic tree mutations."""

    n: int
    offset: int
    layout: str  # "columns" (in ``order``), "rows" (model order) or "bare" (a list of rows)
    order: list[str]
    timed: bool
    iso: bool
    cells: list[tuple[int, int, Any]] = field(default_factory=list)
    stamps: list[tuple[int, Any]] = field(default_factory=list)
    restamps: list[tuple[int, str]] = field(default_factory=list)
    tree: list[tuple] = field(default_factory=list)


def rows_specs(
    n: st.SearchStrategy[int],
    offset: st.SearchStrategy[int],
    cells: tuple[int, int] = (0, 0),
    stamps: tuple[int, int] = (0, 0),
    tree: tuple[int, int] = (0, 0),
    layouts: tuple[str, ...] = ("columns", "rows"),
    timed: st.SearchStrategy[bool] | None = None,
) -> st.SearchStrategy[RowsSpec]:
    """Specs with ``(min, max)`` targeted cells, timestamps (odd or rewritten) and tree
    mutations."""
    cell = st.tuples(st.integers(0, 10**4), st.integers(0, 6), ODD_CELL)
    stamp = st.tuples(st.integers(0, 10**4), ODD_TIME)
    return st.builds(
        RowsSpec,
        n=n,
        offset=offset,
        layout=st.sampled_from(layouts),
        order=st.permutations(ETTH1_COLUMNS),
        timed=st.just(True) if timed is None else timed,
        iso=st.booleans(),
        cells=st.lists(cell, min_size=cells[0], max_size=cells[1]),
        stamps=st.lists(stamp, min_size=stamps[0], max_size=stamps[1]),
        restamps=st.lists(st.tuples(st.integers(0, 10**4), RESTAMP), max_size=min(stamps[1], 1)),
        tree=st.lists(GENERIC, min_size=tree[0], max_size=tree[1]),
    )


def _restamp(text: str, how: str) -> str:
    stamp = pd.Timestamp(text)
    iso = stamp.isoformat()
    return {
        "T": iso,
        "Z": iso + "Z",
        "+00:00": iso + "+00:00",
        "+05:00": iso + "+05:00",
        ".5": iso + ".5",
        ".000000001": iso + ".000000001",
        " ": f" {text} ",
        "date": stamp.strftime("%Y-%m-%d"),
    }[how]


def rows_tree(ctx: Ctx, start: int, spec: RowsSpec) -> Any:
    """The body of ``spec`` for ETT rows from ``start`` (plus the spec's offset)."""
    first = min(max(0, start + spec.offset), len(ctx.times) - spec.n)
    rows: list[list[Any]] = [list(r) for r in ctx.values[first : first + spec.n]]
    times: list[Any] = list(ctx.times[first : first + spec.n])
    if spec.iso:
        times = [t.replace(" ", "T") for t in times]
    for r, how in spec.restamps:
        times[r % spec.n] = _restamp(times[r % spec.n], how)
    for r, c, value in spec.cells:
        rows[r % spec.n][c] = value
    for r, value in spec.stamps:
        times[r % spec.n] = value
    if spec.layout == "bare":
        body: Any = rows
    else:
        if spec.layout == "columns":
            index = {c: j for j, c in enumerate(ETTH1_COLUMNS)}
            values: Any = Obj((c, [row[index[c]] for row in rows]) for c in spec.order)
        else:
            values = rows
        body = Obj([("timestamps", times)] if spec.timed else [])
        body.append(("values", values))
    return mutate(body, spec.tree)


# ------------------------------------------------------------------------- the server side
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes
    body: Any  # strict JSON, or UNREADABLE


class Ctx:
    """The server, the ETT rows, the model's shape and the primed streams of this module (a
    plain class: hypothesis prints it with every failing example)."""

    def __init__(self, server: Server, prefix: str, frame: pd.DataFrame, model: dict) -> None:
        self.server, self.prefix = server, prefix
        self.times: list[str] = frame["date"].astype(str).tolist()
        self.values: list[list[float]] = frame[ETTH1_COLUMNS].astype(float).to_numpy().tolist()
        self.index_of = {pd.Timestamp(t): i for i, t in enumerate(self.times)}
        self.icl, self.ocl = int(model["input_chunk_length"]), int(model["horizon"])
        self.targets: list[str] = list(model["targets"])
        self.primed: list[str] = []
        self.fresh = itertools.count()
        self.healed: list[str] = []

    def __repr__(self) -> str:  # hypothesis prints the fixture with a failing example
        return f"Ctx({self.prefix!r})"

    def call(self, method: str, path: str, body: bytes | None = None) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return Answer(response.status, headers, raw, _strict_json(raw))
        finally:
            connection.close()

    def info(self, stream: str) -> tuple[int, Any]:
        answer = self.call("GET", f"/v1/streams/{quote(stream, safe='')}")
        return answer.status, answer.body

    def new_id(self) -> str:
        return f"{self.prefix}-new-{next(self.fresh)}"

    def next_row(self, k: int) -> tuple[str, int, tuple[int, Any]]:
        """Primed stream ``k`` (a new stream where ``k`` is past them), the ETT row it expects
        next and its state now. A primed stream left in a state that no ETT row follows (a
        property failed already) is dropped and primed again, so that examples stay
        reproducible while hypothesis shrinks."""
        if k >= len(self.primed):
            stream = self.new_id()
            state = self.info(stream)
            assert state[0] == 404, f"new stream {stream}: {state}"
            return stream, FRESH_OFFSET + k, state
        stream = self.primed[k]
        state = self.info(stream)
        if state[0] == 200 and isinstance(state[1], dict):
            try:
                row = self.index_of.get(pd.Timestamp(state[1].get("last_time")))
            except (ValueError, TypeError):
                row = None
            if row is not None and row + 4 < len(self.times):
                return stream, row + 1, state
        self.healed.append(f"{stream}: {state}")
        self.call("DELETE", f"/v1/streams/{stream}")
        self.prime(stream, PRIMED_OFFSETS[k])
        return stream, PRIMED_OFFSETS[k] + self.icl, self.info(stream)

    def prime(self, stream: str, start: int) -> None:
        text = dump(rows_tree(self, start, plain_spec(self.icl)))
        answer = self.call("POST", f"/v1/streams/{stream}/rows", text.encode())
        assert answer.status == 200, (answer.status, answer.raw[:500])


def plain_spec(n: int = 1, **changes: Any) -> RowsSpec:
    """A valid body of ``n`` timed rows (columns in the model's order), with ``changes``."""
    return RowsSpec(n, 0, "columns", list(ETTH1_COLUMNS), True, False, **changes)


def _strict_json(raw: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(raw, parse_constant=refuse)
    except (ValueError, RecursionError):
        return UNREADABLE


def _note(text: str) -> None:
    try:
        note(text)
    except InvalidArgument:  # outside @given (the catalogue): pytest shows it on a failure
        print(text)


def _short(text: str, size: int = 700) -> str:
    if len(text) <= size:
        return text
    return f"{text[: size // 2]} ... {text[-size // 2 :]} ({len(text)} characters)"


@pytest.fixture(scope="module")
def ctx(server: Server) -> Ctx:
    model = server.request("GET", "/v1/model")[1]
    frame = pd.read_csv(DATA_DIR / "ETTh1.csv")
    context = Ctx(server, f"contract-{secrets.token_hex(4)}", frame, model)
    for k, start in enumerate(PRIMED_OFFSETS):
        context.primed.append(f"{context.prefix}-primed-{k}")
        context.prime(context.primed[k], start)
    return context


# ------------------------------------------------------------------------- the properties
def check_answer(answer: Answer) -> None:
    """Property 1 for the whole answer: no 5xx but a 503 with Retry-After; strict JSON; the
    error format on every non-200."""
    assert answer.status < 500 or (answer.status == 503 and "retry-after" in answer.headers), (
        f"server error {answer.status}: {answer.raw[:300]!r}"
    )
    assert answer.body is not UNREADABLE, f"not strict JSON: {answer.status} {answer.raw[:300]!r}"
    if answer.status != 200:
        check_error(answer.body, f"{answer.status} answer")


def check_error(body: Any, where: str) -> None:
    error = body.get("error") if isinstance(body, dict) else None
    assert (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and error["code"]
        and isinstance(error.get("message"), str)
    ), f"{where} without the error format: {body!r:.300}"


def check_forecasts(ctx: Ctx, forecasts: Any, count: int, last_time: Any) -> None:
    """Property 3: ``count`` forecasts of the documented shape; the last at ``last_time``
    (``None``: untimed; ``...``: not compared)."""
    assert isinstance(forecasts, list) and len(forecasts) == count, (
        f"expected {count} forecast(s), got {forecasts!r:.300}"
    )
    for forecast in forecasts:
        assert isinstance(forecast, dict) and {"time", "horizon", "values"} <= set(forecast)
        values = forecast["values"]
        assert isinstance(values, dict) and sorted(values) == sorted(ctx.targets), values
        for series in values.values():
            assert isinstance(series, list) and len(series) == ctx.ocl
            assert all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in series
            ), f"forecast values must be finite numbers: {series!r:.200}"
        if forecast["time"] is None:
            assert forecast["horizon"] is None
            continue
        time = pd.Timestamp(forecast["time"])
        horizon = [pd.Timestamp(t) for t in forecast["horizon"]]
        assert time is not pd.NaT and len(horizon) == ctx.ocl and horizon[0] > time, forecast
        assert all(b > a for a, b in itertools.pairwise(horizon)), forecast["horizon"]
    if forecasts and last_time is not ...:
        time = forecasts[-1]["time"]
        assert (time is None) == (last_time is None), (time, last_time)
        if last_time is not None:
            assert pd.Timestamp(time) == pd.Timestamp(last_time), (time, last_time)


def rows_sent(body: Any) -> int | None:
    """The rows of a (locally read) rows body, or ``None`` where it has none."""
    values = body.get("values") if isinstance(body, dict) else body
    if isinstance(values, dict) and values:
        values = next(iter(values.values()))
    return len(values) if isinstance(values, list) else None


def check_accepted_stream(
    ctx: Ctx, stream: str, before: tuple[int, Any], after: tuple[int, Any], body: Any, out: Any
) -> None:
    """Properties 2 and 3 for a stream whose rows were accepted: advanced by exactly the rows
    sent, its last timestamp by as many hours, and one forecast per completed window."""
    n = rows_sent(body)
    assert n is not None and n > 0, f"{stream}: accepted a body without rows: {body!r:.300}"
    assert after[0] == 200, f"{stream}: accepted, but then {after}"
    rows = before[1]["rows"] if before[0] == 200 else 0
    assert after[1]["rows"] == rows + n, f"{stream}: {rows} + {n} rows sent, now {after[1]}"
    last = after[1]["last_time"]
    if before[0] == 200 and before[1]["last_time"] is not None:
        want = pd.Timestamp(before[1]["last_time"]) + n * HOUR
        assert last is not None and pd.Timestamp(last) == want, (
            f"{stream}: last row was {before[1]['last_time']}, {n} row(s) accepted, now {last}"
        )
    elif last is not None:
        assert pd.Timestamp(last) is not pd.NaT, f"{stream}: last_time {last!r}"
    full = ctx.icl - 1
    windows = max(0, rows + n - full) - max(0, rows - full)
    forecasts = out.get("forecasts") if isinstance(out, dict) else None
    check_forecasts(ctx, forecasts, windows, last)


def check_unchanged(stream: str, before: tuple[int, Any], after: tuple[int, Any]) -> None:
    """Property 2 for a stream whose rows were refused."""
    assert after == before, f"{stream} changed by a refused request: {before} -> {after}"


# ------------------------------------------------------------------ POST /v1/streams/{id}/rows
def _encode_all(stream: str, lower: bool = False) -> str:
    text = "".join(f"%{b:02X}" for b in stream.encode())
    return text.lower() if lower else text


# (name, path of a primed stream's rows, whether it names that very stream: otherwise the id
# is not a valid one and the request must be refused)
PATHS: list[tuple[str, Callable[[str], str], bool]] = [
    ("plain", lambda s: f"/v1/streams/{s}/rows", True),
    ("percent-encoded", lambda s: f"/v1/streams/{_encode_all(s)}/rows", True),
    ("percent-encoded-lower", lambda s: f"/v1/streams/{_encode_all(s, True)}/rows", True),
    ("encoded-slash-no-rows", lambda s: f"/v1/streams/{s}%2Frows", False),
    ("encoded-slash", lambda s: f"/v1/streams/{s}%2Frows/rows", False),
    ("NUL", lambda s: f"/v1/streams/{s}%00/rows", False),
    ("trailing-newline", lambda s: f"/v1/streams/{s}%0A/rows", False),
    ("space", lambda s: f"/v1/streams/{s}%20/rows", False),
    ("unicode", lambda s: f"/v1/streams/{s}%C3%A9/rows", False),
    ("unicode-first", lambda s: f"/v1/streams/%C3%A9{s}/rows", False),
    ("bad-utf8", lambda s: f"/v1/streams/{s}%FF/rows", False),
    ("overlong-utf8-slash", lambda s: f"/v1/streams/{s}%C0%AF/rows", False),
    ("bad-escape", lambda s: f"/v1/streams/{s}%zz/rows", False),
    ("lone-percent", lambda s: f"/v1/streams/{s}%/rows", False),
    ("leading-dash", lambda s: f"/v1/streams/-{s}/rows", False),
    ("201-characters", lambda s: f"/v1/streams/{s}{'a' * (201 - len(s))}/rows", False),
    ("dot-segment", lambda s: f"/v1/streams/{s}/%2E%2E/{s}/rows", False),
    ("empty-id", lambda s: "/v1/streams//rows", False),
]


def valid_id(stream: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,199}", stream) is not None


def post_stream_rows(ctx: Ctx, k: int, spec: RowsSpec, path: int = 0, raw: Any = None) -> Answer:
    """``POST`` rows (``spec``'s, or the ``raw`` body) for primed stream ``k`` by path variant
    ``path``, and the three properties."""
    stream, start, before = ctx.next_row(k)
    name, path_of, same = PATHS[path]
    url = path_of(stream)
    text = dump(rows_tree(ctx, start, spec) if raw is None else raw)
    _note(f"POST {url} ({name}): {_short(text)}")
    answer = ctx.call("POST", url, text.encode())
    _note(f"-> {answer.status} {answer.raw[:400]!r}")
    check_answer(answer)
    after = ctx.info(stream)
    if answer.status != 200:
        check_unchanged(stream, before, after)
        return answer
    assert same, f"rows for another, invalid stream id were accepted ({name}: {url})"
    assert isinstance(answer.body, dict) and answer.body.get("stream") == stream, answer.body
    check_accepted_stream(ctx, stream, before, after, local_json(text), answer.body)
    return answer


OFFSET = st.one_of(st.just(0), st.sampled_from([-96, -3, -1, 1, 2]))
PRIMED = st.integers(0, len(PRIMED_OFFSETS) - 1)
STREAM = st.integers(0, len(PRIMED_OFFSETS))  # a primed stream, or a new one


@_settings(30)
@given(k=STREAM, spec=rows_specs(st.integers(1, 3), OFFSET, cells=(1, 2)))
def test_stream_rows_with_odd_numbers_and_types(ctx: Ctx, k: int, spec: RowsSpec) -> None:
    post_stream_rows(ctx, k, spec)


@_settings(30)
@given(
    k=STREAM,
    spec=rows_specs(st.integers(1, 3), OFFSET, stamps=(1, 2), timed=st.sampled_from([True, False])),
)
def test_stream_rows_with_odd_timestamps(ctx: Ctx, k: int, spec: RowsSpec) -> None:
    post_stream_rows(ctx, k, spec)


@_settings(40)
@given(
    k=STREAM,
    spec=rows_specs(
        st.integers(1, 3), OFFSET, (0, 1), (0, 1), (1, 3), layouts=("columns", "rows", "bare")
    ),
)
def test_stream_rows_with_odd_shapes_and_keys(ctx: Ctx, k: int, spec: RowsSpec) -> None:
    post_stream_rows(ctx, k, spec)


@_settings(30)
@given(body=ODD_BODY)
def test_stream_rows_with_odd_bodies(ctx: Ctx, body: Any) -> None:
    post_stream_rows(ctx, 0, plain_spec(), raw=body)


@_settings(25)
@given(text=st.text(max_size=12), spec=rows_specs(st.just(1), st.just(0), tree=(0, 1)))
def test_new_stream_ids_percent_encoded(ctx: Ctx, text: str, spec: RowsSpec) -> None:
    """Any text in a new stream's id, percent-encoded (UTF-8) in the path: valid ids only are
    accepted, a refused new stream does not exist afterwards."""
    stream = f"{ctx.new_id()}{text}"
    url = f"/v1/streams/{quote(stream, safe='')}/rows"
    body = rows_tree(ctx, FRESH_OFFSET, spec)
    text = dump(body)
    _note(f"POST {url}: {_short(text)}")
    answer = ctx.call("POST", url, text.encode())
    _note(f"-> {answer.status} {answer.raw[:400]!r}")
    check_answer(answer)
    after = ctx.info(stream)
    if answer.status == 200:
        assert valid_id(stream), f"invalid stream id {stream!r} accepted"
        check_accepted_stream(ctx, stream, (404, None), after, local_json(text), answer.body)
    elif valid_id(stream):
        assert after[0] == 404, f"refused new stream {stream!r} exists: {after}"
    else:
        assert after[0] in (404, 422), f"invalid stream id {stream!r}: {after}"


# ------------------------------------------------------------------------- POST /v1/rows
# Invalid stream ids, around a new id each time ("{}"), so that none exists already.
INVALID_ID_TEMPLATES = ["", " {}", "{} ", "{}\n", "{}é", "-{}", "{}/rows", "../{}", "{}\x00"]
INVALID_ID_TEMPLATES += ["{}%41", "ｓ{}", "{}" + "a" * 200]
INVALID_IDS = st.sampled_from(INVALID_ID_TEMPLATES)
ROWS_SPEC = st.one_of(  # half of them valid rows
    rows_specs(st.integers(1, 3), st.just(0)),
    rows_specs(st.integers(1, 3), OFFSET, (0, 1), (0, 1), (0, 1)),
)
ENTRY = st.one_of(
    st.tuples(st.just("primed"), PRIMED, ROWS_SPEC),
    st.tuples(st.just("new"), st.integers(0, 200), ROWS_SPEC),
    st.tuples(INVALID_IDS, st.just(0), ROWS_SPEC),
)


@_settings(30)
@given(entries=st.lists(ENTRY, max_size=4), tree=st.lists(GENERIC, max_size=1))
def test_rows_of_many_streams_answer_per_stream(
    ctx: Ctx, entries: list[tuple[str, int, RowsSpec]], tree: list[tuple]
) -> None:
    post_rows(ctx, entries, tree)


def post_rows(ctx: Ctx, entries: list[tuple[str, int, RowsSpec]], tree: list[tuple]) -> None:
    """``POST /v1/rows`` of ``entries`` (``("primed", k, spec)``, ``("new", k, spec)`` or
    ``(invalid id template, 0, spec)``), and the three properties, stream by stream."""
    streams = Obj()
    before: dict[str, tuple[int, Any]] = {}
    for kind, k, spec in entries:
        if kind == "primed":
            stream, start, before[stream] = ctx.next_row(k)
        elif kind == "new":
            stream, start, before[stream] = ctx.next_row(len(ctx.primed) + k)
        else:
            stream, start = kind.format(ctx.new_id()), FRESH_OFFSET
        streams.append((stream, rows_tree(ctx, start, spec)))
    text = dump(mutate(Obj([("streams", streams)]), tree))
    _note(f"POST /v1/rows: {_short(text, 800)}")
    answer = ctx.call("POST", "/v1/rows", text.encode())
    _note(f"-> {answer.status} {answer.raw[:600]!r}")
    check_answer(answer)
    results: dict[str, Any] = {}
    sent = local_json(text)
    if answer.status == 200:
        assert isinstance(sent, dict) and isinstance(sent.get("streams"), dict) and sent["streams"]
        results = answer.body.get("streams")
        assert isinstance(results, dict) and set(results) == set(sent["streams"]), (
            f"streams sent {sorted(sent['streams'])!r:.200}, answered {results!r:.300}"
        )
        for stream, result in results.items():
            assert isinstance(result, dict) and isinstance(result.get("status"), int), result
            status = result["status"]
            assert status < 500 or status == 503, f"{stream!r}: server error {result!r:.300}"
            if status == 200:
                assert valid_id(stream), f"invalid stream id {stream!r} accepted"
            else:
                check_error(result, f"stream {stream!r}: {status}")
        failed = sum(1 for r in results.values() if r["status"] != 200)
        assert answer.body.get("failed") == failed, answer.body.get("failed")
    for stream, state in before.items():
        after = ctx.info(stream)
        if results.get(stream, {}).get("status") == 200:
            body = sent["streams"][stream]
            check_accepted_stream(ctx, stream, state, after, body, results[stream])
        else:
            check_unchanged(stream, state, after)


# ------------------------------------------------------------------------- POST /v1/forecast
WINDOW_SPEC = rows_specs(
    st.one_of(st.just(96), st.sampled_from([95, 97, 120, 1])),
    st.just(0),
    cells=(0, 2),
    stamps=(0, 1),
    tree=(0, 1),
    layouts=("columns", "rows", "bare"),
    timed=st.booleans(),
)


def post_forecast(ctx: Ctx, windows: list[Any], tree: list[tuple]) -> Answer:
    """``POST /v1/forecast`` of ``windows`` (trees), and the three properties."""
    text = dump(mutate(Obj([("windows", windows)]), tree))
    _note(f"POST /v1/forecast: {_short(text, 800)}")
    stream, _, before = ctx.next_row(0)
    answer = ctx.call("POST", "/v1/forecast", text.encode())
    _note(f"-> {answer.status} {answer.raw[:600]!r}")
    check_answer(answer)
    check_unchanged(stream, before, ctx.info(stream))
    if answer.status != 200:
        return answer
    sent = local_json(text)
    assert isinstance(sent, dict) and isinstance(sent.get("windows"), list)
    forecasts = answer.body.get("forecasts")
    check_forecasts(ctx, forecasts, len(sent["windows"]), ...)
    for window, forecast in zip(sent["windows"], forecasts, strict=True):
        n = rows_sent(window)
        assert n is not None and n >= ctx.icl, f"a window of {n} rows was accepted"
        stamps = window.get("timestamps") if isinstance(window, dict) else None
        if stamps is None:
            assert forecast["time"] is None, forecast["time"]
        elif _naive(stamps[-1]) is not None:
            assert pd.Timestamp(forecast["time"]) == _naive(stamps[-1]), forecast["time"]
    return answer


def _naive(stamp: Any) -> pd.Timestamp | None:
    """``stamp`` as a tz-naive time (``None``: not a string of one)."""
    try:
        time = pd.Timestamp(stamp) if isinstance(stamp, str) else None
    except ValueError:
        return None
    return None if time is None or time is pd.NaT or time.tz is not None else time


@_settings(20)
@given(
    windows=st.lists(st.tuples(st.integers(0, 17000), WINDOW_SPEC), max_size=3),
    tree=st.lists(GENERIC, max_size=1),
)
def test_forecast_windows(ctx: Ctx, windows: list[tuple[int, RowsSpec]], tree: list[tuple]) -> None:
    post_forecast(ctx, [rows_tree(ctx, start, spec) for start, spec in windows], tree)


# ------------------------------------------------------------------------- the catalogue
# The brief's odd inputs, each once (hypothesis samples them, but may not meet every one).
def _label(text: str) -> str:
    if len(text) > 24:
        return f"{text[:8]}...{len(text)}chars"
    return text.encode("unicode_escape").decode() or "empty"


NUMBERS = ODD_NUMBER_TEXTS + ODD_LITERALS
TIMES = [json.dumps(t, ensure_ascii=False) for t in ODD_TIME_TEXTS] + [
    "0",
    "1467331200",
    "-1",
    "null",
    "true",
    "1.5",
    "[]",
    "{}",
    "1e400",
]


@pytest.mark.parametrize("path", range(len(PATHS)), ids=[p[0] for p in PATHS])
def test_catalogue_stream_id_in_the_path(ctx: Ctx, path: int) -> None:
    post_stream_rows(ctx, 0, plain_spec(), path=path)


@pytest.mark.parametrize("number", NUMBERS, ids=[_label(t) for t in NUMBERS])
def test_catalogue_number_in_a_stream_row(ctx: Ctx, number: str) -> None:
    post_stream_rows(ctx, 1, plain_spec(cells=[(0, 6, Raw(number))]))


@pytest.mark.parametrize("number", NUMBERS, ids=[_label(t) for t in NUMBERS])
def test_catalogue_number_in_a_window(ctx: Ctx, number: str) -> None:
    post_forecast(ctx, [rows_tree(ctx, 300, plain_spec(ctx.icl, cells=[(95, 6, Raw(number))]))], [])


@pytest.mark.parametrize("stamp", TIMES, ids=[_label(t) for t in TIMES])
def test_catalogue_timestamp_of_a_stream_row(ctx: Ctx, stamp: str) -> None:
    post_stream_rows(ctx, 2, plain_spec(stamps=[(0, Raw(stamp))]))


@pytest.mark.parametrize("stamp", TIMES, ids=[_label(t) for t in TIMES])
def test_catalogue_timestamp_of_a_new_streams_first_row(ctx: Ctx, stamp: str) -> None:
    post_stream_rows(ctx, len(ctx.primed), plain_spec(stamps=[(0, Raw(stamp))]))


@pytest.mark.parametrize("stamp", TIMES, ids=[_label(t) for t in TIMES])
def test_catalogue_timestamp_in_a_window(ctx: Ctx, stamp: str) -> None:
    post_forecast(ctx, [rows_tree(ctx, 300, plain_spec(ctx.icl, stamps=[(95, Raw(stamp))]))], [])


@pytest.mark.parametrize("template", INVALID_ID_TEMPLATES, ids=lambda t: _label(t[:12]))
def test_catalogue_invalid_id_beside_a_valid_stream_in_rows(ctx: Ctx, template: str) -> None:
    post_rows(ctx, [("primed", 0, plain_spec()), (template, 0, plain_spec())], [])


ROWS_NUMBERS = [t for kind in ("huge integers", "overflowing floats") for t in NUMBER_KINDS[kind]]


@pytest.mark.parametrize("number", ROWS_NUMBERS, ids=[_label(t) for t in ROWS_NUMBERS])
def test_catalogue_number_beside_a_valid_stream_in_rows(ctx: Ctx, number: str) -> None:
    odd = plain_spec(cells=[(0, 6, Raw(number))])
    post_rows(ctx, [("primed", 0, plain_spec()), ("new", 0, odd)], [])


def test_no_primed_stream_had_to_be_primed_again(ctx: Ctx) -> None:
    """Runs last: a primed stream left in a state that no row follows was primed again."""
    assert ctx.healed == []
