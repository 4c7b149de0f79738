"""The serve config file: the pipeline, the upstream, the tenants and session settings.

Validated by pydantic before anything starts; every failure is a
``ConfigError`` naming the file and the key (the CLI exits 2). API keys may sit
in the file, in an environment variable (``key_env``) or in a file of their
own (``key_file``); they are ``SecretStr`` so they never show in a log line or
an error message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ctxproto._config_model import ConfigModel
from ctxproto.config import (
    PipelineConfig,
    allowed_keys_hint,
    load_yaml_mapping,
    validation_error_to_config_error,
)
from ctxproto.errors import ConfigError
from ctxproto.limits import MAX_KEY_FILE_BYTES, read_text_capped
from ctxproto.runtime.engine_settings import EngineSettings
from ctxproto.stages.folders import FolderOrRedisURL
from ctxproto.stores.pgvector_store import table_name
from ctxproto.stores.store_url import store_location

__all__ = [
    "LimitsConfig",
    "LocalUpstreamConfig",
    "McpConfig",
    "RemoteUpstreamConfig",
    "ServeConfig",
    "SessionConfig",
    "TenantConfig",
    "TenantId",
    "check_tenant_id",
    "load_serve_config",
]


class _Section(ConfigModel):
    model_config = ConfigDict(extra="forbid")


_TENANT_ID = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?")
"""A tenant id: letters, digits, ``_``, ``-`` and ``.``, a dot neither first nor last.

An id becomes a folder name (``mcp.knowledge: stores/{tenant}/kb``): ``..``
would be the folder above every tenant's, ``.`` the folder of them all, and
Windows drops a trailing dot, so ``acme.`` would be ``acme``'s folder. No
``:``, so ``mcp:{tenant}`` (``ctxproto.mcp.service``) is never a tenant's own
cache namespace."""

_TENANT_ID_RULE = "letters, digits, '_', '-' and '.', with no '.' first or last"


def check_tenant_id(value: str) -> str:
    """``value`` unchanged when it matches ``_TENANT_ID``; else a ``ValueError`` saying why
    (the config reader adds the value)."""
    if not _TENANT_ID.fullmatch(value):
        raise ValueError(f"not a tenant id ({_TENANT_ID_RULE})")
    return value


TenantId = Annotated[str, AfterValidator(check_tenant_id)]


class LocalUpstreamConfig(ConfigModel, EngineSettings):
    """The bundled runtime, in this process."""

    type: Literal["local"] = "local"
    max_batch_size: int = Field(default=8, ge=1)


class RemoteUpstreamConfig(_Section):
    """Any OpenAI-compatible server: vLLM, SGLang, llama.cpp, OpenAI itself."""

    type: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://", description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="The model name the upstream serves.")
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    retries: int = Field(default=2, ge=0)
    cache_salt: bool = Field(
        default=False, description="Send a per-tenant cache_salt (vLLM) to isolate prefix caches."
    )

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {self.api_key_env} is not set", key="upstream.api_key_env"
            )
        return value


UpstreamConfig = Annotated[LocalUpstreamConfig | RemoteUpstreamConfig, Field(discriminator="type")]


class TenantConfig(_Section):
    """One API key and the tenant it stands for; exactly one of the key fields."""

    id: TenantId
    key: SecretStr | None = None
    key_env: str | None = None
    key_file: str | None = None
    max_concurrent_requests: int | None = Field(
        default=None, ge=1, description="More at once are answered 429."
    )
    admin: bool = Field(
        default=False,
        description="May drop cached answers by source (POST /v1/ctxproto/invalidate): "
        "sources are the deployment's documents, shared by every tenant.",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> TenantConfig:
        given = [k for k in ("key", "key_env", "key_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of key, key_env, key_file")
        return self


class SessionConfig(_Section):
    mode: Literal["stateless", "stateful"] = Field(
        default="stateless",
        description="stateful: clients send only the new message; the proxy keeps the history.",
    )
    store: FolderOrRedisURL | None = Field(
        default=None,
        description="Session store (history in stateful mode): a folder, or a redis:// URL "
        "that replicas share.",
    )
    idle_ttl_s: float | None = Field(
        default=None,
        gt=0,
        description="A session no turn or write touched for this long is deleted, with "
        "its MCP memory and counts (null: kept for ever).",
    )


class LimitsConfig(_Section):
    max_body_bytes: int = Field(default=16 << 20, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0, description="To receive a whole body.")


McpToolName = Literal[
    "assemble_context",
    "compress_text",
    "recall",
    "search_knowledge",
    "cached_answer",
]
"""The MCP tools whose output can grow with the data: each has a token cap."""


class McpConfig(_Section):
    """The MCP server (``ctxproto mcp``, and ``/mcp`` inside ``ctxproto serve``)."""

    tenant: TenantId = Field(
        default="default",
        description="The tenant of a stdio server; over HTTP the bearer key decides.",
    )
    output_tokens: int = Field(default=4000, gt=0, description="Default cap on a tool's output.")
    tool_output_tokens: dict[McpToolName, Annotated[int, Field(gt=0)]] = Field(
        default_factory=dict, description="Per-tool caps over output_tokens."
    )
    page_size: int = Field(default=50, ge=1, le=1000, description="History entries per page.")
    knowledge: str | None = Field(
        default=None,
        description="Store folder or postgresql:// URL built with `ctxproto index`; "
        "{tenant} is the tenant id.",
    )
    cache: FolderOrRedisURL | None = Field(
        default=None,
        description="Semantic-cache folder or redis:// URL, when the pipeline has no "
        "semantic_cache stage.",
    )
    cache_threshold: float = Field(default=0.85, ge=-1.0, le=1.0)
    max_sessions: int = Field(
        default=1000,
        ge=1,
        description="MCP sessions open at once over HTTP (/mcp), all tenants together; "
        "a client opening one more is answered 503.",
    )
    max_sessions_per_tenant: int = Field(
        default=100,
        ge=1,
        description="MCP sessions one tenant holds open at once over HTTP; "
        "one more is answered 429.",
    )
    session_idle_s: float = Field(
        default=1800.0,
        gt=0,
        allow_inf_nan=False,
        description="An MCP session over HTTP with no request for this long is closed.",
    )

    def cap(self, tool: McpToolName) -> int:
        """The output cap of ``tool`` in tokens."""
        return self.tool_output_tokens.get(tool, self.output_tokens)

    @field_validator("knowledge")
    @classmethod
    def _knowledge_store(cls, value: str | None) -> str | None:
        """A location a knowledge store can be at, whichever tenant fills in ``{tenant}``."""
        if value is not None:
            store_location(value)  # a password cut short is named as written
            _knowledge_store_of(value, "default")
        return value

    def knowledge_location(self, tenant: str) -> str:
        """``knowledge`` with ``{tenant}`` filled in: the tenant's own store, never another's.

        A ``ConfigError`` for a tenant id the config would refuse (``..`` made a
        folder outside ``stores/``), or one that makes no usable table name.
        """
        if self.knowledge is None:
            raise ConfigError("no knowledge store is configured", key="mcp.knowledge")
        try:
            check_tenant_id(tenant)
        except ValueError as exc:
            raise ConfigError(f"{exc}, got {tenant!r}", key="tenant") from None
        try:
            return _knowledge_store_of(self.knowledge, tenant)
        except ConfigError as exc:
            raise ConfigError(exc.detail, key="mcp.knowledge", expected=exc.expected) from None


def _knowledge_store_of(template: str, tenant: str) -> str:
    """``template`` for ``tenant``, checked as a knowledge store's location.

    A ``ConfigError`` without a key: the caller knows whether the template or
    the tenant id is to blame.
    """
    location = template.replace("{tenant}", tenant)
    kind = store_location(location)
    if kind == "redis":
        raise ConfigError(
            "a knowledge store is a folder or a postgresql:// URL, not a Redis server"
        )
    if kind == "postgresql":
        try:
            table_name(location)
        except ConfigError as exc:  # keyed 'store' there: the caller names the key
            raise ConfigError(exc.detail, expected=exc.expected) from None
    return location


class ServeConfig(_Section):
    """The whole serve config file."""

    pipeline: dict[str, Any] | None = Field(
        default=None, description="A pipeline (same schema as pipeline files); null: forward as is."
    )
    upstream: UpstreamConfig = Field(default_factory=LocalUpstreamConfig)
    served_model: str = Field(default="ctxproto", description="The model name clients use.")
    tenants: list[TenantConfig] = Field(default_factory=list)
    sessions: SessionConfig = Field(default_factory=SessionConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    mcp: McpConfig = Field(default_factory=McpConfig)

    @model_validator(mode="after")
    def _tenants_keep_their_own_knowledge(self) -> ServeConfig:
        """Each tenant id, put in ``mcp.knowledge``, names a store of that tenant alone.

        Checked when the file loads, so an id the location cannot take is a
        ``ConfigError`` naming it, not a failing tool call once that tenant asks.
        """
        template = self.mcp.knowledge
        if template is None or "{tenant}" not in template:
            return self
        named = [(f"tenants[{i}].id", t.id) for i, t in enumerate(self.tenants)]
        named.append(("mcp.tenant", self.mcp.tenant))
        seen: dict[str, tuple[str, str]] = {}
        for key, tenant in named:
            try:
                _knowledge_store_of(template, tenant)
            except ConfigError as exc:
                raise ConfigError(
                    f"with this tenant id, mcp.knowledge is not usable: {exc.detail}",
                    key=key,
                    expected=exc.expected,
                ) from None
            other_key, other = seen.setdefault(tenant.casefold(), (key, tenant))
            if other != tenant and store_location(template) == "path":
                raise ConfigError(
                    f"'{tenant}' differs from {other_key} '{other}' only in case: on a "
                    "case-insensitive file system (macOS, Windows) both tenants would "
                    "read one knowledge folder",
                    key=key,
                )
        return self

    def tenant_keys(self, source: str | None = None) -> dict[str, TenantConfig]:
        """API key -> tenant; a missing env var or key file is a ``ConfigError``."""
        keys: dict[str, TenantConfig] = {}
        base = Path(source).parent if source else Path(".")
        for index, tenant in enumerate(self.tenants):
            where = f"tenants[{index}]"
            if tenant.key is not None:
                key = tenant.key.get_secret_value()
            elif tenant.key_env is not None:
                key = os.environ.get(tenant.key_env, "")
                if not key:
                    raise ConfigError(
                        f"environment variable {tenant.key_env} is not set",
                        file=source,
                        key=f"{where}.key_env",
                    )
            else:
                assert tenant.key_file is not None
                key = _key_file_text(base / tenant.key_file, source, f"{where}.key_file")
            if not key or key in keys:
                raise ConfigError("empty or repeated API key", file=source, key=where)
            keys[key] = tenant
        return keys


def _key_file_text(path: Path, source: str | None, key: str) -> str:
    """The key in ``path``, stripped, read as a capped file whose bytes are never quoted;
    a ``ConfigError`` names the config ``source`` and ``key`` that point at it."""
    try:
        text = read_text_capped(path, limit=MAX_KEY_FILE_BYTES, what="key file", secret=True)
    except ConfigError as exc:
        raise ConfigError(exc.detail, file=source, key=key) from None
    return text.strip()


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read and validate a serve config (YAML, safe loader)."""
    data = load_yaml_mapping(path)
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        error = validation_error_to_config_error(exc, file=str(path), data=data)
        if error.detail == "unknown key" and error.key in PipelineConfig.model_fields:
            # A pipeline file given to `ctxproto serve`: "unknown key 'name'" said
            # nothing of where the pipeline goes.
            error = ConfigError(
                "a pipeline config's key; a serve config holds the pipeline under 'pipeline:'",
                file=str(path),
                key=error.key,
                expected=allowed_keys_hint(ServeConfig),
            )
        elif error.detail == "unknown key" and error.key:
            # The error's own location, not its dotted key: a key may hold a dot itself.
            unknown = next(e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden")
            section = _section_at(unknown, data)
            if section is not None:  # as a pipeline config lists them (Pipeline.from_dict)
                hint = allowed_keys_hint(section, str(unknown[-1]))
                error = ConfigError("unknown key", file=str(path), key=error.key, expected=hint)
        raise error from exc


def _section_at(loc: tuple[int | str, ...], data: dict[str, Any]) -> type[BaseModel] | None:
    """The section whose keys may stand where the unknown key at ``loc`` (pydantic's
    location of the error) stands.

    Split from the dotted key, a top-level key ``sessions.mod`` was taken for a key
    of ``sessions``. Only the keys of ``data`` count: a tenant's index and the
    upstream type pydantic tried name no section. ``None`` below a section (a map
    of names such as ``mcp.tool_output_tokens``), where the keys are not a schema's
    fields. ``upstream`` is the section its ``type`` names.
    """
    names: list[str] = []
    node: Any = data
    for part in loc[:-1]:
        if isinstance(node, dict) and part in node:
            names.append(str(part))
        elif not (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            continue
        node = node[part]
    section = tuple(names)
    if section == ("upstream",):
        upstream = data.get("upstream")
        kind = upstream.get("type") if isinstance(upstream, dict) else None
        return RemoteUpstreamConfig if kind == "openai" else LocalUpstreamConfig
    sections: dict[tuple[str, ...], type[BaseModel]] = {
        (): ServeConfig,
        ("tenants",): TenantConfig,
        ("sessions",): SessionConfig,
        ("limits",): LimitsConfig,
        ("mcp",): McpConfig,
    }
    return sections.get(section)
