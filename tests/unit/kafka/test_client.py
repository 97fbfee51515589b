"""consumer.kafka.client: every client of ours (the group's consumer, the dead-letter producer,
the redrive reader, admin clients for lag, replay and topic ids) connects with the same
connection and security settings; only the group's consumer takes the rest."""

from __future__ import annotations

from typing import Any, ClassVar

import confluent_kafka.admin
import pytest

from consumer.kafka import admin as admin_module
from consumer.kafka import producer as producer_module
from consumer.kafka import source as source_module
from consumer.kafka.admin import group_member_count, read_topic
from consumer.kafka.producer import KafkaDeadLetterSink
from consumer.kafka.source import KafkaSource
from consumer.settings import KafkaSettings

#: What a secured deployment sets: each of these must reach every client.
CONNECTION = {
    "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "svc", "sasl.password": "hush", "ssl.ca.location": "/etc/ca.pem",
    "ssl.endpoint.identification.algorithm": "https",
    "enable.ssl.certificate.verification": "true", "https.ca.location": "/etc/idp-ca.pem",
    "socket.keepalive.enable": "true", "broker.address.family": "v4",
    "client.dns.lookup": "use_all_dns_ips", "connections.max.idle.ms": "60000",
    "metadata.max.age.ms": "30000", "topic.metadata.refresh.interval.ms": "10000",
    "reconnect.backoff.max.ms": "5000", "retry.backoff.ms": "200",
}
CONSUMER_ONLY = {"fetch.min.bytes": "1", "isolation.level": "read_committed",
                 "group.instance.id": "pod-0"}


class _Captured(Exception):
    pass


class _Client:
    """Stands in for every confluent_kafka client: keeps its configuration, then stops the
    function under test (nothing here talks to a broker)."""

    configs: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.configs.append(config)

    def __getattr__(self, name: str) -> Any:
        if name == "close":
            return lambda: None
        raise _Captured(name)


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    _Client.configs = []
    monkeypatch.setattr(producer_module.confluent_kafka, "Producer", _Client)
    monkeypatch.setattr(admin_module, "Consumer", _Client)
    monkeypatch.setattr(source_module, "Consumer", _Client)
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", _Client)
    return _Client.configs


def _settings() -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="k1:9093", group_id="g", client_id="svc",
                         librdkafka={**CONNECTION, **CONSUMER_ONLY})


def _subset(config: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    return {k: config[k] for k in keys if k in config}


def test_every_client_gets_every_connection_and_security_setting(
    configs: list[dict[str, Any]],
) -> None:
    settings = _settings()
    KafkaDeadLetterSink(settings)
    for reads in (lambda: read_topic(settings, "events.dlq"),
                  lambda: group_member_count(settings, "g")):
        with pytest.raises(_Captured):
            reads()
    KafkaSource(settings)
    producer, reader, admin, consumer = configs
    for name, config in (("dead-letter producer", producer), ("redrive reader", reader),
                         ("admin client", admin), ("group consumer", consumer)):
        assert _subset(config, CONNECTION) == CONNECTION, name
        assert config["bootstrap.servers"] == "k1:9093", name
    for name, config in (("dead-letter producer", producer), ("redrive reader", reader),
                         ("admin client", admin)):
        assert _subset(config, CONSUMER_ONLY) == {}, name
    assert _subset(consumer, CONSUMER_ONLY) == CONSUMER_ONLY


def test_each_client_keeps_its_own_id_and_settings(configs: list[dict[str, Any]]) -> None:
    settings = _settings()
    KafkaDeadLetterSink(settings, timeout=7)
    with pytest.raises(_Captured):
        read_topic(settings, "events.dlq")
    producer, reader = configs
    assert producer["client.id"] == "svc-dead-letters"
    assert (producer["acks"], producer["enable.idempotence"]) == ("all", True)
    assert producer["message.timeout.ms"] == 7000
    assert reader["client.id"] == "svc-reader"
    assert (reader["group.id"], reader["enable.auto.commit"]) == ("g-reader", False)


def test_a_refused_handshake_names_the_brokers_protocol_mechanism_and_user_not_the_password(
) -> None:
    from consumer.errors import KafkaAuthenticationFailed, KafkaError
    from consumer.kafka.client import authentication_failed

    failed = authentication_failed(_settings(), KafkaError("_AUTHENTICATION", "invalid creds"))
    assert isinstance(failed, KafkaAuthenticationFailed) and failed.fatal
    text = str(failed)
    for part in ("k1:9093", "SASL_SSL", "SCRAM-SHA-512", "'svc'", "invalid creds",
                 "kafka.sasl_password_file", "not retrying"):
        assert part in text, part
    assert "hush" not in text
    bare = authentication_failed(KafkaSettings(bootstrap_servers="b:1", group_id="g"),
                                 KafkaError("_AUTHENTICATION", "no"))
    assert (bare.protocol, bare.mechanism, bare.username) == ("plaintext", "GSSAPI", None)
