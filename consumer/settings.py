"""Typed configuration: a YAML or TOML file, overridden by ``CONSUMER_…`` environment variables.

``CONSUMER_KAFKA__GROUP_ID=payments`` sets ``kafka.group_id``; the environment wins over the
file, and nested sections merge key by key. Every problem is reported at once, one line each,
before anything connects.

Read once at start (:func:`load_settings` raises :class:`~consumer.errors.ConfigError`); the
models are frozen and passed down, never read from the environment again. Secrets are
``SecretStr``: print a configuration only through :meth:`Settings.masked`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from consumer.errors import ConfigError
from consumer.secret_files import both_given, read_secret_file

HANDLER_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: Formats decoded through the schema registry (Confluent wire format).
REGISTRY_FORMATS = ("avro", "protobuf", "json_schema")
#: Every format a route may name besides a decoder's import path.
FORMATS = ("bytes", "text", "json", *REGISTRY_FORMATS)
#: librdkafka properties whose values are never printed.
SECRET_KEY_PARTS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """Where to consume from and as whom."""

    bootstrap_servers: str = Field(description="Comma-separated host:port list of brokers.")
    group_id: str = Field(min_length=1, description="Consumer group; also keys the checkpoints.")
    client_id: str = "checkpoint-consumer"
    auto_offset_reset: Literal["earliest", "latest", "error"] = "earliest"
    session_timeout_ms: int = Field(default=45_000, gt=0)
    #: Static group membership (librdkafka's ``group.instance.id``), unique per process, e.g.
    #: the pod's name: a member back within ``session_timeout_ms`` keeps its partitions, with
    #: no rebalance; a member gone for good holds them that long. None: dynamic membership.
    group_instance_id: str | None = Field(default=None, min_length=1)
    max_poll_interval_ms: int = Field(default=300_000, gt=0)
    #: Messages taken per poll; also an upper bound on work between two loop turns.
    poll_batch_size: int = Field(default=500, ge=1, le=100_000)
    poll_timeout_seconds: float = Field(default=0.5, gt=0, le=60)
    #: Routes with ``concurrency`` above 1: messages polled and not started, or finished above
    #: their partition's watermark, at most, all routes together (it bounds what a crash
    #: repeats). When full, the loop takes nothing new (it keeps polling, the partitions of a
    #: full route paused) until handlers finish. None: :func:`default_buffered_messages`.
    max_buffered_messages: int | None = Field(default=None, ge=1, le=1_000_000)
    #: Any other librdkafka property, with Kafka's dotted names (security, tuning).
    librdkafka: dict[str, SecretStr] = Field(default_factory=dict)
    #: A file holding the SASL password (librdkafka ``sasl.password``), e.g. a mounted
    #: Kubernetes Secret; one trailing newline is ignored. Not with ``librdkafka.sasl.password``.
    sasl_password_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _sasl_password_from_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("sasl_password_file") is None:
            return data
        librdkafka = data.get("librdkafka") or {}
        if not isinstance(librdkafka, dict):
            return data  # the field's own validation reports it
        if "sasl.password" in librdkafka:
            raise both_given("kafka.librdkafka.sasl.password", "kafka.sasl_password_file")
        password = read_secret_file(Path(data["sasl_password_file"]),
                                    setting="kafka.sasl_password_file")
        return {**data, "librdkafka": {**librdkafka, "sasl.password": SecretStr(password)}}

    @field_validator("librdkafka", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): v if isinstance(v, SecretStr) else _librdkafka_text(v)
                    for k, v in value.items()}
        return value

    @field_validator("librdkafka")
    @classmethod
    def _not_ours(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        owned = {"enable.auto.commit", "group.id", "bootstrap.servers", "on_commit",
                 "enable.auto.offset.store"}
        clash = sorted(owned & set(value))
        if clash:
            raise ValueError(
                f"{', '.join(clash)} cannot be set here: checkpoint-consumer manages "
                "commits itself and takes group and brokers from kafka.group_id / "
                "kafka.bootstrap_servers"
            )
        return value

    def masked_librdkafka(self) -> dict[str, str]:
        """The pass-through properties with secrets replaced by ``***``, for logs."""
        return {k: "***" if _is_secret(k) else v.get_secret_value()
                for k, v in self.librdkafka.items()}


class RetrySettings(_Section):
    """How a failing handler is retried before its message is dead-lettered."""

    #: Handler calls in all, the first included (1: no retry).
    attempts: int = Field(default=3, ge=1, le=1_000)
    initial_backoff_seconds: float = Field(default=0.5, gt=0)
    max_backoff_seconds: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    #: Each delay is spread by up to this fraction, so retries of many messages do not align.
    jitter: float = Field(default=0.2, ge=0, le=1)
    #: Exception types (``ValueError``, ``package.module.Class``) dead-lettered at once.
    never_retry: list[str] = Field(default_factory=list)
    #: Exception types that stop the consumer (exit 1) instead of retrying or dead-lettering.
    stop_on: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("max_backoff_seconds is below initial_backoff_seconds")
        return self


class RouteSettings(_Section):
    """One topic and the handler that processes its messages."""

    handler: str = Field(description="Import path of the handler, `package.module:function`.")
    #: What makes two deliveries the same event: header:NAME (falling back to coordinates when
    #: the header is absent or empty), coordinates (topic id, partition, offset) or
    #: function:module:fn.
    dedup_key: str = "header:idempotency-key"
    #: topic: a key identifies an event within this route's topic (two topics may reuse an
    #: id for different events); group: one event id spans every topic of the group.
    dedup_scope: Literal["topic", "group"] = "topic"
    #: The value's format, decoded once before the handler runs (``message.value_decoded``):
    #: bytes (not decoded), text, json, avro, protobuf, json_schema (the last three in the
    #: Confluent wire format, through ``schema_registry``) or ``module:function`` (a decoder of
    #: your own, called as ``fn(data, message)``). A value that does not decode is a poison
    #: message and goes straight to the dead-letter topic (reason "deserialization").
    format: str = "bytes"
    #: The key's format, the same choices (``message.key_decoded``); None: keys not decoded.
    key_format: str | None = None
    #: format protobuf: the generated message class of the values, ``module:Class``.
    protobuf_message: str | None = None
    #: key_format protobuf: the generated message class of the keys, ``module:Class``.
    key_protobuf_message: str | None = None
    retry: RetrySettings = RetrySettings()
    #: After the last attempt: dead_letter (produce to dead_letter_topic, then move on) or
    #: stop (exit 1, committing nothing past the message).
    on_failure: Literal["dead_letter", "stop"] = "dead_letter"
    #: Default: ``<topic>.dlq``.
    dead_letter_topic: str | None = None
    #: Messages of this route in flight at once, at most (1: one at a time, on the loop's
    #: thread). Plain ``def`` handlers run on a pool of this many threads; ``async def`` ones
    #: on one event loop, this many at a time.
    concurrency: int = Field(default=1, ge=1, le=10_000)
    #: With concurrency: key (messages with the same Kafka key run one at a time, in offset
    #: order; other keys run in parallel), partition (one at a time per partition) or none.
    ordering: Literal["key", "partition", "none"] = "key"

    @field_validator("dedup_key")
    @classmethod
    def _dedup_spec(cls, value: str) -> str:
        kind, _, rest = value.partition(":")
        if value == "coordinates" or (kind == "header" and rest):
            return value
        if kind == "function" and HANDLER_PATH.match(rest):
            return value
        raise ValueError(
            f"{value!r} is not one of header:NAME, coordinates, function:module:function"
        )

    @field_validator("format", "key_format")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        if value is None or value in FORMATS or HANDLER_PATH.match(value):
            return value
        raise ValueError(f"{value!r} is not one of {', '.join(FORMATS)} nor a decoder's "
                         "import path 'package.module:function'")

    @field_validator("protobuf_message", "key_protobuf_message")
    @classmethod
    def _class_path(cls, value: str | None) -> str | None:
        if value is None or HANDLER_PATH.match(value):
            return value
        raise ValueError(f"{value!r} is not an import path of the form 'package.module:Class'")

    @model_validator(mode="after")
    def _protobuf_classes(self) -> RouteSettings:
        for fmt, setting, field in ((self.format, self.protobuf_message, "protobuf_message"),
                                    (self.key_format, self.key_protobuf_message,
                                     "key_protobuf_message")):
            if (fmt == "protobuf") != (setting is not None):
                which = "format" if field == "protobuf_message" else "key_format"
                raise ValueError(
                    f"{field} goes with {which}: protobuf, and only with it: set both (the "
                    "generated message class, module:Class) or neither")
        return self

    @property
    def registry_formats(self) -> list[str]:
        """The formats of this route read through the schema registry."""
        return [f for f in (self.format, self.key_format) if f in REGISTRY_FORMATS]

    @field_validator("handler")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if not HANDLER_PATH.match(value):
            raise ValueError(
                f"{value!r} is not an import path of the form 'package.module:function'"
            )
        return value


class SchemaRegistrySettings(_Section):
    """The Confluent-compatible schema registry that avro, protobuf and json_schema routes
    read their writers' schemas from."""

    #: The registry's Confluent API, e.g. https://registry:8081 (Apicurio:
    #: http://host:8080/apis/ccompat/v7).
    url: str = Field(min_length=1)
    #: HTTP basic auth (Confluent Cloud: the API key and secret). None: no auth.
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    #: A file holding the basic auth password (a mounted Kubernetes Secret, say); one trailing
    #: newline is ignored. Not with ``basic_auth_password``.
    basic_auth_password_file: Path | None = None
    #: Bearer auth with a fixed token (an access token or API token the platform issues),
    #: instead of basic auth. None: no token.
    bearer_token: SecretStr | None = None
    #: A file holding the token (a mounted Kubernetes Secret, say); one trailing newline is
    #: ignored. Not with ``bearer_token``.
    bearer_token_file: Path | None = None
    #: OAuth 2 client credentials instead: the client asks this token endpoint for an access
    #: token (and again before it expires) and sends it as a bearer token.
    oauth_token_endpoint: str | None = Field(default=None, min_length=1)
    oauth_client_id: str | None = Field(default=None, min_length=1)
    oauth_client_secret: SecretStr | None = None
    #: A file holding the client secret; not with ``oauth_client_secret``.
    oauth_client_secret_file: Path | None = None
    oauth_scope: str | None = Field(default=None, min_length=1)
    #: With a bearer token or OAuth: the registry's logical cluster, sent as the
    #: ``target-sr-cluster`` header (Confluent Cloud: its ``lsrc-`` id; other registries
    #: ignore it), and the identity pool, if the platform asks for one.
    logical_cluster: str = ""
    identity_pool_id: str | None = Field(default=None, min_length=1)
    #: Each request to the registry gives up after this long (the client's own default waits
    #: forever); the message is then retried like a registry that does not answer.
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: How the writer's subject is named: topic (``<topic>-value``), record (the record's full
    #: name) or topic_record; match what the producers use.
    subject_name_strategy: Literal["topic", "record", "topic_record"] = "topic"
    #: A CA bundle to verify the registry's TLS certificate with (None: the system's).
    ssl_ca_location: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for secret in ("basic_auth_password", "bearer_token", "oauth_client_secret"):
            if data.get(f"{secret}_file") is None:
                continue
            if data.get(secret) is not None:
                raise both_given(f"schema_registry.{secret}", f"schema_registry.{secret}_file")
            value = read_secret_file(Path(data[f"{secret}_file"]),
                                     setting=f"schema_registry.{secret}_file")
            data = {**data, secret: SecretStr(value)}
        return data

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> SchemaRegistrySettings:
        if (self.basic_auth_user is None) != (self.basic_auth_password is None):
            raise ValueError("basic_auth_user and basic_auth_password (or "
                             "basic_auth_password_file) go together: set both or neither")
        if self.basic_auth_user is not None and ":" in self.basic_auth_user:
            raise ValueError("basic_auth_user must not contain ':' (HTTP basic auth splits "
                             "user and password there)")
        oauth = {"oauth_token_endpoint": self.oauth_token_endpoint,
                 "oauth_client_id": self.oauth_client_id,
                 "oauth_client_secret": self.oauth_client_secret,
                 "oauth_scope": self.oauth_scope}
        given = [name for name, value in oauth.items() if value is not None]
        if given and len(given) < len(oauth):
            missing = [name for name in oauth if name not in given]
            raise ValueError(f"OAuth client credentials need {', '.join(oauth)} (or "
                             f"oauth_client_secret_file); missing: {', '.join(missing)}")
        ways = [way for way, used in (("basic auth", self.basic_auth_user is not None),
                                      ("bearer_token", self.bearer_token is not None),
                                      ("OAuth client credentials", bool(given))) if used]
        if len(ways) > 1:
            raise ValueError(f"{' and '.join(ways)} are both set: the registry takes one "
                             "way to authenticate; keep one")
        return self


class CheckpointSettings(_Section):
    """When offsets are committed. Either trigger may be off (null), not both."""

    every_messages: int | None = Field(default=1_000, ge=1)
    every_seconds: float | None = Field(default=5.0, gt=0)
    #: Wait for the broker on every commit: a crash then re-reads at most one interval, at the
    #: cost of a broker round trip per checkpoint. Off: commits are asynchronous, and a crash
    #: re-reads at most ``max_unconfirmed_messages``.
    synchronous_commits: bool = False
    #: Asynchronous commits: done messages the broker has not confirmed yet, at most; at the
    #: bound the consumer waits for the broker (one synchronous commit) before taking more.
    #: Default (null): 50 times every_messages. The broker answers a commit 5-10 ms after it
    #: arrives, one at a time: a bound near two answers' worth of work stalls a fast consumer.
    max_unconfirmed_messages: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_trigger(self) -> CheckpointSettings:
        if self.every_messages is None and self.every_seconds is None:
            raise ValueError(
                "every_messages and every_seconds are both off: nothing would ever be "
                "committed; set at least one"
            )
        if (self.max_unconfirmed_messages is not None and self.every_messages is not None
                and self.max_unconfirmed_messages < self.every_messages):
            raise ValueError(
                f"max_unconfirmed_messages ({self.max_unconfirmed_messages}) is below "
                f"every_messages ({self.every_messages}): the consumer would wait for the "
                "broker before every checkpoint; raise it or use synchronous_commits: true"
            )
        return self


class StoreSettings(_Section):
    """Where checkpoints and processed keys live, beside the handlers' own tables."""

    #: sqlite:///relative/path.db, sqlite:////absolute/path.db, postgresql://user:pw@host/db,
    #: mysql://user:pw@host:3306/db (MariaDB, with the ``mariadb`` extra), or none (no
    #: store: at-least-once, re-reads bounded by the checkpoint interval).
    url: SecretStr = SecretStr("sqlite:///state/checkpoint-consumer.db")
    #: A file holding the URL (a mounted Kubernetes Secret, say); one trailing newline is
    #: ignored. Not with ``url``.
    url_file: Path | None = None
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: SQLite: how long a process waits for another one's write transaction (a batch, an
    #: assignment) before the store counts as unavailable. Keep it above the longest batch.
    sqlite_busy_timeout_seconds: float = Field(default=60.0, gt=0)
    #: SQLite: the connection's page cache, at most (SQLite's own default is 2 MB). Index
    #: pages of a processed-keys table past a few hundred thousand header or function keys,
    #: and of the handlers' own tables, stay in memory instead of being read again.
    sqlite_cache_mb: int = Field(default=64, ge=1)
    #: SQLite: processed keys a generation holds before it is sealed and a new one started
    #: (and at least a sixteenth of the group's keys, so a group keeps about sixteen).
    #: Claims write only the current generation, so its index pages stay cached however many
    #: keys the sealed ones hold; each process keeps a Bloom filter of the sealed ones (about
    #: 3 bytes a key) and reads them into it at start (about 1.5 s a million keys).
    sqlite_generation_keys: int = Field(default=1_000_000, ge=1)
    #: PostgreSQL: the same for the PostgreSQL store, which also seals a generation only at
    #: a moment when no claim is open (consumer.store.postgres_generations); a member counts
    #: its own claims, so with several members a generation holds up to that many each.
    postgres_generation_keys: int = Field(default=1_000_000, ge=1)
    #: PostgreSQL: how long one statement waits for a row lock (a key or checkpoint row held
    #: by another session) before the batch rolls back and is retried with backoff.
    postgres_lock_timeout_seconds: float = Field(default=10.0, gt=0)
    #: PostgreSQL: the server ends a session idle inside a transaction this long (a process
    #: frozen mid-batch), releasing its locks. Keep it above a handler's longest pause
    #: between two statements.
    postgres_idle_in_transaction_timeout_seconds: float = Field(default=60.0, gt=0)
    #: PostgreSQL TCP keepalives: a peer gone silent (host down, network cut) is noticed
    #: after about idle + interval * count seconds.
    postgres_keepalives_idle_seconds: int = Field(default=30, ge=1)
    postgres_keepalives_interval_seconds: int = Field(default=10, ge=1)
    postgres_keepalives_count: int = Field(default=3, ge=1)
    #: MariaDB: InnoDB's innodb_lock_wait_timeout for the store's sessions (whole seconds):
    #: how long a statement waits for a row lock before the batch rolls back and is retried.
    mariadb_lock_wait_timeout_seconds: int = Field(default=10, ge=1)
    #: MariaDB: idle_transaction_timeout: the server ends a session idle this long inside a
    #: transaction (a process frozen mid-batch), releasing its locks.
    mariadb_idle_transaction_timeout_seconds: int = Field(default=60, ge=1)
    #: MariaDB: the same as ``postgres_generation_keys`` for the MariaDB store
    #: (consumer.store.mariadb_generations).
    mariadb_generation_keys: int = Field(default=1_000_000, ge=1)
    #: Kafka's committed offset moved by another tool (no checkpoint-consumer marker):
    #: fail (default), follow Kafka's offset, or ignore it and keep the store's.
    on_external_reset: Literal["fail", "follow", "ignore"] = "fail"
    #: Processed keys older than this are purged (null: keep forever).
    processed_keys_retention_seconds: float | None = Field(default=7 * 86_400, gt=0)
    purge_every_seconds: float = Field(default=60.0, gt=0)
    purge_batch_size: int = Field(default=1_000, ge=1)
    max_backoff_seconds: float = Field(default=30.0, gt=0)
    #: Routes with ``concurrency`` above 1 (PostgreSQL, MariaDB): each worker takes up to this many
    #: ready messages (of different lanes) and applies them in one transaction, one claim
    #: statement and one commit for all; 1: a transaction per message.
    micro_batch_messages: int = Field(default=8, ge=1, le=1_000)
    #: Routes with an ``async def`` handler (PostgreSQL, MariaDB): the connections their
    #: transactions share. A message holds one from its key claim to its commit, so at most
    #: this many of their messages are inside a transaction at once, whatever the routes'
    #: concurrency.
    async_connections: int = Field(default=32, ge=1, le=1_000)
    #: The former name of ``async_connections``, from before MariaDB ran ``async def``
    #: handlers: still read (the start log warns), not beside ``async_connections``.
    postgres_async_connections: int | None = Field(default=None, ge=1, le=1_000)

    @model_validator(mode="before")
    @classmethod
    def _former_name_of_async_connections(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("postgres_async_connections") is None:
            return data
        if "async_connections" in data:
            raise ValueError("store.async_connections and store.postgres_async_connections "
                             "(its former name) are both set; keep store.async_connections")
        return {**data, "async_connections": data["postgres_async_connections"]}

    def former_names(self) -> list[str]:
        """A line for each setting given by a former name, for the start log."""
        if self.postgres_async_connections is None:
            return []
        return ["store.postgres_async_connections is now store.async_connections (it "
                "serves MariaDB too); the former name still works"]

    @model_validator(mode="before")
    @classmethod
    def _url_from_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("url_file") is None:
            return data
        if "url" in data:
            raise both_given("store.url", "store.url_file")
        url = read_secret_file(Path(data["url_file"]), setting="store.url_file")
        return {**data, "url": SecretStr(url)}

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url != "none" and not url.startswith(("sqlite://", "postgresql://", "postgres://",
                                                  "mysql://")):
            # Name the scheme only: a value without one may be a password put in the wrong place.
            scheme = f"{url.split('://', 1)[0]!r}" if "://" in url else "a value without a scheme"
            raise ValueError(
                f"{scheme} is not a store; use sqlite:///path/file.db, "
                "postgresql://user@host/db, mysql://user@host/db (MariaDB), or none"
            )
        return value

    @property
    def enabled(self) -> bool:
        return self.url.get_secret_value() != "none"

    def masked_url(self) -> str:
        """The URL with any password (``user:PASSWORD@`` or ``?password=``) replaced by ***."""
        url = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", self.url.get_secret_value())
        return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


class ShutdownSettings(_Section):
    grace_seconds: float = Field(default=30.0, gt=0)


class MetricsSettings(_Section):
    """Prometheus ``/metrics``, ``/livez`` and ``/readyz`` on one HTTP address."""

    enabled: bool = True
    #: 127.0.0.1 serves this host only; in a container use 0.0.0.0 (the Dockerfile does).
    host: str = "127.0.0.1"
    #: 0 picks a free port; the log says which.
    port: int = Field(default=9400, ge=0, le=65_535)


class LoggingSettings(_Section):
    #: human: one readable line per record; json: one JSON object per line, for collectors.
    format: Literal["human", "json"] = "human"


class TracingSettings(_Section):
    """OpenTelemetry spans, one per handler call (off unless enabled)."""

    enabled: bool = False
    #: The ``service.name`` resource attribute of the spans this process exports.
    service_name: str = "checkpoint-consumer"
    #: OTLP/HTTP traces URL (e.g. http://collector:4318/v1/traces): spans are exported there
    #: with the SDK (``pip install checkpoint-consumer[otel]``). None: spans go to the tracer
    #: provider the process already has (one set up by the handler modules, or none).
    otlp_endpoint: str | None = None


class Settings(BaseSettings):
    """The whole configuration of one consumer process."""

    model_config = SettingsConfigDict(
        env_prefix="CONSUMER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        # CONSUMER_CHECKPOINT__EVERY_MESSAGES=null switches a trigger off, as null does in YAML.
        env_parse_none_str="null",
    )

    kafka: KafkaSettings
    routes: dict[str, RouteSettings] = Field(min_length=1)
    checkpoint: CheckpointSettings = CheckpointSettings()
    store: StoreSettings = StoreSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    #: Folders searched first when importing handlers; relative ones from the working directory.
    handler_path: list[str] = Field(default_factory=lambda: ["."])
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    #: Needed by routes with format or key_format avro, protobuf or json_schema.
    schema_registry: SchemaRegistrySettings | None = None

    @model_validator(mode="after")
    def _registry_for_formats(self) -> Settings:
        if self.schema_registry is not None:
            return self
        needing = [f"routes.{topic} ({', '.join(route.registry_formats)})"
                   for topic, route in self.routes.items() if route.registry_formats]
        if needing:
            raise ValueError(
                f"{', '.join(needing)} read their schemas from a schema registry, and none is "
                "configured: set schema_registry.url")
        return self

    @model_validator(mode="after")
    def _dead_letters_elsewhere(self) -> Settings:
        for topic, route in self.routes.items():
            if route.dead_letter_topic == topic:
                raise ValueError(
                    f"routes.{topic}.dead_letter_topic is the route's own topic: dead letters "
                    "would be consumed again and fail forever; name another topic"
                )
        return self

    @model_validator(mode="after")
    def _concurrency_without_store(self) -> Settings:
        """Concurrency with a store needs concurrent writers: PostgreSQL, not SQLite."""
        if not self.store.url.get_secret_value().startswith("sqlite:"):
            return self
        concurrent = [f"routes.{topic}.concurrency ({route.concurrency})"
                      for topic, route in self.routes.items() if route.concurrency > 1]
        if concurrent:
            raise ValueError(
                f"{', '.join(concurrent)} above 1 with a SQLite store: SQLite takes one writer "
                "at a time, so messages applied concurrently, each in a transaction of its "
                "own, would only queue on the file lock. Use a PostgreSQL store "
                "(store.url: postgresql://...), or set concurrency: 1 (one transaction per "
                "checkpoint batch, the fast path on SQLite)"
            )
        return self

    @field_validator("routes", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """``topic: module:function`` is short for ``topic: {handler: module:function}``."""
        if isinstance(value, dict):
            return {t: {"handler": r} if isinstance(r, str) else r for t, r in value.items()}
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init values; the environment overrides them.
        return env_settings, init_settings

    def buffered_messages(self) -> int:
        """``kafka.max_buffered_messages``, or its default for these routes."""
        configured = self.kafka.max_buffered_messages
        if configured is not None:
            return configured
        return default_buffered_messages(sum(route.concurrency for route in self.routes.values()
                                             if route.concurrency > 1))

    def masked(self) -> dict[str, Any]:
        """The effective configuration with every secret replaced by ``***``, for logs."""
        data = self.model_dump(mode="json")
        data["kafka"]["librdkafka"] = self.kafka.masked_librdkafka()
        data["store"]["url"] = self.store.masked_url()
        return data


#: ``kafka.max_buffered_messages`` when not set: this many per message in flight at once, and
#: at least :data:`MIN_BUFFERED_MESSAGES`.
BUFFERED_PER_IN_FLIGHT = 40
MIN_BUFFERED_MESSAGES = 10_000


def default_buffered_messages(in_flight: int) -> int:
    """The buffer for routes running ``in_flight`` messages at once, all together.

    With ``ordering: key``, a message of a key runs only after the key's earlier ones, and the
    client hands over a partition's messages in runs of thousands (one fetched batch after
    another): to keep N keys busy, the buffer must span batches of every partition, and the
    work finished behind each partition's slowest key (the gap) shares it. Measured on 1,000
    keys over 6 partitions with 10 ms handlers and 1,000 in flight: 10,000 messages held about
    400 keys busy (24,500 msg/s); 40,000 held nearly all of them (39,800 msg/s)."""
    return max(MIN_BUFFERED_MESSAGES, BUFFERED_PER_IN_FLIGHT * in_flight)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the config file (``path``, else ``$CONSUMER_CONFIG``, else none) and the environment.

    Raises :class:`ConfigError` listing every problem, one per line, naming the setting.
    """
    source = path or os.environ.get("CONSUMER_CONFIG")
    data = read_config_file(Path(source)) if source else {}
    try:
        return Settings(**data)
    except ValidationError as error:
        raise ConfigError([_describe(e) for e in error.errors()]) from None
    except SettingsError as error:  # e.g. CONSUMER_KAFKA='{not json'
        cause = f" ({error.__cause__})" if error.__cause__ else ""
        raise ConfigError([f"environment: {error}{cause}"]) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file into a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"config file {path}: cannot read it ({error.strerror})"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"config file {path}: not UTF-8 text ({error})"]) from None
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError([f"config file {path}: use a .yaml, .yml or .toml file"])
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ConfigError([f"config file {path}: not valid {path.suffix[1:]}: {error}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"config file {path}: the top level must be a mapping"])
    return data


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "missing":
        return f"{where}: required, but not set"
    if kind == "extra_forbidden":
        return f"{where}: unknown setting"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind.endswith("_parsing") or kind.endswith("_type"):
        return f"{where}: {message} (got {_short(error.get('input'))})"
    return f"{where}: {message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_secret(key: str) -> bool:
    return any(part in key for part in SECRET_KEY_PARTS)


def _librdkafka_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
