"""What `kubectl agentservice` prints, as pure functions of the objects it read and the time.

No client and no clock here: the commands read the AgentService, its Deployments and its Events as
plain JSON dicts and pass `now` in, so the same objects always give the same text (the snapshot
tests rely on it). Colour is a last pass over finished, fitted text (`colourise`), so widths are
measured on what is visible.
"""

from __future__ import annotations

import datetime
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent_operator.api import models
from agent_operator.manifests import naming

EVENT_LIMIT: Final = 8
ACTIVE: Final = frozenset({models.CanaryPhase.PROGRESSING.value, models.CanaryPhase.PAUSED.value})
TRACKS: Final = (
    (naming.Component.API, naming.Track.STABLE),
    (naming.Component.API, naming.Track.CANARY),
    (naming.Component.WORKER, naming.Track.STABLE),
    (naming.Component.WORKER, naming.Track.CANARY),
)

_GREEN, _RED, _YELLOW, _CYAN, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[36m", "\x1b[0m"
_COLOURS: Final = {
    "success": _GREEN,
    "Promoted": _GREEN,
    "Ready": _GREEN,
    "failure": _RED,
    "error": _RED,
    "RolledBack": _RED,
    "Failed": _RED,
    "Degraded": _RED,
    "inconclusive": _YELLOW,
    "Paused": _YELLOW,
    "Warning": _YELLOW,
    "Progressing": _CYAN,
}
# Whole words only, and not inside a longer identifier (`AnalysisError`, `error-rate`).
_COLOUR_WORDS: Final = re.compile(r"(?<![\w-])(" + "|".join(_COLOURS) + r")(?![\w-])")


# Every string a tenant can write reaches an admin's terminal through this plugin: names, messages,
# annotations, Events. C0 and C1 control characters (ESC starts a terminal escape sequence: it can
# rewrite the screen, set the window title, or with some terminals write files), DEL, and the Unicode
# bidirectional overrides (they reorder what is shown) are each replaced by `?`, before any view
# is built (`printable_tree`), and once more over the finished text (`printable`), keeping its lines.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_NEWLINE: Final = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with every control character replaced by `?` (newlines kept when `lines`)."""
    return (_CONTROL_BUT_NEWLINE if lines else _CONTROL).sub("?", text)


def printable_tree(value: Any) -> Any:
    """A JSON value read from the API with `printable` applied to every string in it, keys included."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [printable_tree(item) for item in value]
    if isinstance(value, dict):
        return {printable(str(key)): printable_tree(item) for key, item in value.items()}
    return value


# --- small helpers ------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime.datetime | None:
    """An RFC 3339 time from the API (`2026-01-01T00:00:00Z`, with or without fractions), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def age(value: Any, now: datetime.datetime) -> str:
    """kubectl's short age: `45s`, `12m`, `3h`, `2d`; `-` when unknown."""
    then = parse_time(value)
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns, two spaces apart, the first row as header; trailing blanks trimmed."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def number(value: Any) -> str:
    if value is None:
        return "no data"
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


def fit(text: str, width: int | None) -> str:
    """Wrap every line longer than `width` (continuations indented under it): nothing is cut off."""
    if width is None:
        return text
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        lead = " " * (len(line) - len(line.lstrip(" ")))
        out.extend(
            textwrap.wrap(
                line.strip(),
                width=width,
                initial_indent=lead,
                subsequent_indent=lead + "    ",
                break_long_words=True,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def colourise(text: str) -> str:
    """Phases and verdicts in colour (for a terminal that wants it)."""
    return _COLOUR_WORDS.sub(lambda m: f"{_COLOURS[m.group(1)]}{m.group(1)}{_RESET}", text)


def canary_of(svc: Mapping[str, Any]) -> dict[str, Any]:
    return dict((svc.get("status") or {}).get("canary") or {})


def steps_of(svc: Mapping[str, Any]) -> list[int]:
    steps = ((svc.get("spec") or {}).get("canary") or {}).get("steps")
    return [int(s) for s in steps] if isinstance(steps, list) and steps else [10, 50, 100]


def step_text(svc: Mapping[str, Any]) -> str:
    """`1/2` (the step being analysed, of the steps below 100) during a rollout, else `-`."""
    canary = canary_of(svc)
    if canary.get("phase") not in ACTIVE:
        return "-"
    analysed = max(len(steps_of(svc)) - 1, 1)
    return f"{int(canary.get('stepIndex', 0)) + 1}/{analysed}"


def ready_text(svc: Mapping[str, Any]) -> str:
    status = svc.get("status") or {}
    return f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)}"


# --- get ------------------------------------------------------------------------------------------


def get_view(
    svc: Mapping[str, Any],
    deployments: Mapping[str, Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    now: datetime.datetime,
) -> str:
    """The `get` view: rollout, the day's spend, replicas per track, last analysis, conditions, recent Events."""
    meta = svc.get("metadata") or {}
    name = str(meta.get("name", ""))
    status = svc.get("status") or {}
    canary = canary_of(svc)
    phase = str(canary.get("phase") or models.CanaryPhase.IDLE.value)
    lines = [
        f"Name:       {meta.get('namespace', 'default')}/{name}",
        f"Phase:      {status.get('phase', 'Pending')}   ready {ready_text(svc)}   "
        f"age {age(meta.get('creationTimestamp'), now)}",
        f"Rollout:    {phase}{_position(svc, canary)}",
        f"Stable:     {canary.get('stableRevision') or status.get('revision') or '-'}",
        f"Canary:     {canary.get('canaryRevision') or '-'}",
    ]
    if canary.get("message"):
        lines.append(f"Message:    {canary['message']}")
    lines += _budget(svc, now)
    lines += tools_lines(svc)
    lines += ["", "Replicas:", *_replicas(name, deployments)]
    lines += ["", *_analysis(canary.get("lastAnalysis"), now)]
    lines += ["", "Conditions:", *_conditions(status.get("conditions") or [], now)]
    lines += ["", "Events:", *_events(events, now)]
    return "\n".join(lines) + "\n"


def _position(svc: Mapping[str, Any], canary: Mapping[str, Any]) -> str:
    if canary.get("phase") not in ACTIVE:
        return ""
    steps = steps_of(svc)
    index = int(canary.get("stepIndex", 0))
    marked = " ".join(f"[{s}]" if i == index else str(s) for i, s in enumerate(steps))
    weight = canary.get("weight", 0)
    actual = canary.get("actualWeight", weight)
    return f"   step {step_text(svc)}   weight {weight}% (actual {actual}%)   steps {marked}"


def usd(amount: Any) -> str:
    """Dollars as the runtime writes them: cents, or four decimals below one dollar."""
    if not isinstance(amount, int | float):
        return "-"
    return f"${amount:.2f}" if abs(amount) >= 1 else f"${amount:.4f}"


def _budget(svc: Mapping[str, Any], now: datetime.datetime) -> list[str]:
    """`Budget:` (with spec.budget.dailyUSD): the day's spend, what is left, its age, why it is old."""
    shown = (svc.get("status") or {}).get("budget")
    daily = ((svc.get("spec") or {}).get("budget") or {}).get("dailyUSD")
    if not isinstance(shown, Mapping):
        return [] if daily is None else [f"Budget:     {usd(daily)} a day, not measured yet"]
    daily = shown.get("dailyUSD", daily)
    if shown.get("spentTodayUSD") is None:
        line = f"Budget:     {usd(daily)} a day, not measured"
    else:
        day = shown.get("day") or "?"
        when = "today" if day == now.astimezone(datetime.UTC).strftime("%Y-%m-%d") else f"on {day} (UTC)"
        parts = [f"{usd(shown['spentTodayUSD'])} of {usd(daily)} spent {when}"]
        if shown.get("reservedUSD") is not None:
            parts.append(f"{usd(shown['reservedUSD'])} reserved")
        if shown.get("remainingUSD") is not None:
            parts.append(f"{usd(shown['remainingUSD'])} left")
        if shown.get("heldTasks"):
            parts.append(f"{shown['heldTasks']} tasks held")
        line = f"Budget:     {', '.join(parts)}   observed {age(shown.get('observedAt'), now)} ago"
    lines = [line]
    if shown.get("message"):
        lines.append(f"            {shown['message']}")
    return lines


def _policy_text(entry: Mapping[str, Any]) -> str:
    parts = []
    allow = entry.get("allowTools")
    if isinstance(allow, list):
        parts.append(f"allow {', '.join(str(a) for a in allow) or 'none'}")
    parts.append(f"timeout {entry.get('timeoutSeconds', 30)}s")
    parts.append(f"sideEffects {entry.get('sideEffects', 'external')}")
    return "; ".join(parts)


def tools_lines(svc: Mapping[str, Any]) -> list[str]:
    """`Tools:`: the built-ins offered, each MCP server (its endpoint or command) and Python module, with policy."""
    tools = (svc.get("spec") or {}).get("tools")
    if not isinstance(tools, Mapping):
        return ["Tools:      built-in calculator, current_time, word_count"]
    builtin = tools.get("builtin")
    names = ", ".join(str(b) for b in builtin) if isinstance(builtin, list) else "calculator, current_time, word_count"
    lines = [f"Tools:      built-in {names or 'none'}"]
    for server in tools.get("mcpServers") or []:
        if not isinstance(server, Mapping):
            continue
        if server.get("url"):
            where = f"http {server['url']}"
        else:
            where = "stdio " + " ".join(str(c) for c in server.get("command") or [])
        lines.append(f"            mcp {server.get('name')}__*: {where} ({_policy_text(server)})")
    for module in tools.get("python") or []:
        if isinstance(module, Mapping):
            lines.append(f"            python {module.get('module')} ({_policy_text(module)})")
    return lines


def _replicas(name: str, deployments: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = [("COMPONENT", "TRACK", "READY", "DESIRED", "DEPLOYMENT")]
    for component, track in TRACKS:
        deployment_name = naming.deployment_name(name, component, track)
        deployment = deployments.get(deployment_name)
        if deployment is None:
            if track == naming.Track.STABLE:
                rows.append((component.value, track.value, "-", "-", f"{deployment_name} (missing)"))
            continue
        desired = (deployment.get("spec") or {}).get("replicas", 1)
        ready = (deployment.get("status") or {}).get("readyReplicas", 0)
        rows.append((component.value, track.value, str(ready), str(desired), deployment_name))
    return table(rows, indent="  ")


def _analysis(result: Any, now: datetime.datetime) -> list[str]:
    if not isinstance(result, Mapping):
        return ["Last analysis: none yet"]
    lines = [
        f"Last analysis: {result.get('verdict', '?')} at weight {result.get('weight', '?')}%, "
        f"{age(result.get('time'), now)} ago"
    ]
    rows = [("CHECK", "VALUE", "REQUESTS", "THRESHOLD", "VERDICT")]
    queries = []
    for check in result.get("checks") or []:
        samples = "-" if check.get("samples") is None else number(check["samples"])
        rows.append(
            (
                str(check.get("name", "")),
                number(check.get("value")),
                samples,
                str(check.get("threshold") or "-"),
                str(check.get("verdict", "")),
            )
        )
        queries.append((check.get("name", ""), check.get("query", ""), check.get("message", "")))
    lines += table(rows, indent="  ")
    for check_name, query, message in queries:
        if query:
            lines.append(f"  {check_name} query: {query}")
        if message:
            lines.append(f"  {check_name}: {message}")
    return lines


def _conditions(conditions: Sequence[Mapping[str, Any]], now: datetime.datetime) -> list[str]:
    if not conditions:
        return ["  none"]
    rows = [("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")]
    for cond in conditions:
        rows.append(
            (
                str(cond.get("type", "")),
                str(cond.get("status", "")),
                str(cond.get("reason", "")),
                age(cond.get("lastTransitionTime"), now),
                str(cond.get("message", "")).replace("\n", " "),
            )
        )
    return table(rows, indent="  ")


def event_time(event: Mapping[str, Any]) -> str:
    """The latest time an Event names (core/v1 or events.k8s.io fields)."""
    series = event.get("series") or {}
    for value in (
        series.get("lastObservedTime"),
        event.get("lastTimestamp"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    ):
        if value:
            return str(value)
    return ""


def recent_events(events: Sequence[Mapping[str, Any]], limit: int = EVENT_LIMIT) -> list[Mapping[str, Any]]:
    """The `limit` latest Events, oldest first (by time, then name for a stable order)."""
    ordered = sorted(
        events,
        key=lambda e: (
            parse_time(event_time(e)) or datetime.datetime.min.replace(tzinfo=datetime.UTC),
            str((e.get("metadata") or {}).get("name", "")),
        ),
    )
    return ordered[-limit:]


def _events(events: Sequence[Mapping[str, Any]], now: datetime.datetime) -> list[str]:
    if not events:
        return ["  none"]
    rows = [("AGE", "TYPE", "REASON", "MESSAGE")]
    for event in recent_events(events):
        rows.append(
            (
                age(event_time(event), now),
                str(event.get("type", "Normal")),
                str(event.get("reason", "")),
                str(event.get("message") or event.get("note") or "").replace("\n", " "),
            )
        )
    return table(rows, indent="  ")


# --- list and history -----------------------------------------------------------------------------


def list_view(services: Sequence[Mapping[str, Any]], now: datetime.datetime, *, all_namespaces: bool) -> str:
    """One row per AgentService, with the canary's phase, step and weight."""
    header = ("NAME", "PHASE", "READY", "ROLLOUT", "STEP", "WEIGHT", "STABLE", "CANARY", "AGE")
    rows: list[tuple[str, ...]] = [("NAMESPACE", *header) if all_namespaces else header]
    ordered = sorted(
        services,
        key=lambda s: ((s.get("metadata") or {}).get("namespace", ""), (s.get("metadata") or {}).get("name", "")),
    )
    for svc in ordered:
        meta = svc.get("metadata") or {}
        canary = canary_of(svc)
        active = canary.get("phase") in ACTIVE
        row = (
            str(meta.get("name", "")),
            str((svc.get("status") or {}).get("phase", "Pending")),
            ready_text(svc),
            str(canary.get("phase") or models.CanaryPhase.IDLE.value),
            step_text(svc),
            f"{canary.get('weight', 0)}%" if active else "-",
            str(canary.get("stableRevision") or "-"),
            str(canary.get("canaryRevision") or "-") if active else "-",
            age(meta.get("creationTimestamp"), now),
        )
        rows.append((str(meta.get("namespace", "")), *row) if all_namespaces else row)
    return "\n".join(table(rows)) + "\n"


def history_view(svc: Mapping[str, Any], now: datetime.datetime) -> str:
    """Past rollouts, oldest first, then the one in progress (if any)."""
    canary = canary_of(svc)
    rollouts = canary.get("rollouts") or []
    lines: list[str] = []
    if rollouts:
        rows = [("#", "FINISHED", "REVISION", "FROM", "OUTCOME", "REASON")]
        for number_, record in enumerate(rollouts, start=1):
            rows.append(
                (
                    str(number_),
                    f"{age(record.get('finishedTime'), now)} ago",
                    str(record.get("revision", "")),
                    str(record.get("stableRevision") or "-"),
                    str(record.get("outcome", "")),
                    str(record.get("reason", "")),
                )
            )
        lines += table(rows)
        messages = [(i, r.get("message")) for i, r in enumerate(rollouts, start=1) if r.get("message")]
        if messages:
            lines += ["", *(f"{i}: {message}" for i, message in messages)]
    else:
        lines.append("no finished rollouts recorded")
    if canary.get("phase") in ACTIVE:
        lines += [
            "",
            f"in progress: revision {canary.get('canaryRevision', '?')} ({canary.get('phase')}) "
            f"at weight {canary.get('weight', 0)}%, step {step_text(svc)}",
        ]
    return "\n".join(lines) + "\n"
