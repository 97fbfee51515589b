"""What every Kafka client of ours shares: client errors translated into
:class:`~consumer.errors.KafkaError` (fatal ones as ``KafkaFatalError``), and the connection
and security settings each client takes from ``kafka.librdkafka``. Pure functions: no client is
created here, nothing blocks, nothing raises."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumer.errors import KafkaAuthenticationFailed, KafkaError, KafkaFatalError
from consumer.kafka.client_log import librdkafka_logger
from consumer.settings import KafkaSettings


def translate_error(error: Any) -> KafkaError:
    """confluent_kafka.KafkaError -> our KafkaError (fatal ones as KafkaFatalError)."""
    code = error.name() if hasattr(error, "name") else "UNKNOWN"
    reason = error.str() if hasattr(error, "str") else str(error)
    if getattr(error, "fatal", lambda: False)():
        return KafkaFatalError(code, reason)
    return KafkaError(code, reason)


#: librdkafka's name for a refused SASL handshake (wrong password, unknown user or mechanism).
AUTHENTICATION = "_AUTHENTICATION"


def authentication_failed(settings: KafkaSettings, error: KafkaError) -> KafkaAuthenticationFailed:
    """``error`` (an ``_AUTHENTICATION`` one) with where and how we tried to authenticate;
    never the password."""
    def setting(*names: str, default: str | None) -> str | None:
        for name in names:
            if name in settings.librdkafka:
                return settings.librdkafka[name].get_secret_value()
        return default

    return KafkaAuthenticationFailed(
        settings.bootstrap_servers,
        protocol=setting("security.protocol", default="plaintext") or "plaintext",
        mechanism=setting("sasl.mechanism", "sasl.mechanisms", default="GSSAPI") or "GSSAPI",
        username=setting("sasl.username", default=None), reason=error.reason)


class RefusedWatch:
    """An ``error_cb`` for short-lived clients: keeps the last refused SASL handshake, which
    librdkafka reports only through that callback (served by the client's ``poll``)."""

    def __init__(self) -> None:
        self.refused: KafkaError | None = None

    def __call__(self, error: Any) -> None:
        translated = translate_error(error)
        if translated.code == AUTHENTICATION:
            self.refused = translated


#: librdkafka properties every client of ours takes from ``kafka.librdkafka``: how to reach and
#: authenticate to the brokers. Everything else there (fetch sizes, isolation, static
#: membership) is the group's consumer's own.
CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.", "enable.ssl", "enable.sasl", "https.",
                       "socket.", "broker.", "client.", "connections.max.idle", "metadata.",
                       "topic.metadata.", "api.version", "reconnect.", "retry.")


def inherited(settings: KafkaSettings, *, every_property: bool = False) -> dict[str, Any]:
    """The ``kafka.librdkafka`` properties a client takes, secrets revealed: the connection
    and security ones (:data:`CONNECTION_PREFIXES`), or with ``every_property`` all of them
    (the group's consumer). The one place that decides it, so no client connects without the
    TLS or SASL settings the others use."""
    return {k: v.get_secret_value() for k, v in settings.librdkafka.items()
            if every_property or k.startswith(CONNECTION_PREFIXES)}


def client_config(settings: KafkaSettings, own: Mapping[str, Any] | None = None, *,
                  client_id: str | None = None) -> dict[str, Any]:
    """A client other than the group's consumer (the dead-letter producer, a reader, an admin
    client): the brokers, a client id, our logger, ``own`` properties, then every connection
    and security property of ``kafka.librdkafka``. Consumer-only properties are left out:
    they would make librdkafka warn, or change what a reader does.

    The client logs through the ``consumer.librdkafka`` logger like every other client of
    ours: without it, librdkafka writes raw lines to stderr that break JSON logs."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": client_id or settings.client_id,
        "logger": librdkafka_logger(), **(own or {})}
    config.update(inherited(settings))
    return config


def admin_config(settings: KafkaSettings) -> dict[str, Any]:
    """An admin client's configuration: :func:`client_config` with nothing of its own."""
    return client_config(settings)
