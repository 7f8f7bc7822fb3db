"""User input to AgentService models, with every error turned into a line a person can act on.

The one place that maps pydantic `ValidationError`s and YAML errors into `Problem`s: a field path
(`spec.autoscaling.maxReplicas`, the camelCase names of the manifest) and the rule it breaks.
Cross-field rules raise `models.CrossFieldError(field, message)`; its field is appended to the
location pydantic reports (the model) so the path names the field to change. Used by
`agentctl render` and by the operator (the SpecInvalid condition), so both say the same thing.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import pydantic
import yaml
from agent_operator.api import models

STDIN: Final = "-"

# What the spec's patterns mean, in words (pydantic would print the regular expression).
PATTERN_MEANINGS: Final = {
    models.DURATION: "must be a duration such as 30s, 5m or 1h30m",
    models.INTERVAL: "must be a duration such as 30s, 5m or 1h30m, with at most six digits a number",
    models.QUANTITY: "must be a Kubernetes quantity such as 250m, 1 or 512Mi",
    models.DNS_LABEL: "must be a DNS label: lowercase letters, digits and '-', starting and ending alphanumeric",
    models.DNS_1035_LABEL: (
        "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending alphanumeric"
    ),
    models.DNS_SUBDOMAIN: (
        "must be a DNS subdomain: lowercase letters, digits, '-' and '.', each dot-separated part"
        " starting and ending alphanumeric (an object in the AgentService's namespace)"
    ),
    models.DATA_KEY: "must be a Secret key: letters, digits, '-', '_' and '.', and not '.', '..' or '..'-prefixed",
    models.ENV_NAME: "must be a valid environment variable name",
    r"^https?://": "must be an http:// or https:// URL",
    models.REDIS_MASTER_NAME: "must be a Sentinel master name: letters, digits, '-', '_' and '.'",
    models.REDIS_USERNAME: "must be a Redis user name: no spaces, '@' or ':'",
    models.REDIS_URL: "must be a redis[s]:// URL, or redis[s]+cluster:// or redis[s]+sentinel://",
    models.LABEL_VALUE: (
        "must be a label value: empty, or letters, digits, '-', '_' and '.' starting and ending alphanumeric"
    ),
    models.MCP_URL: "must be an http:// or https:// URL with a host and no credentials",
    models.HTTP_HEADER_NAME: "must be an HTTP header name: letters, digits and '-'",
    models.PYTHON_MODULE: "must be a Python import path such as my_package.tools",
}
VALUE_ERROR_PREFIX: Final = "Value error, "


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where (a field path, empty for the whole document) and why."""

    path: str
    message: str
    line: int | None = None  # 1-based line of the field in its file, when read from one

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclasses.dataclass(frozen=True)
class Document:
    """One YAML document of an input file."""

    source: str
    index: int  # 1-based position in the file
    line: int  # 1-based line where the document starts
    body: Any
    node: yaml.Node | None = None  # the composed document: where each field is (`field_line`)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


class InputError(Exception):
    """A file that cannot be read or parsed at all; the message names the file (and line)."""


class InvalidManifest(Exception):
    """A document that is not a valid AgentService."""

    def __init__(self, document: Document, problems: Sequence[Problem], headline: str) -> None:
        super().__init__(headline)
        self.document = document
        self.problems = list(problems)
        self.headline = headline


def field_path(loc: Iterable[int | str]) -> str:
    """Render a pydantic location as a manifest path: `spec.model.providers[0].name`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif any(ch in part for ch in "./ []"):
            path += f'["{part}"]'
        else:
            path += f".{part}" if path else part
    return path


def _bound(ctx: dict[str, Any], key: str) -> str:
    value = ctx[key]
    return format(value, "g") if isinstance(value, float) else str(value)


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def _message(error: Any) -> str:
    """The rule behind one pydantic error, worded for a person."""
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict | list) else ""
    simple: dict[str, Callable[[], str]] = {
        "greater_than_equal": lambda: f"must be >= {_bound(ctx, 'ge')}{got}",
        "greater_than": lambda: f"must be > {_bound(ctx, 'gt')}{got}",
        "less_than_equal": lambda: f"must be <= {_bound(ctx, 'le')}{got}",
        "less_than": lambda: f"must be < {_bound(ctx, 'lt')}{got}",
        "string_too_long": lambda: f"must be at most {ctx['max_length']} characters",
        "string_too_short": lambda: f"must be at least {ctx['min_length']} characters",
        "too_long": lambda: f"must have at most {_items(ctx['max_length'])}",
        "too_short": lambda: f"must have at least {_items(ctx['min_length'])}",
        "extra_forbidden": lambda: "unknown field (not part of the AgentService API)",
        "missing": lambda: "required field is missing",
    }
    if kind in simple:
        return simple[kind]()
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_MEANINGS:
        return PATTERN_MEANINGS[ctx["pattern"]] + got
    if kind == "enum":
        choices = str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
        return f"must be one of: {choices}{got}"
    message: str = error["msg"]
    if kind.endswith(("_type", "_parsing")) and "input" in error:
        return f"{message} (got {_given(error['input'])})"
    return message.removeprefix(VALUE_ERROR_PREFIX)


def _given(value: Any) -> str:
    """The value a type error was given, as the manifest wrote it (a mapping or list named, not dumped)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def problems_from(exc: pydantic.ValidationError, node: yaml.Node | None = None) -> list[Problem]:
    """One `Problem` per pydantic error, cross-field errors reported at the field to change; with the
    document's `node`, each names the line of its field."""
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, models.CrossFieldError):
            loc = [*loc, *cause.field.split(".")]
            message = cause.message
        else:
            message = _message(error)
        line = field_line(node, loc) if node is not None else None
        problems.append(Problem(field_path(loc), message, line))
    return problems


def field_line(node: yaml.Node, loc: Sequence[int | str]) -> int:
    """The 1-based line of the field at `loc` (a pydantic location: keys and list indexes).

    Follows the composed YAML node by node: a mapping key is found by its text, a list item by its
    index. A field that is missing, or whose path ends inside something else, gets the line of the
    deepest part that exists (the mapping that lacks the key), which is where it must be added.
    """
    line = node.start_mark.line + 1
    current: yaml.Node = node
    for part in loc:
        if isinstance(current, yaml.MappingNode) and isinstance(part, str):
            found = next(((k, v) for k, v in current.value if getattr(k, "value", None) == part), None)
            if found is None:
                break
            line, current = found[0].start_mark.line + 1, found[1]
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(current.value):
            current = current.value[part]
            line = current.start_mark.line + 1
        else:
            break
    return line


def read_text(source: str) -> str:
    """The text of a file (`-` is standard input), or an `InputError` naming it."""
    if source == STDIN:
        return sys.stdin.read()
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{source}: is a directory, not a manifest file") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a UTF-8 text file") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read: {exc.strerror}") from None


def load_documents(source: str, text: str) -> list[Document]:
    """Split a YAML stream into documents; a syntax error names the file, line and column."""
    display = "<stdin>" if source == STDIN else source
    loader = yaml.SafeLoader(text)
    documents: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1 if node is not None else 1
            body = loader.construct_document(node) if node is not None else None
            if body is not None:
                documents.append(Document(display, len(documents) + 1, line, body, node))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}:{mark.column + 1}" if mark is not None else display
        reason = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"{where}: YAML syntax error: {reason}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{display}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    return documents


def _identity(body: dict[str, Any]) -> str:
    return f"{body.get('apiVersion', '<no apiVersion>')}/{body.get('kind', '<no kind>')}"


def parse_agent_service(document: Document) -> models.AgentService:
    """Validate one document as an AgentService, or raise `InvalidManifest` listing every problem."""
    body = document.body
    wanted = f"{models.API_VERSION}/{models.KIND}"
    if not isinstance(body, dict):
        raise InvalidManifest(
            document, [], f"document {document.index} is a {type(body).__name__}, not an {wanted} object"
        )
    if body.get("kind") != models.KIND or body.get("apiVersion") != models.API_VERSION:
        raise InvalidManifest(document, [], f"document {document.index} is {_identity(body)}, not {wanted}")
    try:
        return models.AgentService.from_manifest(body)
    except pydantic.ValidationError as exc:
        metadata = body.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        what = f'AgentService "{name}"' if isinstance(name, str) else f"AgentService (document {document.index})"
        raise InvalidManifest(document, problems_from(exc, document.node), f"{what} is invalid:") from None


def spec_problems(body: dict[str, Any]) -> list[Problem]:
    """Every problem of an AgentService object (as the operator reads it), empty when it is valid."""
    try:
        models.AgentService.from_manifest(body)
    except pydantic.ValidationError as exc:
        return problems_from(exc)
    return []
