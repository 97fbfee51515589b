"""Values and keys in the Confluent wire format (a magic byte, the writer's schema id, the
encoded data), decoded through ``confluent_kafka.schema_registry``'s deserializers against the
configured registry.

The one place that talks to the registry. A decoder returned by :func:`registry_decoder`
returns the decoded data, or raises:

- :class:`~consumer.errors.SchemaRegistryUnavailable` when the registry could not tell the
  schema (unreachable, timed out, HTTP 401/403/408/429 or 5xx): not the message's fault;
- anything else the deserializer raised (a wrong magic byte, an unknown schema id, data that
  does not match its schema): the message's fault, a poison message for the caller.

Imported only when a route names a registry format, so routes without one load none of it.
The client caches schemas by id, so the registry is asked once per schema, not per message.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import OAuthTokenError, SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.errors import SchemaRegistryUnavailable
from consumer.message import Message
from consumer.settings import SchemaRegistrySettings

#: decode(data, message) -> decoded data
RegistryDecoder = Callable[[bytes | None, Message], Any]

#: HTTP answers that say nothing about the message: retried, never a dead letter.
_TRANSIENT_STATUS = frozenset({401, 403, 408, 429})


def registry_client(settings: SchemaRegistrySettings) -> SchemaRegistryClient:
    """A client for ``settings``, with an explicit timeout (the client's default waits
    forever) and no retries of its own: a request that fails is the message's retry, with the
    route's backoff, while the loop keeps polling (the client's retries would hold the loop
    for up to four timeouts plus its waits). Nothing connects until the first schema is asked
    for."""
    conf: dict[str, Any] = {"url": settings.url, "timeout": settings.timeout_seconds,
                            "max.retries": 0}
    if settings.basic_auth_user is not None and settings.basic_auth_password is not None:
        conf["basic.auth.user.info"] = (
            f"{settings.basic_auth_user}:{settings.basic_auth_password.get_secret_value()}")
    conf.update(_bearer_auth(settings))
    if settings.ssl_ca_location is not None:
        conf["ssl.ca.location"] = str(settings.ssl_ca_location)
    return SchemaRegistryClient(conf)


def _bearer_auth(settings: SchemaRegistrySettings) -> dict[str, Any]:
    """The client's bearer properties: a fixed token, or OAuth client credentials (the
    client fetches the token, and again once 80% of its lifetime has passed); none for basic
    auth or none."""
    if settings.bearer_token is not None:
        conf: dict[str, Any] = {"bearer.auth.credentials.source": "STATIC_TOKEN",
                                "bearer.auth.token": settings.bearer_token.get_secret_value()}
    elif settings.oauth_client_id is not None and settings.oauth_client_secret is not None:
        conf = {"bearer.auth.credentials.source": "OAUTHBEARER",
                "bearer.auth.issuer.endpoint.url": settings.oauth_token_endpoint,
                "bearer.auth.client.id": settings.oauth_client_id,
                "bearer.auth.client.secret": settings.oauth_client_secret.get_secret_value(),
                "bearer.auth.scope": settings.oauth_scope}
    else:
        return {}
    conf["bearer.auth.logical.cluster"] = settings.logical_cluster
    if settings.identity_pool_id is not None:
        conf["bearer.auth.identity.pool.id"] = settings.identity_pool_id
    return conf


def registry_decoder(kind: str, client: SchemaRegistryClient, settings: SchemaRegistrySettings,
                     *, key: bool, message_class: type | None = None) -> RegistryDecoder:
    """A decoder of ``kind`` (avro, protobuf, json_schema) for values (or keys, ``key``)."""
    conf = {"subject.name.strategy.type": settings.subject_name_strategy.upper()}
    deserialize: Callable[[bytes | None, SerializationContext], Any]
    if kind == "avro":
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        deserialize = AvroDeserializer(client, conf=conf)
    elif kind == "protobuf":
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer

        deserialize = ProtobufDeserializer(message_class, conf=conf)
    elif kind == "json_schema":
        from confluent_kafka.schema_registry.json_schema import JSONDeserializer

        deserialize = JSONDeserializer(None, schema_registry_client=client, conf=conf)
    else:
        raise ValueError(f"{kind!r} is not a schema registry format")
    field = MessageField.KEY if key else MessageField.VALUE
    url = settings.url

    def decode(data: bytes | None, message: Message) -> Any:
        try:
            return deserialize(data, SerializationContext(message.topic, field,
                                                          list(message.headers)))
        except Exception as error:
            if _transient(error):
                raise SchemaRegistryUnavailable(url, message.topic, message.partition,
                                                message.offset,
                                                f"{type(error).__name__}: {error}") from error
            raise

    return decode


def _transient(error: BaseException) -> bool:
    if isinstance(error, SchemaRegistryError):
        status = error.http_status_code
        return status >= 500 or status in _TRANSIENT_STATUS
    return isinstance(error, (OAuthTokenError, *_TRANSPORT_ERRORS))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's connection and timeout errors: httpx2 on Python 3.10 and newer (what
    confluent-kafka's registry client uses there), httpx before."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()
