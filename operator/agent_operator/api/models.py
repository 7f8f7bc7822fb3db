"""The AgentService API: spec and status models, the single source of truth.

The CRD schema (`crd.py`), the docs reference and `agentctl render` are all generated from these
models. Cross-field rules live twice on purpose, in one place: each model lists its rules as CEL
(`x-kubernetes-validations`, enforced by the API server at `kubectl apply`) and checks the same
rule in a pydantic validator (enforced by `render` and by the operator for clusters that predate
CEL validation). A test proves that both halves reject the same invalid examples.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import socket
import urllib.parse
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final

from agent_operator.api import endpoints
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from agent_runtime.config import DEFAULT_MAX_QUEUED_INPUT_BYTES, DEFAULT_MAX_QUEUED_TASKS, PriceConfig
from agent_runtime.evaluation import suite
from agent_runtime.pricing import PriceTable

GROUP = "agentops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AgentService"
PLURAL = "agentservices"
SINGULAR = "agentservice"
SHORT_NAMES = ["agsvc"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# An AgentService's name: it names Services (`<name>-api`), which must be DNS-1035 labels
# (k8s.io/apimachinery IsDNS1035Label: a letter first), at most 63 characters. Children whose
# `<name>-<suffix>` would pass their kind's limit are shortened (manifests/naming.py).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
SERVICE_NAME_MAX_LENGTH = 63
# The names of the objects a spec references (Secrets, ServiceAccounts) are DNS subdomains, as the
# API server requires (k8s.io/apimachinery IsDNS1123Subdomain, at most 253 characters). The rule
# also keeps a name from ever being more than one URL path segment: no '/', '%', '.' or '..'.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Secret or ConfigMap data key (IsConfigMapKey): `[-._a-zA-Z0-9]+`, neither `.` nor `..`, nor
# starting with `..`; written without lookahead, which the API server's RE2 patterns lack.
DATA_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
NAME_MAX_LENGTH = 253
# Bounds of what a tenant writes (issue 27): every string and map of the spec has one, so a spec's
# size, and what the operator renders from it, is bounded (`manifests/builders.RENDER_CEILING`).
ENV_VALUE_MAX_LENGTH = 4096
POD_ANNOTATIONS_MAX = 64
# An annotation key: an optional DNS-subdomain prefix (253) and '/', then a name of at most 63.
ANNOTATION_KEY_MAX_LENGTH = 317
ANNOTATION_VALUE_MAX_LENGTH = 4096
PRICES_MAX = 64
MODEL_NAME_MAX_LENGTH = 200
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DURATION = r"^([0-9]+(ms|s|m|h))+$"
# spec.canary.interval: an analysis at most every second (the analysis slots are shared by every
# tenant), at least once a day; a bounded length, so that no spelling overflows a duration.
MIN_INTERVAL_SECONDS: Final = 1.0
MAX_INTERVAL_SECONDS: Final = 24 * 3600.0
MAX_INTERVAL_LENGTH: Final = 16
# at most six digits a number: 16 characters of them stay far below a duration's range (2,562,047h)
INTERVAL = r"^([0-9]{1,6}(ms|s|m|h))+$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Schemes of spec.redis.url: standalone, cluster and sentinel, each plain or TLS (`rediss`).
REDIS_URL = r"^rediss?(\+(cluster|sentinel))?://"
REDIS_MASTER_NAME = r"^[-._a-zA-Z0-9]+$"
# A label key (k8s.io/apimachinery IsQualifiedName): an optional DNS-subdomain prefix and '/', then a
# name of at most 63 characters; a label value is empty or such a name.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = rf"^({DNS_SUBDOMAIN[1:-1]}/)?{_LABEL_NAME}$"
LABEL_VALUE = rf"^({_LABEL_NAME})?$"
LABEL_PREFIX_MAX_LENGTH = 253
# The operator's own labels select and own the children: a spec may not set them.
RESERVED_LABEL_PREFIX = "app.kubernetes.io/"
MONITORING_LABELS_MAX = 32
REDIS_USERNAME = r"^[^\s@:]+$"
_REDIS_HOST = r"([^@/:,\[\]]+|\[[0-9a-fA-F:.]+\])(:[0-9]+)?"
# What KEDA's redis(-cluster|-sentinel)-streams triggers can dial: hosts (or [IPv6]) with optional
# ports, then (sentinel only) a master name, and a numeric database; no credentials in the URL.
_REDIS_HOSTS = rf"{_REDIS_HOST}(,{_REDIS_HOST})*"
KEDA_REDIS_URL = (
    rf"^(rediss?(\+cluster)?://{_REDIS_HOSTS}(/[0-9]+)?"
    rf"|rediss?\+sentinel://{_REDIS_HOSTS}(/[-._a-zA-Z0-9]+)?(/[0-9]+)?)$"
)
KEDA_REDIS_MESSAGE = (
    "the keda engine needs a plain redis.url (redis[s]://, redis[s]+cluster:// or redis[s]+sentinel://"
    " host[:port][,host[:port]...][/db]) without credentials"
    " (KEDA connects to Redis itself; put the password in redis.passwordSecretRef,"
    " or keep the whole URL in redis.urlSecretRef)"
)
KEDA_KEYS_MESSAGE = "redis.keda names keys of the urlSecretRef Secret: it applies only with urlSecretRef"
KEDA_SENTINEL_MESSAGE = (
    "the keda engine with a Sentinel URL in redis.urlSecretRef needs redis.masterName"
    " (KEDA cannot read the primary's name from the Secret)"
)


# Where a cloud's instance metadata answers (credentials of the node's identity): a provider pointed
# there would send the service's prompts to it and return what it says; the runtime's calls carry
# the provider's API key too. Link-local networks hold nothing else a provider could be.
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.com",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
METADATA_NETWORKS = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::/32"),  # AWS's IPv6 metadata endpoint (fd00:ec2::254)
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud's metadata endpoint
)


def refused_host(url: str) -> str | None:
    """Why the host of `url` may not be a provider's (a link-local or metadata address), or None.

    Numeric hosts are read as a resolver reads them (`inet_aton`: `2852039166`, `0xa9fea9fe` and
    `169.254.43518` are all 169.254.169.254), and IPv4 inside IPv6 (`::ffff:169.254.169.254`) as IPv4.
    A name that resolves into these ranges is not caught here: that takes DNS, which a validator must
    not depend on; `--allowed-provider-host` closes the list for those who need it (docs/security.md).
    """
    try:
        host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return "is not a valid URL"
    if host in METADATA_HOSTS:
        return f"names {host!r}, a cloud metadata host"
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            address = None  # a name
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address is not None and any(address in network for network in METADATA_NETWORKS):
        return f"names {address}, a link-local or metadata address"
    return None


class CrossFieldError(ValueError):
    """A rule that relates several fields, reported against the field a person should change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Model(BaseModel):
    """Base for every spec model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
        validate_default=True,
    )
    # CEL rules for this object, emitted as `x-kubernetes-validations` by the CRD generator.
    cel_rules: ClassVar[list[dict[str, str]]] = []


def duration_seconds(text: str) -> float:
    """Parse a Go-style duration such as `30s`, `5m` or `1h30m` into seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"([0-9]+)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m")
    return sum(int(n) * units[u] for n, u in parts)


# --- small shared pieces -------------------------------------------------------------------------


class SecretKeyRef(Model):
    """A key inside a Secret in the AgentService's namespace."""

    name: str = Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=DNS_SUBDOMAIN,
        description="Name of the Secret, in the AgentService's namespace (a DNS subdomain).",
    )
    key: str = Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=DATA_KEY,
        description="Key inside the Secret (letters, digits, '-', '_' and '.').",
    )


class ResourceList(Model):
    """CPU and memory quantities, as in a container's resources; `null` leaves a quantity unset."""

    cpu: str | None = Field(default=None, max_length=64, pattern=QUANTITY, description="CPU quantity, e.g. `250m`.")
    memory: str | None = Field(
        default=None, max_length=64, pattern=QUANTITY, description="Memory quantity, e.g. `512Mi`."
    )


# Defaults live on each quantity, not on the whole object: a spec that sets only
# `worker.resources.requests.cpu` keeps the memory request and the limits of the defaults, as the
# API server's defaulting does for the stored object (null drops one: `memory: null`).


class ApiRequests(ResourceList):
    """Requests of the task API container."""

    cpu: str | None = Field(
        default="100m", max_length=64, pattern=QUANTITY, description="CPU quantity, e.g. `250m` (`null`: none)."
    )
    memory: str | None = Field(
        default="256Mi", max_length=64, pattern=QUANTITY, description="Memory quantity, e.g. `512Mi` (`null`: none)."
    )


class ApiLimits(ResourceList):
    """Limits of the task API container."""

    cpu: str | None = Field(default=None, max_length=64, pattern=QUANTITY, description="CPU quantity, e.g. `250m`.")
    memory: str | None = Field(
        default="512Mi", max_length=64, pattern=QUANTITY, description="Memory quantity, e.g. `512Mi` (`null`: none)."
    )


class WorkerRequests(ResourceList):
    """Requests of the worker container."""

    cpu: str | None = Field(
        default="200m", max_length=64, pattern=QUANTITY, description="CPU quantity, e.g. `250m` (`null`: none)."
    )
    memory: str | None = Field(
        default="256Mi", max_length=64, pattern=QUANTITY, description="Memory quantity, e.g. `512Mi` (`null`: none)."
    )


class WorkerLimits(ResourceList):
    """Limits of the worker container."""

    cpu: str | None = Field(default=None, max_length=64, pattern=QUANTITY, description="CPU quantity, e.g. `250m`.")
    memory: str | None = Field(
        default="1Gi", max_length=64, pattern=QUANTITY, description="Memory quantity, e.g. `512Mi` (`null`: none)."
    )


class Resources(Model):
    """Requests and limits for one container."""

    requests: ResourceList = Field(
        default_factory=ResourceList, description="Resources the scheduler reserves for the container."
    )
    limits: ResourceList = Field(
        default_factory=ResourceList, description="Hard caps; CPU is left unlimited by default to avoid throttling."
    )


class ApiResources(Resources):
    """Requests and limits of the task API container."""

    requests: ApiRequests = Field(
        default_factory=ApiRequests, description="Resources the scheduler reserves for the container."
    )
    limits: ApiLimits = Field(
        default_factory=ApiLimits, description="Hard caps; CPU is left unlimited by default to avoid throttling."
    )


class WorkerResources(Resources):
    """Requests and limits of the worker container."""

    requests: WorkerRequests = Field(
        default_factory=WorkerRequests, description="Resources the scheduler reserves for the container."
    )
    limits: WorkerLimits = Field(
        default_factory=WorkerLimits, description="Hard caps; CPU is left unlimited by default to avoid throttling."
    )


class EnvVar(Model):
    """An extra environment variable for the runtime containers."""

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME, description="Variable name.")
    value: str | None = Field(default=None, max_length=ENV_VALUE_MAX_LENGTH, description="Literal value.")
    secret_key_ref: SecretKeyRef | None = Field(
        default=None, description="Take the value from a Secret key instead of a literal."
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!(has(self.value) && has(self.secretKeyRef))",
            "message": "set value or secretKeyRef, not both",
            "fieldPath": ".secretKeyRef",
        }
    ]

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.secret_key_ref is not None:
            raise CrossFieldError("secretKeyRef", "set value or secretKeyRef, not both")
        return self


# --- model providers -----------------------------------------------------------------------------


class ProviderKind(StrEnum):
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai-compatible"


class Strategy(StrEnum):
    WEIGHTED = "weighted"
    ROUND_ROBIN = "round_robin"
    FAILOVER = "failover"


class Provider(Model):
    """One LLM endpoint the workers may call."""

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL, description="Unique name, used in metrics labels."
    )
    kind: ProviderKind = Field(default=ProviderKind.ANTHROPIC, description="API dialect of the endpoint.")
    model: str = Field(
        min_length=1, max_length=MODEL_NAME_MAX_LENGTH, description="Model identifier sent to the provider."
    )
    base_url: str | None = Field(
        default=None,
        alias="baseURL",
        pattern=r"^https?://",
        max_length=2048,
        description="Endpoint base URL; defaults to the provider's public API.",
    )
    weight: int = Field(default=1, ge=0, le=100, description="Share of traffic under the weighted strategy.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key. Keys are only ever referenced, never copied.",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="This provider's request limit, shared by all replicas; defaults to limits.requestsPerMinute.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="This provider's token limit, shared by all replicas; defaults to limits.tokensPerMinute.",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "self.kind != 'anthropic' || has(self.baseURL) || has(self.apiKeySecretRef)",
            "message": "an anthropic provider needs apiKeySecretRef (only a custom baseURL may go without a key)",
            "fieldPath": ".apiKeySecretRef",
        }
    ]

    @field_validator("base_url")
    @classmethod
    def _reachable_host(cls, value: str | None) -> str | None:
        if value is not None and (reason := refused_host(value)) is not None:
            raise ValueError(f"{reason}: a provider cannot be a link-local or cloud metadata endpoint")
        return value

    @model_validator(mode="after")
    def _key_for_public_api(self) -> Provider:
        if self.kind == ProviderKind.ANTHROPIC and self.base_url is None and self.api_key_secret_ref is None:
            raise CrossFieldError(
                "apiKeySecretRef",
                "an anthropic provider needs apiKeySecretRef (only a custom baseURL may go without a key)",
            )
        return self


class CircuitBreaker(Model):
    """Per-provider circuit breakers (state shared by the service's replicas through Redis; docs/providers.md)."""

    failure_threshold: int = Field(
        default=5, ge=1, le=100, description="Consecutive failures (5xx, timeouts) that open a provider's circuit."
    )
    cooldown_seconds: int = Field(
        default=30, ge=1, le=3600, description="Seconds an open circuit waits before letting one probe call through."
    )


class Trim(StrEnum):
    DROP = "drop"


class Complexity(StrEnum):
    SIMPLE = "simple"
    MEDIUM = "medium"
    COMPLEX = "complex"


class RouteMetadata(Model):
    """What a rule matches in a task's metadata (every field set must be equal)."""

    complexity: Complexity | None = Field(
        default=None, description="metadata.complexity (or the classifier's label when the task carries none)."
    )
    intent: str | None = Field(default=None, min_length=1, max_length=63, description="metadata.intent.")


class RoutingRule(Model):
    """Tasks whose metadata matches go to one provider first (its failover goes on to the others)."""

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL, description="The route's name: the `route` metric label."
    )
    metadata: RouteMetadata = Field(description="What the task's metadata must hold.")
    provider: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="A name of model.providers.")


class BudgetFallback(Model):
    """Below this much left of the day's budget, every new model call goes to one (cheap) provider."""

    below_remaining_usd: float = Field(
        alias="belowRemainingUSD", ge=0, description="Remaining daily budget (USD) under which the fallback applies."
    )
    provider: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="A name of model.providers.")


ROUTES_RESERVED = ("default", "fallback", "classifier")


class Routing(Model):
    """Which provider each model call goes to first, chosen per call (docs/costs.md)."""

    rules: list[RoutingRule] = Field(default_factory=list, max_length=16, description="First match wins.")
    default: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Provider of tasks no rule matches (unset: the strategy's order, as without routing).",
    )
    classifier: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Provider that labels a task without metadata.complexity (one call, charged to the task).",
    )
    budget_fallback: BudgetFallback | None = Field(
        default=None, description="Send every new call to a cheap provider when the day's budget runs low."
    )


class ModelSpec(Model):
    """Which LLMs serve the agents and how calls are spread across them."""

    providers: list[Provider] = Field(
        min_length=1,
        max_length=8,
        description="Providers in order of preference (order matters for failover).",
    )
    strategy: Strategy = Field(default=Strategy.FAILOVER, description="How calls are spread across providers.")
    system_prompt: str = Field(
        default="You are a helpful agent. Use the tools when they help, then answer concisely.",
        max_length=20000,
        description="System prompt of every task.",
    )
    max_output_tokens: int = Field(default=1024, ge=1, le=64000, description="max_tokens of each LLM call.")
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker, description="Per-provider breakers.")
    degraded_tools: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=50,
        description="Tools still offered while degraded (a circuit not closed); the others are withheld.",
    )
    routing: Routing | None = Field(
        default=None, description="Route calls by task complexity, intent and remaining budget (docs/costs.md)."
    )
    prompt_caching: bool = Field(
        default=False,
        description="Mark the system prompt and tool definitions as a prompt-cache prefix (anthropic providers);"
        " cache writes and reads are priced at their own rates (budget.prices).",
    )
    max_input_tokens: int | None = Field(
        default=None,
        ge=256,
        le=2_000_000,
        description="Ceiling of each call's input tokens: an older history is shortened to fit (see trim);"
        " unset: no ceiling.",
    )
    trim: Trim = Field(
        default=Trim.DROP,
        description="How a history over maxInputTokens is shortened: `drop` (older tool outputs, then older turns).",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "self.providers.all(p, self.providers.exists_one(q, q.name == p.name))",
            "message": "provider names must be unique",
            "fieldPath": ".providers",
        },
        {
            "rule": "self.strategy != 'weighted' || self.providers.exists(p, p.weight > 0)",
            "message": "the weighted strategy needs at least one provider with weight > 0",
            "fieldPath": ".providers",
        },
    ]

    @model_validator(mode="after")
    def _providers_consistent(self) -> ModelSpec:
        names = [p.name for p in self.providers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise CrossFieldError("providers", f"provider names must be unique (repeated: {', '.join(duplicates)})")
        if self.strategy == Strategy.WEIGHTED and not any(p.weight > 0 for p in self.providers):
            raise CrossFieldError("providers", "the weighted strategy needs at least one provider with weight > 0")
        if self.routing is not None:
            self._routing_consistent(self.routing, set(names))
        return self

    @staticmethod
    def _routing_consistent(routing: Routing, names: set[str]) -> None:
        known = ", ".join(sorted(names))
        referenced: list[tuple[str, str | None]] = [
            (f"routing.rules[{i}].provider", r.provider) for i, r in enumerate(routing.rules)
        ]
        referenced += [("routing.default", routing.default), ("routing.classifier", routing.classifier)]
        if routing.budget_fallback is not None:
            referenced.append(("routing.budgetFallback.provider", routing.budget_fallback.provider))
        for field, name in referenced:
            if name is not None and name not in names:
                raise CrossFieldError(field, f"no provider named {name!r} in model.providers ({known})")
        rule_names = [r.name for r in routing.rules]
        for i, name in enumerate(rule_names):
            if name in ROUTES_RESERVED or rule_names.index(name) != i:
                raise CrossFieldError(
                    f"routing.rules[{i}].name",
                    f"rule names must be unique and not one of {', '.join(ROUTES_RESERVED)} (got {name!r})",
                )


# --- tools ---------------------------------------------------------------------------------------

# `<server>__<tool>` must fit the Messages API's tool names (`^[a-zA-Z0-9_-]{1,64}$` at the
# strictest): a short server name leaves the tool most of the room.
TOOL_SERVER_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
TOOL_SERVER_NAME_MAX_LENGTH = 24
PYTHON_MODULE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
HTTP_HEADER_NAME = r"^[A-Za-z0-9][-A-Za-z0-9]*$"
MCP_URL = r"^https?://[^/?#@\s]+(/[^\s]*)?$"
# Headers the transport sets itself: a spec may not forge them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "accept", "connection", "transfer-encoding", "mcp-session-id",
     "mcp-protocol-version", "last-event-id"}
)  # fmt: skip


class BuiltinTool(StrEnum):
    CALCULATOR = "calculator"
    CURRENT_TIME = "current_time"
    WORD_COUNT = "word_count"


class SideEffects(StrEnum):
    NONE = "none"
    EXTERNAL = "external"


ToolName = Annotated[str, Field(min_length=1, max_length=128)]


class ToolPolicy(Model):
    """What the runtime allows a group of tools (one MCP server, one Python module)."""

    allow_tools: list[ToolName] | None = Field(
        default=None,
        max_length=200,
        description="Tools offered to the model, by the name the server or module gives them; unset: all of them."
        " A tool not listed is never offered nor called.",
    )
    timeout_seconds: int = Field(
        default=30, ge=1, le=600, description="A call taking longer fails with a timeout error given to the model."
    )
    max_result_bytes: int = Field(
        default=65_536,
        ge=256,
        le=1_048_576,
        description="A result larger than this (UTF-8) is cut to it, with a note saying so.",
    )
    side_effects: SideEffects = Field(
        default=SideEffects.EXTERNAL,
        description="external: a call may change the world, so it is never repeated (a resumed task reuses its"
        " checkpointed result, a call cut off by a crash or a lost connection is reported, not re-sent);"
        " none: safe to call again.",
    )


class McpHeader(Model):
    """An HTTP header sent to an MCP server, its value read from a Secret (never a literal)."""

    name: str = Field(min_length=1, max_length=128, pattern=HTTP_HEADER_NAME, description="Header name.")
    secret_key_ref: SecretKeyRef = Field(description="Secret key holding the header's value.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() in RESERVED_HEADERS:
            raise ValueError(f"{value!r} is set by the MCP transport itself")
        return value


class McpServer(ToolPolicy):
    """One MCP server: a URL (streamable HTTP, e.g. a Service) or a command in the image (stdio)."""

    name: str = Field(
        min_length=1,
        max_length=TOOL_SERVER_NAME_MAX_LENGTH,
        pattern=TOOL_SERVER_NAME,
        description="The server's name; its tools reach the model as `<name>__<tool>`.",
    )
    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=MCP_URL,
        description="Streamable-HTTP endpoint (http:// or https://, e.g. http://tools.my-ns.svc:8000/mcp)."
        " Link-local and cloud metadata hosts are refused.",
    )
    headers: list[McpHeader] = Field(
        default_factory=list, max_length=16, description="Headers sent with every request (with url only)."
    )
    command: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="A server present in the image, spoken to over stdio: the program and its arguments.",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "has(self.url) != has(self.command)",
            "message": "set url (streamable HTTP) or command (stdio), exactly one",
            "fieldPath": ".url",
        },
        {
            "rule": "!has(self.headers) || size(self.headers) == 0 || has(self.url)",
            "message": "headers apply to a url server only",
            "fieldPath": ".headers",
        },
    ]

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.url is None) == (self.command is None):
            raise CrossFieldError("url", "set url (streamable HTTP) or command (stdio), exactly one")
        if self.headers and self.url is None:
            raise CrossFieldError("headers", "headers apply to a url server only")
        if self.url is not None:
            problem = endpoints.host_problem(self.url)
            if problem is not None:
                raise CrossFieldError("url", f"{self.url!r} {problem}")
        names = [h.name.lower() for h in self.headers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise CrossFieldError("headers", f"header names must be unique (repeated: {', '.join(repeated)})")
        return self


class PythonTools(ToolPolicy):
    """A module of tools installed in a derived image (`FROM` the runtime image, `pip install` your package)."""

    module: str = Field(
        min_length=1,
        max_length=256,
        pattern=PYTHON_MODULE,
        description="Import path of a module exposing `TOOLS` (a list of agent_runtime.tools.Tool) or"
        " `register(registry)`.",
    )


class ToolsSpec(Model):
    """The agent's tools: built-ins, MCP servers and Python tool modules."""

    builtin: list[BuiltinTool] = Field(
        default_factory=lambda: list(BuiltinTool),
        max_length=len(BuiltinTool),
        description="Built-in tools offered (side-effect free); [] for none.",
    )
    mcp_servers: list[McpServer] = Field(default_factory=list, max_length=16, description="MCP servers.")
    python: list[PythonTools] = Field(default_factory=list, max_length=16, description="Python tool modules.")

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "self.mcpServers.all(s, self.mcpServers.exists_one(t, t.name == s.name))",
            "message": "MCP server names must be unique",
            "fieldPath": ".mcpServers",
        },
        {
            "rule": "self.python.all(p, self.python.exists_one(q, q.module == p.module))",
            "message": "Python tool modules must be unique",
            "fieldPath": ".python",
        },
    ]

    @model_validator(mode="after")
    def _unique(self) -> ToolsSpec:
        for field, values in (
            ("mcpServers", [s.name for s in self.mcp_servers]),
            ("python", [p.module for p in self.python]),
        ):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise CrossFieldError(field, f"must be unique (repeated: {', '.join(repeated)})")
        return self

    def summary(self) -> list[str]:
        """One word per tool source, as `kubectl agentservice get` lists them."""
        out = [f"{b}" for b in self.builtin]
        out += [f"{s.name}__* (mcp {'http' if s.url else 'stdio'})" for s in self.mcp_servers]
        out += [f"{p.module} (python)" for p in self.python]
        return out


# --- workloads -----------------------------------------------------------------------------------


class ApiSpec(Model):
    """The task API Deployment."""

    replicas: int = Field(default=2, ge=0, le=100, description="Replicas when autoscaling is disabled.")
    resources: ApiResources = Field(default_factory=ApiResources, description="Container resources.")


class WorkerSpec(Model):
    """The worker Deployment that runs the agent loop."""

    replicas: int = Field(default=2, ge=0, le=1000, description="Replicas when autoscaling is disabled.")
    concurrency: int = Field(default=8, ge=1, le=1000, description="Tasks one worker pod runs at once.")
    resources: WorkerResources = Field(default_factory=WorkerResources, description="Container resources.")
    termination_grace_period_seconds: int = Field(
        default=120,
        ge=1,
        le=3600,
        description="Time a worker gets on shutdown to finish or checkpoint its tasks.",
    )


class AutoscalingEngine(StrEnum):
    HPA = "hpa"
    KEDA = "keda"


class Autoscaling(Model):
    """Queue-depth and CPU autoscaling of the workers (and CPU autoscaling of the API)."""

    enabled: bool = Field(default=True, description="Create autoscalers; replicas then come from them.")
    engine: AutoscalingEngine = Field(
        default=AutoscalingEngine.HPA,
        description="`hpa` (autoscaling/v2 on agent_queue_depth via a metrics adapter) or `keda` (Redis Streams).",
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Lower bound of worker and API replicas.")
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Upper bound of worker and API replicas.")
    target_queue_depth_per_replica: int = Field(
        default=50, ge=1, le=100000, description="Waiting plus pending tasks per worker pod to aim for."
    )
    queue_depth_metric: bool = Field(
        default=True,
        description=(
            "Engine hpa: scale the workers on agent_queue_depth (needs a metrics adapter such as"
            " prometheus-adapter, docs/autoscaling.md) as well as on CPU; false: CPU only (metrics-server alone)."
        ),
    )
    target_cpu_utilization: int = Field(
        default=70,
        alias="targetCPUUtilization",
        ge=1,
        le=100,
        description="CPU utilization percent to aim for.",
    )
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description=(
            "How long load must stay low before replicas are removed (engine keda: also how long the queue must"
            " stay empty before the last worker goes, KEDA's cooldownPeriod)."
        ),
    )
    polling_interval_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description=(
            "Engine keda: how often KEDA reads the queue (its pollingInterval); at zero workers, the longest wait"
            " before the first task wakes one."
        ),
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": "maxReplicas must be >= minReplicas",
            "fieldPath": ".maxReplicas",
        },
        {
            "rule": "self.engine != 'hpa' || self.minReplicas >= 1",
            "message": "the hpa engine cannot scale to zero: set minReplicas >= 1 or use engine keda",
            "fieldPath": ".minReplicas",
        },
    ]

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise CrossFieldError("maxReplicas", f"must be >= minReplicas ({self.min_replicas})")
        if self.engine == AutoscalingEngine.HPA and self.min_replicas < 1:
            raise CrossFieldError(
                "minReplicas", "the hpa engine cannot scale to zero: set minReplicas >= 1 or use engine keda"
            )
        return self


# --- limits, budget, redis -----------------------------------------------------------------------


class Limits(Model):
    """Limits shared by every replica of the service (enforced through Redis)."""

    requests_per_minute: int = Field(default=600, ge=1, le=10_000_000, description="LLM requests per minute.")
    tokens_per_minute: int = Field(default=400_000, ge=1, le=1_000_000_000, description="LLM tokens per minute.")
    max_steps_per_task: int = Field(default=20, ge=1, le=500, description="Agent-loop steps before a task stops.")
    task_timeout_seconds: int = Field(default=600, ge=1, le=86400, description="Wall-clock limit of one task.")
    max_input_chars: int = Field(default=100_000, ge=1, le=10_000_000, description="Longest accepted task input.")
    max_queued_tasks: int = Field(
        default=DEFAULT_MAX_QUEUED_TASKS,
        ge=1,
        le=100_000_000,
        description="Tasks queued or running at which new submissions get 429 and retry-after (naming the figure).",
    )
    max_queued_input_bytes: int = Field(
        default=DEFAULT_MAX_QUEUED_INPUT_BYTES,
        ge=1_048_576,
        le=68_719_476_736,
        description=(
            "Bytes the records of the tasks not yet ended (input, metadata) may hold in Redis; a submission that"
            " would pass it gets 429 and retry-after. One service cannot fill a Redis shared with others."
        ),
    )


class ModelPrice(Model):
    """USD per million tokens for one model."""

    input_per_mtok: float = Field(ge=0, description="USD per million input tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per million output tokens.")
    cache_write_per_mtok: float | None = Field(
        default=None,
        ge=0,
        description="USD per million input tokens written to the prompt cache (default: 1.25x input).",
    )
    cache_read_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per million input tokens read from the prompt cache (default 0.1x input)."
    )


class OnExhausted(StrEnum):
    HOLD = "hold"
    FAIL = "fail"


class Budget(Model):
    """Spending limits, hard caps: each model call reserves its worst case first (docs/budgets.md)."""

    daily_usd: float | None = Field(
        default=None,
        alias="dailyUSD",
        ge=0,
        description=(
            "Cap on the UTC day's spend, shared by all replicas: a call that could cross it is not made"
            " (see onExhausted) and submissions get 429."
        ),
    )
    per_task_usd: float | None = Field(
        default=1.0,
        alias="perTaskUSD",
        ge=0,
        description="Cap on one task's spend: the task stops before a call that could cross it.",
    )
    on_exhausted: OnExhausted = Field(
        default=OnExhausted.HOLD,
        description=(
            "When a task's next call does not fit dailyUSD: `hold` (it waits, queued, until 00:00 UTC or a raised"
            " budget, then resumes from its checkpoint) or `fail` (it ends failed, its transcript kept)."
        ),
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        max_length=PRICES_MAX,
        description=f"Price table override, keyed by model identifier (at most {PRICES_MAX}).",
    )
    report_retention_days: int = Field(
        default=35,
        ge=1,
        le=400,
        description="Days the runtime keeps its cost reports (hourly figures by model, user and intent, and each"
        " day's dearest tasks; GET /v1/costs, kubectl agentservice costs).",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": f"!has(self.prices) || self.prices.all(k, size(k) >= 1 && size(k) <= {MODEL_NAME_MAX_LENGTH})",
            "message": f"a model identifier in prices has 1 to {MODEL_NAME_MAX_LENGTH} characters",
            "fieldPath": ".prices",
        }
    ]

    @field_validator("prices")
    @classmethod
    def _price_keys(cls, prices: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        if any(not 1 <= len(k) <= MODEL_NAME_MAX_LENGTH for k in prices):
            raise ValueError(f"a model identifier in prices has 1 to {MODEL_NAME_MAX_LENGTH} characters")
        return prices


class Cache(Model):
    """The exact-match response cache, shared by all replicas through Redis."""

    enabled: bool = Field(default=False, description="Serve identical model requests from the cache.")
    ttl_seconds: int = Field(default=3600, ge=1, le=604_800, description="Seconds a cached reply is served.")


class RedisMode(StrEnum):
    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


class RedisTLS(Model):
    """TLS to Redis (a `rediss` URL turns it on as well)."""

    enabled: bool = Field(default=True, description="Connect with TLS.")
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the PEM CA bundle that signs the server certificate (default: system CAs).",
    )


class RedisKeda(Model):
    """Engine keda with `urlSecretRef`: where KEDA finds the address and credentials in that same Secret.

    KEDA's redis streams triggers take an address and a password, never a URL, so the Secret that
    holds the pods' URL holds them for KEDA too; a TriggerAuthentication the operator renders reads
    them from it (nothing is copied). What is not secret comes from the spec: `mode`, `masterName`,
    `tls.enabled` and the database below.
    """

    address_key: str = Field(
        default="address",
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=DATA_KEY,
        description="Key of the urlSecretRef Secret holding host:port (Cluster, Sentinel: host:port,host:port,...).",
    )
    password_key: str = Field(
        default="password",
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=DATA_KEY,
        description="Key of the same Secret holding the password (not read when passwordSecretRef is set).",
    )
    username_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=DATA_KEY,
        description="Key of the same Secret holding the ACL user (not read when username is set); unset: none.",
    )
    database_index: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="The database the URL names (standalone, Sentinel): KEDA cannot read it from the Secret.",
    )


class RedisSpec(Model):
    """Where the queue, limits and checkpoints live: a standalone Redis, a Redis Cluster or a Sentinel group."""

    url: str | None = Field(
        default=None,
        pattern=REDIS_URL,
        max_length=2048,
        description=(
            "Redis URL: redis://host:6379/0 (standalone), redis+cluster://h1:6379,h2:6379 (Cluster seed nodes),"
            " redis+sentinel://s1:26379,s2:26379/<master>/0 (sentinels); rediss… for TLS. See docs/redis.md."
        ),
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the Redis URL (when it carries a password)."
    )
    mode: RedisMode | None = Field(
        default=None, description="standalone, cluster or sentinel; unset: the URL's scheme decides."
    )
    master_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=REDIS_MASTER_NAME,
        description="Sentinel: name of the monitored primary (else the URL's path names it).",
    )
    username: str | None = Field(
        default=None, max_length=253, pattern=REDIS_USERNAME, description="ACL user (with passwordSecretRef)."
    )
    password_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the password of `username` (or of the default user)."
    )
    tls: RedisTLS | None = Field(default=None, description="TLS options (CA bundle).")
    wait_replicas: int = Field(
        default=0,
        ge=0,
        le=5,
        description=(
            "Submit, checkpoint and result are acknowledged only once this many replicas hold them (Redis WAIT),"
            " so a failover cannot take them back; 0: do not wait (see docs/redis.md)."
        ),
    )
    wait_timeout_ms: int = Field(
        default=500, ge=1, le=60_000, description="How long such a write waits for replicas before answering 503."
    )
    keda: RedisKeda | None = Field(
        default=None,
        description=(
            "Engine keda with urlSecretRef: the keys of that Secret KEDA reads (it cannot take a URL apart);"
            " unset: `address` and `password`. See docs/redis.md."
        ),
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "has(self.url) != has(self.urlSecretRef)",
            "message": "set exactly one of url or urlSecretRef",
            "fieldPath": ".url",
        },
        {
            "rule": "!has(self.keda) || has(self.urlSecretRef)",
            "message": KEDA_KEYS_MESSAGE,
            "fieldPath": ".keda",
        },
    ]

    @model_validator(mode="after")
    def _exactly_one(self) -> RedisSpec:
        if (self.url is None) == (self.url_secret_ref is None):
            raise CrossFieldError("url", "set exactly one of url or urlSecretRef")
        if self.keda is not None and self.url_secret_ref is None:
            raise CrossFieldError("keda", KEDA_KEYS_MESSAGE)
        return self


# --- alerts and canary ---------------------------------------------------------------------------


class Alerts(Model):
    """Thresholds of the PrometheusRule alerts."""

    enabled: bool = Field(default=True, description="Create the PrometheusRule.")
    error_rate: float = Field(default=0.1, ge=0, le=1, description="Failed task ratio over 5 minutes.")
    p95_latency_seconds: float = Field(default=60, gt=0, description="p95 task latency over 5 minutes.")
    hourly_cost_usd: float = Field(default=50, alias="hourlyCostUSD", ge=0, description="LLM spend over 1 hour.")
    queue_depth: int = Field(default=500, ge=1, description="Waiting plus pending tasks.")
    all_providers_down: bool = Field(default=True, description="Alert when no provider is healthy.")
    for_duration: str = Field(
        default="5m",
        alias="for",
        max_length=16,
        pattern=DURATION,
        description="How long a condition holds before firing.",
    )


class NoDataPolicy(StrEnum):
    HOLD = "hold"
    FAIL = "fail"


class CanaryCheck(Model):
    """A user PromQL check; placeholders {{service}}, {{namespace}} and {{track}} are filled in."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Check name, shown in status.")
    query: str = Field(min_length=1, max_length=4000, description="PromQL returning one scalar-like series.")
    min: float | None = Field(default=None, description="Lowest passing value.")
    max: float | None = Field(default=None, description="Highest passing value.")

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {"rule": "has(self.min) || has(self.max)", "message": "a check needs min, max or both", "fieldPath": ".max"},
        {
            "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
            "message": "min must be <= max",
            "fieldPath": ".min",
        },
    ]

    @model_validator(mode="after")
    def _range(self) -> CanaryCheck:
        if self.min is None and self.max is None:
            raise CrossFieldError("max", "a check needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise CrossFieldError("min", f"must be <= max ({self.max})")
        return self


class ConfigMapKeyRef(Model):
    """A key inside a ConfigMap in the AgentService's namespace."""

    name: str = Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=DNS_SUBDOMAIN,
        description="Name of the ConfigMap, in the AgentService's namespace (a DNS subdomain).",
    )
    key: str = Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=DATA_KEY,
        description="Key holding the suite (YAML).",
    )


INLINE_SUITE_MAX_CHARS = 65_536  # an env var of the Job's pod; larger suites go in a ConfigMap


class EvaluationSuiteSource(Model):
    """One evaluation suite (docs/evaluation.md): inline YAML or a ConfigMap key."""

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL, description="How the rollout's gates name this suite."
    )
    inline: str | None = Field(
        default=None,
        min_length=1,
        max_length=INLINE_SUITE_MAX_CHARS,
        description="The suite as YAML (name, cases, runs, thresholds); checked when the spec is read.",
    )
    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="The suite in a ConfigMap of the namespace (checked when its Job runs)."
    )
    timeout_seconds: int = Field(
        default=900,
        ge=30,
        le=7200,
        description="The evaluation Job's deadline (activeDeadlineSeconds); a Job past it is inconclusive.",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "has(self.inline) != has(self.configMapRef)",
            "message": "a suite is either inline or configMapRef",
            "fieldPath": ".inline",
        }
    ]

    @model_validator(mode="after")
    def _one_source(self) -> EvaluationSuiteSource:
        if (self.inline is None) == (self.config_map_ref is None):
            raise CrossFieldError("inline", "a suite is either inline or configMapRef")
        if self.inline is not None:
            try:
                suite.load_suite(self.inline)
            except suite.SuiteError as exc:
                raise CrossFieldError("inline", str(exc)) from None
        return self


SuiteName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


class Evaluation(Model):
    """Evaluation suites a rollout's gates can name (spec.canary.evaluation)."""

    suites: list[EvaluationSuiteSource] = Field(default_factory=list, max_length=20, description="The suites.")

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "self.suites.all(s, self.suites.exists_one(t, t.name == s.name))",
            "message": "suite names must be unique",
            "fieldPath": ".suites",
        }
    ]

    @field_validator("suites")
    @classmethod
    def _unique(cls, suites: list[EvaluationSuiteSource]) -> list[EvaluationSuiteSource]:
        names = [s.name for s in suites]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"suite names must be unique (repeated: {', '.join(dupes)})")
        return suites


class CanaryEvaluation(Model):
    """Suites that gate a rollout on what the candidate answers; they run against the candidate only."""

    before: list[SuiteName] = Field(
        default_factory=list,
        max_length=10,
        description="Run before any user task reaches the candidate (its workers read a queue of their own);"
        " every one must pass for the first step to start.",
    )
    at_each_step: list[SuiteName] = Field(
        default_factory=list, max_length=10, description="Run at each step; a step advances only once they pass."
    )


class Canary(Model):
    """Progressive delivery of pod-template changes, judged from Prometheus."""

    enabled: bool = Field(default=False, description="Roll template changes out as canaries.")
    steps: list[int] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=20,
        description="Canary weights in percent, strictly increasing, ending at 100.",
    )
    interval: str = Field(
        default="60s",
        pattern=INTERVAL,
        max_length=MAX_INTERVAL_LENGTH,
        description="Time between analyses, 1s to 24h.",
    )
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="Highest canary error rate that passes.")
    max_p95_latency_seconds: float = Field(default=60, gt=0, description="Highest canary p95 latency that passes.")
    max_error_ratio: float | None = Field(
        default=None, gt=0, description="Canary error rate may be at most this multiple of stable's."
    )
    max_cost_ratio: float | None = Field(
        default=None, gt=0, description="Canary cost per task may be at most this multiple of stable's."
    )
    max_fallback_ratio: float | None = Field(
        default=None, gt=0, description="Canary provider fallbacks per task may be at most this multiple of stable's."
    )
    max_latency_ratio: float | None = Field(
        default=None,
        gt=0,
        description="Canary p95 task latency may be at most this multiple of stable's (e.g. 1.5).",
    )
    max_provider_error_ratio: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Canary provider error rate (model calls that failed: 5xx, timeouts, refused connections, "
            "other errors; 429s excluded) may be at most this multiple of stable's."
        ),
    )
    failure_limit: int = Field(
        default=2,
        ge=1,
        le=100,
        description=(
            "Failed analyses in one rollout (in a row or not) that roll it back; an analysis fails when any"
            " of its checks fails."
        ),
    )
    inconclusive_limit: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Inconclusive or errored analyses in a row before the rollout pauses.",
    )
    min_requests: int = Field(
        default=20,
        ge=0,
        description="Fewer canary requests in the window than this is inconclusive, not success.",
    )
    on_no_data: NoDataPolicy = Field(default=NoDataPolicy.HOLD, description="What an analysis with no data counts as.")
    checks: list[CanaryCheck] = Field(default_factory=list, max_length=20, description="Extra PromQL checks.")
    paused: bool = Field(default=False, description="Hold the rollout at its current weight (manual gate).")
    evaluation: CanaryEvaluation = Field(
        default_factory=CanaryEvaluation, description="Evaluation suites (spec.evaluation) gating the rollout."
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "self.steps[size(self.steps) - 1] == 100",
            "message": "the last canary step must be 100",
            "fieldPath": ".steps",
        },
        {
            "rule": "self.steps.all(s, s >= 1 && s <= 100)",
            "message": "canary steps must be between 1 and 100",
            "fieldPath": ".steps",
        },
        {
            "rule": "self.steps.isSorted() && self.steps.all(s, self.steps.exists_one(t, t == s))",
            "message": "canary steps must be strictly increasing",
            "fieldPath": ".steps",
        },
        {
            # the spelling is checked first: `duration()` would overflow on 999999999999h
            "rule": "!has(self.interval) || (self.interval.matches('" + INTERVAL + "') "
            "&& duration(self.interval) >= duration('1s') && duration(self.interval) <= duration('24h'))",
            "message": "the canary interval must be between 1s and 24h",
            "fieldPath": ".interval",
        },
    ]

    @field_validator("interval")
    @classmethod
    def _interval(cls, interval: str) -> str:
        seconds = duration_seconds(interval)
        if not MIN_INTERVAL_SECONDS <= seconds <= MAX_INTERVAL_SECONDS:
            raise ValueError(f"the canary interval must be between 1s and 24h (got {interval})")
        return interval

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if any(s < 1 or s > 100 for s in steps):
            raise ValueError("canary steps must be between 1 and 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"canary steps must be strictly increasing (got {steps})")
        if steps[-1] != 100:
            raise ValueError(f"the last canary step must be 100 (got {steps[-1]})")
        return steps

    @property
    def interval_seconds(self) -> float:
        return duration_seconds(self.interval)


# --- pod-level extras ----------------------------------------------------------------------------


NamespaceName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


class NetworkPolicySpec(Model):
    """Ingress restrictions for the service's pods."""

    enabled: bool = Field(default=False, description="Create a NetworkPolicy.")
    allow_from_namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=100,
        description="Namespaces allowed to call the task API (the service's own is always allowed).",
    )
    monitoring_namespace: str = Field(
        default="monitoring",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Namespace of Prometheus, allowed to scrape.",
    )
    restrict_egress: bool = Field(
        default=False,
        description="Also restrict the pods' egress to what the spec names: DNS, Redis, the model providers"
        " (port 443 and each baseURL's port), and each MCP server's host and port (docs/tools.md)."
        " Link-local addresses (the node's and the cloud's metadata services) are never allowed.",
    )


class PodDisruptionBudgetSpec(Model):
    """Voluntary-disruption budget for API and worker pods."""

    enabled: bool = Field(default=True, description="Create PodDisruptionBudgets.")
    max_unavailable: int = Field(default=1, ge=0, le=1000, description="Pods that may be down at once.")


class LocalObjectReference(Model):
    """An object in the AgentService's namespace, by name."""

    name: str = Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=DNS_SUBDOMAIN,
        description="Name of the object, in the AgentService's namespace (a DNS subdomain).",
    )


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]


def check_label_keys(keys: Iterable[str], *, reserved: bool) -> None:
    """Raise ValueError naming the first key that is not a label key (or, with `reserved`, is the operator's)."""
    for key in keys:
        prefix, _, name = key.rpartition("/")
        if not re.match(LABEL_KEY, key) or len(prefix) > LABEL_PREFIX_MAX_LENGTH or len(name) > 63:
            raise ValueError(f"{key!r} is not a label key ([prefix/]name, name at most 63 characters)")
        if reserved and key.startswith(RESERVED_LABEL_PREFIX):
            raise ValueError(f"{key!r}: keys under {RESERVED_LABEL_PREFIX} are set by the operator")


class Monitoring(Model):
    """Extra metadata of the ServiceMonitor and PrometheusRule, for the Prometheus that selects them.

    kube-prometheus-stack's Prometheus selects only objects labelled `release: <its release>`; the
    operator-wide default comes from the chart (`monitoring.labels`), these keys win over it.
    """

    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MONITORING_LABELS_MAX,
        description=(
            "Labels added to the ServiceMonitor and PrometheusRule, e.g. `release: kube-prometheus-stack`"
            " (keys under app.kubernetes.io/ are the operator's)."
        ),
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=MONITORING_LABELS_MAX,
        description="Annotations added to the ServiceMonitor and PrometheusRule.",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": f"self.labels.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}'))",
            "message": f"labels under {RESERVED_LABEL_PREFIX} are set by the operator",
            "fieldPath": ".labels",
        }
    ]

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        check_label_keys(labels, reserved=True)
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, annotations: dict[str, str]) -> dict[str, str]:
        check_label_keys(annotations, reserved=False)
        return annotations


ImagePullSecrets = Annotated[list[LocalObjectReference], Field(max_length=16)]


ServiceAccountName = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=DNS_SUBDOMAIN)]


class AgentServiceSpec(Model):
    """Desired state of one LLM-agent service."""

    image: str | None = Field(
        default=None,
        max_length=512,
        description="Runtime image; defaults to the bundled runtime of this version.",
    )
    image_pull_policy: str = Field(
        default="IfNotPresent",
        json_schema_extra={"enum": ["Always", "IfNotPresent", "Never"]},
        description="Kubernetes image pull policy.",
    )
    image_pull_secrets: ImagePullSecrets = Field(
        default_factory=list,
        description=(
            "Secrets (type kubernetes.io/dockerconfigjson, in the AgentService's namespace) the kubelet pulls the"
            " image with, on every pod of the service; the operator-wide default (the chart's"
            " `agentPods.imagePullSecrets`) is added after these."
        ),
    )
    model: ModelSpec = Field(description="LLM providers and the calling strategy.")
    api: ApiSpec = Field(default_factory=ApiSpec, description="The task API.")
    worker: WorkerSpec = Field(default_factory=WorkerSpec, description="The workers.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Autoscaling.")
    limits: Limits = Field(default_factory=Limits, description="Rate and size limits.")
    budget: Budget = Field(default_factory=Budget, description="Spending limits.")
    cache: Cache = Field(default_factory=Cache, description="Response cache.")
    redis: RedisSpec = Field(description="The Redis that holds queue, limits and checkpoints.")
    alerts: Alerts = Field(default_factory=Alerts, description="Alert thresholds.")
    monitoring: Monitoring = Field(
        default_factory=Monitoring, description="Labels and annotations of the ServiceMonitor and PrometheusRule."
    )
    canary: Canary = Field(default_factory=Canary, description="Canary rollouts.")
    evaluation: Evaluation = Field(
        default_factory=Evaluation, description="Evaluation suites, for spec.canary.evaluation (docs/evaluation.md)."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=100, description="Extra environment variables.")
    pod_annotations: dict[str, Annotated[str, Field(max_length=ANNOTATION_VALUE_MAX_LENGTH)]] = Field(
        default_factory=dict,
        max_length=POD_ANNOTATIONS_MAX,
        description=(
            f"Annotations added to every pod (at most {POD_ANNOTATIONS_MAX}; keys of at most"
            f" {ANNOTATION_KEY_MAX_LENGTH} characters, values of at most {ANNOTATION_VALUE_MAX_LENGTH})."
        ),
    )
    service_account_name: ServiceAccountName | None = Field(
        default=None, description="ServiceAccount of the pods, in the AgentService's namespace."
    )
    automount_service_account_token: bool = Field(
        default=False,
        description=(
            "Mount the ServiceAccount's API token into the pods. Off unless set: the runtime never calls the"
            " Kubernetes API, and a mounted token is a credential a compromised pod could use."
        ),
    )
    tools: ToolsSpec = Field(default_factory=ToolsSpec, description="The agent's tools (docs/tools.md).")
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec, description="Network policy.")
    pod_disruption_budget: PodDisruptionBudgetSpec = Field(
        default_factory=PodDisruptionBudgetSpec, description="Pod disruption budgets."
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.canary.evaluation) || ((!has(self.canary.evaluation.before)"
            " || self.canary.evaluation.before.all(n, has(self.evaluation) && has(self.evaluation.suites)"
            " && self.evaluation.suites.exists(s, s.name == n))) && (!has(self.canary.evaluation.atEachStep)"
            " || self.canary.evaluation.atEachStep.all(n, has(self.evaluation) && has(self.evaluation.suites)"
            " && self.evaluation.suites.exists(s, s.name == n))))",
            "message": "spec.canary.evaluation names a suite that is not in spec.evaluation.suites",
            "fieldPath": ".canary.evaluation",
        },
        {
            "rule": "!has(self.podAnnotations)"
            f" || self.podAnnotations.all(k, size(k) >= 1 && size(k) <= {ANNOTATION_KEY_MAX_LENGTH})",
            "message": f"a podAnnotations key has 1 to {ANNOTATION_KEY_MAX_LENGTH} characters",
            "fieldPath": ".podAnnotations",
        },
        {
            "rule": "!self.autoscaling.enabled || self.autoscaling.engine != 'keda'"
            f" || has(self.redis.urlSecretRef) || (has(self.redis.url) && self.redis.url.matches(r'{KEDA_REDIS_URL}'))",
            "message": KEDA_REDIS_MESSAGE,
            "fieldPath": ".redis.url",
        },
        {
            "rule": "!self.autoscaling.enabled || self.autoscaling.engine != 'keda' || !has(self.redis.urlSecretRef)"
            " || !has(self.redis.mode) || self.redis.mode != 'sentinel' || has(self.redis.masterName)",
            "message": KEDA_SENTINEL_MESSAGE,
            "fieldPath": ".redis.masterName",
        },
    ]

    @model_validator(mode="after")
    def _budgeted_models_are_priced(self) -> AgentServiceSpec:
        # A daily cap on money needs the price of every call: a model the runtime cannot price would
        # be counted at a guess. perTaskUSD alone does not trigger the rule: it defaults to 1.0 (and
        # the API server stores that default), so it would refuse every spec naming a model outside
        # the built-in table; such a model is counted at the runtime's fallback price, never as free.
        # The built-in table lives in the runtime, so this rule has no CEL twin.
        if self.budget.daily_usd is None:
            return self
        table = PriceTable(
            {
                m: PriceConfig(input_per_mtok=p.input_per_mtok, output_per_mtok=p.output_per_mtok)
                for m, p in self.budget.prices.items()
            }
        )
        unpriced = sorted({p.model for p in self.model.providers if not table.is_known(p.model)})
        if unpriced:
            names = ", ".join(repr(m) for m in unpriced)
            raise CrossFieldError(
                "budget.prices",
                f"no price for model {names}: a budget cannot cap spend it cannot price; add it to budget.prices"
                " (inputPerMtok, outputPerMtok in USD per million tokens)",
            )
        return self

    @model_validator(mode="after")
    def _gates_name_suites(self) -> AgentServiceSpec:
        known = {s.name for s in self.evaluation.suites}
        gates = self.canary.evaluation
        for field, names in (
            ("canary.evaluation.before", gates.before),
            ("canary.evaluation.atEachStep", gates.at_each_step),
        ):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise CrossFieldError(field, f"no suite named {', '.join(map(repr, unknown))} in evaluation.suites")
        return self

    @model_validator(mode="after")
    def _keda_reaches_redis(self) -> AgentServiceSpec:
        keda = self.autoscaling.enabled and self.autoscaling.engine == AutoscalingEngine.KEDA
        if not keda:
            return self
        if self.redis.url_secret_ref is not None:
            # The URL is secret: KEDA reads the address and password from that Secret's other keys
            # (redis.keda), and the mode and master name from the spec.
            if self.redis.mode == RedisMode.SENTINEL and self.redis.master_name is None:
                raise CrossFieldError("redis.masterName", KEDA_SENTINEL_MESSAGE)
            return self
        if self.redis.url is None or not re.match(KEDA_REDIS_URL, self.redis.url):
            raise CrossFieldError("redis.url", KEDA_REDIS_MESSAGE)
        return self

    @field_validator("pod_annotations")
    @classmethod
    def _annotation_keys(cls, annotations: dict[str, str]) -> dict[str, str]:
        if any(not 1 <= len(k) <= ANNOTATION_KEY_MAX_LENGTH for k in annotations):
            raise ValueError(f"a podAnnotations key has 1 to {ANNOTATION_KEY_MAX_LENGTH} characters")
        return annotations

    @field_validator("image_pull_policy")
    @classmethod
    def _pull_policy(cls, value: str) -> str:
        if value not in {"Always", "IfNotPresent", "Never"}:
            raise ValueError(f"must be one of Always, IfNotPresent, Never (got {value!r})")
        return value


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=SERVICE_NAME_MAX_LENGTH, pattern=DNS_1035_LABEL)
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AgentService(BaseModel):
    """A whole AgentService object as read from a manifest or the API."""

    model_config = ConfigDict(extra="allow", frozen=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: AgentServiceSpec

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value != API_VERSION:
            raise ValueError(f"must be {API_VERSION} (got {value!r})")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != KIND:
            raise ValueError(f"must be {KIND} (got {value!r})")
        return value

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> AgentService:
        return cls.model_validate(manifest)


# --- status --------------------------------------------------------------------------------------


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(BaseModel):
    """A standard Kubernetes condition (kstatus-compatible)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    type: str = Field(
        description="Ready, Progressing, Degraded, SpecInvalid, SecretMissing, ChildConflict, Promoted, ..."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="What a person should know or do.")
    last_transition_time: str = Field(default="", description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Generation the condition refers to.")


class CanaryPhase(StrEnum):
    IDLE = "Idle"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class CheckResult(BaseModel):
    """One check of one analysis, with everything needed to understand its verdict."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    name: str = Field(description="Check name.")
    query: str = Field(default="", description="The exact PromQL that was run.")
    value: float | None = Field(default=None, description="Measured value (absent when there was no data).")
    samples: float | None = Field(default=None, description="Requests in the window behind the value.")
    threshold: str = Field(default="", description="The passing range, e.g. `<= 0.05`.")
    verdict: str = Field(description="success, failure, inconclusive or error.")
    message: str = Field(default="", description="Why, in words.")


class Analysis(BaseModel):
    """The outcome of one canary analysis."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    time: str = Field(description="When the analysis ran (RFC 3339, milliseconds).")
    weight: int = Field(description="Canary weight during the analysis.")
    verdict: str = Field(description="success, failure, inconclusive or error.")
    checks: list[CheckResult] = Field(default_factory=list, description="Each check's result.")


class RolloutRecord(BaseModel):
    """How one past rollout ended (`status.canary.rollouts`, for `kubectl agentservice history`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    revision: str = Field(description="Pod-template hash the rollout shipped or rejected.")
    stable_revision: str = Field(default="", description="Revision the stable track ran when it started.")
    outcome: str = Field(description="Promoted, RolledBack, Reverted or Superseded.")
    reason: str = Field(default="", description="The decision that ended it, e.g. AnalysisPassed, FailureLimitReached.")
    message: str = Field(default="", description="Why, in words.")
    finished_time: str = Field(default="", description="When it ended (RFC 3339).")


class FailedCase(BaseModel):
    """A case of an evaluation suite that failed, and why."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    name: str = Field(description="The case's name.")
    reason: str = Field(default="", description="What the answer missed, or how the task failed.")


class EvaluationResult(BaseModel):
    """One evaluation suite run against the candidate at one gate (docs/evaluation.md)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    suite: str = Field(description="The suite's name in spec.evaluation.suites.")
    gate: str = Field(description="`before`, or `step:<weight>` for spec.canary.evaluation.atEachStep.")
    revision: str = Field(description="The candidate revision it ran against.")
    verdict: str = Field(
        description="running, pass, fail or inconclusive (the Job failed, timed out or could not grade)."
    )
    accuracy: float | None = Field(default=None, description="Weighted share of passed runs.")
    passed: int | None = Field(default=None, description="Runs that passed.")
    failed: int | None = Field(default=None, description="Runs that failed.")
    cost_usd_per_task_max: float | None = Field(
        default=None, alias="costUSDPerTaskMax", description="The largest spend of one run, USD."
    )
    latency_p95_seconds: float | None = Field(default=None, description="p95 of the runs' latencies.")
    failed_thresholds: list[str] = Field(default_factory=list, description="The thresholds that did not hold.")
    failed_cases: list[FailedCase] = Field(default_factory=list, description="Failed cases (at most 20), with reasons.")
    message: str = Field(default="", description="Why, in words (the Job's state when there is no report).")
    job: str = Field(default="", description="The Job that ran it.")


class CanaryStatus(BaseModel):
    """Where a rollout stands."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    phase: CanaryPhase = Field(default=CanaryPhase.IDLE, description="Idle, Progressing, Paused, Promoted, RolledBack.")
    weight: int = Field(default=0, description="Desired canary weight in percent.")
    actual_weight: int = Field(default=0, description="Weight the replica counts actually give.")
    step_index: int = Field(default=0, description="Index into spec.canary.steps.")
    stable_revision: str = Field(default="", description="Pod-template hash of the stable track.")
    canary_revision: str = Field(default="", description="Pod-template hash of the canary track.")
    consecutive_failures: int = Field(default=0, description="Failed analyses in a row.")
    total_failures: int = Field(default=0, description="Failed analyses in this rollout.")
    inconclusive_streak: int = Field(default=0, description="Inconclusive or errored analyses in a row.")
    message: str = Field(default="", description="Why the rollout is where it is.")
    last_analysis: Analysis | None = Field(default=None, description="The latest analysis.")
    history: list[Analysis] = Field(default_factory=list, description="The last 10 analyses.")
    next_analysis_time: str = Field(
        default="",
        description="When the next analysis is due (RFC 3339, UTC); an operator that restarts keeps to it.",
    )
    rollouts: list[RolloutRecord] = Field(
        default_factory=list, description="The last 10 finished rollouts, oldest first."
    )
    gate: str = Field(
        default="",
        description="`before` while the candidate serves only its evaluation (spec.canary.evaluation.before).",
    )
    evaluation: list[EvaluationResult] = Field(
        default_factory=list, description="The evaluation suites of this rollout's gates, latest per suite and gate."
    )


class BudgetStatus(BaseModel):
    """The UTC day's spend against `spec.budget.dailyUSD`, read from Prometheus (docs/budgets.md)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    daily_usd: float = Field(alias="dailyUSD", description="The daily budget the spec sets (spec.budget.dailyUSD).")
    day: str = Field(default="", description="The UTC day (YYYY-MM-DD) the figures are for.")
    spent_today_usd: float | None = Field(
        default=None, alias="spentTodayUSD", description="Settled spend of that day, all replicas and tracks."
    )
    reserved_usd: float | None = Field(
        default=None, alias="reservedUSD", description="Worst cases reserved by the model calls in flight."
    )
    remaining_usd: float | None = Field(
        default=None, alias="remainingUSD", description="What the runtime still lets the day spend."
    )
    held_tasks: int | None = Field(default=None, description="Tasks waiting for money (onExhausted: hold).")
    observed_at: str = Field(
        default="",
        description=(
            "When Prometheus returned these figures (RFC 3339); a refresh that finds the same figures does not"
            " rewrite it."
        ),
    )
    message: str = Field(default="", description="Why the figures are missing or old; empty when fresh.")


class ChildRef(BaseModel):
    """One child object, in the AgentService's namespace, by the name it was given."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    api_version: str = Field(description="Its apiVersion, e.g. apps/v1.")
    kind: str = Field(description="Its kind, e.g. Deployment.")
    name: str = Field(description="Its name: `<name>-<suffix>`, or shortened with a hash when that is too long.")


class AgentServiceStatus(BaseModel):
    """Observed state, written by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    phase: Phase = Field(default=Phase.PENDING, description="Pending, Progressing, Ready, Degraded or Failed.")
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    replicas: int = Field(default=0, description="Pods wanted across API and worker Deployments.")
    ready_replicas: int = Field(default=0, description="Ready pods across API and worker Deployments.")
    revision: str = Field(default="", description="Pod-template hash now served by the stable track.")
    canary: CanaryStatus = Field(default_factory=CanaryStatus, description="Canary rollout state.")
    budget: BudgetStatus | None = Field(
        default=None, description="Today's spend and what is left of spec.budget.dailyUSD (set with dailyUSD)."
    )
    children: list[ChildRef] = Field(
        default_factory=list,
        description="The children that exist and this AgentService controls, in apply order (the canary's last).",
    )
