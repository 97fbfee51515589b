"""Registry formats end to end: values written by confluent-kafka's serializers against a real
schema registry (Apicurio Registry, Confluent API; never a mock) are decoded for the handler by
``consumer run``; values that do not decode are dead-lettered with reason deserialization and
their original bytes.

One consumer process serves every route at once (avro with an avro key, protobuf, json_schema,
a custom decoder, and a route fed only poison), so the whole story costs one process start."""

from __future__ import annotations

import json
import signal
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.kafka import (
    create_named_topic,
    create_topic,
    end_offsets,
    produce,
    read_topic,
    unique_name,
)
from tests.support.order_pb2 import Order
from tests.support.registry_gateway import RegistryGateway
from tests.support.tcp_gate import TcpGate

pytestmark = pytest.mark.integration

HANDLER = "tests.support.format_handlers:record"
#: The producers' subject-name strategy, named explicitly; the consumer's is the same (topic).
PRODUCER_CONF = {"subject.name.strategy": topic_subject_name_strategy}

ORDER_V1 = {"type": "record", "name": "Order", "namespace": "tests",
            "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "long"}]}
#: v2 adds a field with a default: a reader of either version reads the other (compatible).
ORDER_V2 = {**ORDER_V1, "fields": [*ORDER_V1["fields"],
                                   {"name": "currency", "type": "string", "default": "EUR"}]}
JSON_SCHEMA = {"type": "object", "properties": {"id": {"type": "string"},
                                                "amount": {"type": "integer"}},
               "required": ["id", "amount"]}


def _value(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


def _records(run: ConsumerProcess) -> list[dict[str, Any]]:
    if not run.record_file.exists():
        return []
    return [json.loads(line) for line in run.record_file.read_text().splitlines()]


def test_registry_formats_decode_for_the_handler_and_poison_is_dead_lettered(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    """Avro (v1, then a compatible v2, with an avro key), protobuf, json_schema and a custom
    decoder each reach the handler decoded; garbage bytes, an unknown schema id and a wrong
    magic byte reach <topic>.dlq with reason deserialization and their original bytes, and a
    custom decoder's failure too."""
    registry = SchemaRegistryClient({"url": schema_registry_url, "timeout": 10})
    avro, proto, jsch, custom, poison = (create_topic(kafka_bootstrap, 1, prefix=p) for p in
                                         ("avro", "proto", "jsch", "custom", "poison"))
    for topic in (custom, poison):
        create_named_topic(kafka_bootstrap, f"{topic}.dlq", 1)

    # avro: v1 written first, then v2 registered as a compatible new version and written.
    registry.set_compatibility(f"{avro}-value", "BACKWARD")
    v1 = AvroSerializer(registry, json.dumps(ORDER_V1), conf=PRODUCER_CONF)
    v2 = AvroSerializer(registry, json.dumps(ORDER_V2), conf=PRODUCER_CONF)
    key = AvroSerializer(registry, '"string"', conf=PRODUCER_CONF)
    old = v1({"id": "o-1", "amount": 10}, _value(avro))
    assert registry.test_compatibility(f"{avro}-value", Schema(json.dumps(ORDER_V2), "AVRO"))
    new = v2({"id": "o-2", "amount": 20, "currency": "CHF"}, _value(avro))
    assert struct.unpack(">I", old[1:5]) != struct.unpack(">I", new[1:5])  # two schema ids
    keys = [key(k, SerializationContext(avro, MessageField.KEY)) for k in ("k-1", "k-2")]
    produce(kafka_bootstrap, avro, [old, new], key=lambda i: keys[i])

    pb = ProtobufSerializer(Order, registry, conf={**PRODUCER_CONF,
                                                   "use.deprecated.format": False})
    produce(kafka_bootstrap, proto, [pb(Order(id="p-1", amount=7), _value(proto))])
    js = JSONSerializer(json.dumps(JSON_SCHEMA), registry, conf=PRODUCER_CONF)
    produce(kafka_bootstrap, jsch, [js({"id": "j-1", "amount": 3}, _value(jsch))])
    produce(kafka_bootstrap, custom, [b"a=1;b=2", b"not pairs"])

    garbage = b"definitely not avro"
    unknown_id = b"\x00" + struct.pack(">I", 987_654_321) + b"\x02x"
    wrong_magic = b"\x07" + old[1:]
    produce(kafka_bootstrap, poison, [garbage, unknown_id, wrong_magic])

    group = unique_name("formats")
    config = consumer_config(kafka_bootstrap, group, avro, every_messages=1)
    config["schema_registry"] = {"url": schema_registry_url, "timeout_seconds": 5,
                                 "subject_name_strategy": "topic"}
    fast_retry = {"attempts": 1}
    config["routes"] = {
        avro: {"handler": HANDLER, "format": "avro", "key_format": "avro"},
        proto: {"handler": HANDLER, "format": "protobuf",
                "protobuf_message": "tests.support.order_pb2:Order"},
        jsch: {"handler": HANDLER, "format": "json_schema"},
        custom: {"handler": HANDLER, "format": "tests.support.format_handlers:semicolons",
                 "retry": fast_retry},
        poison: {"handler": HANDLER, "format": "avro", "retry": fast_retry},
    }
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        wait_for(lambda: len(_records(run)) >= 5, timeout=60,
                 what=f"five decoded messages ({run.log_tail()})")
        wait_for(lambda: (end_offsets(kafka_bootstrap, f"{poison}.dlq").get(0),
                          end_offsets(kafka_bootstrap, f"{custom}.dlq").get(0)) == (3, 1),
                 timeout=60, what=f"four dead letters ({run.log_tail()})")
        letters = {t: read_topic(kafka_bootstrap, f"{t}.dlq") for t in (custom, poison)}
        assert run.alive(), run.log_tail()
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()

    seen = {(r["topic"], r["offset"]): (r["value"], r["key"]) for r in _records(run)}
    assert seen == {
        (avro, 0): ({"id": "o-1", "amount": 10}, "k-1"),  # v1, read with its writer's schema
        (avro, 1): ({"id": "o-2", "amount": 20, "currency": "CHF"}, "k-2"),
        (proto, 0): ({"id": "p-1", "amount": "7"}, None),  # int64 as JSON text in MessageToDict
        (jsch, 0): ({"id": "j-1", "amount": 3}, None),
        (custom, 0): ({"a": "1", "b": "2"}, None),
    }
    dead = [(letter.value(), dict(letter.headers()))  # type: ignore[attr-defined]
            for t in (poison, custom) for letter in letters[t]]
    assert [value for value, _ in dead] == [garbage, unknown_id, wrong_magic, b"not pairs"]
    for _, headers in dead:
        assert headers["dlq.reason"] == b"deserialization"
        assert headers["dlq.exception.type"] == b"PoisonMessage"
    assert b"40403" in dead[1][1]["dlq.exception.message"]  # the registry's unknown id
    assert b"magic byte" in dead[2][1]["dlq.exception.message"]


def test_a_registry_gone_mid_run_holds_its_messages_until_it_answers_again(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    """The consumer reaches the registry through a gate. With the first schema read, the gate
    shuts (open connections dropped, new ones refused) and messages written with a second
    schema arrive: each waits, retried with the route's backoff, though the route allows one
    attempt; none is dead-lettered or handled undecoded. Once the gate opens again every
    message is handled once, decoded with its writer's schema."""
    registry = SchemaRegistryClient({"url": schema_registry_url, "timeout": 10})
    topic = create_topic(kafka_bootstrap, 1, prefix="gone")
    create_named_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    registry.set_compatibility(f"{topic}-value", "BACKWARD")
    v1 = AvroSerializer(registry, json.dumps(ORDER_V1), conf=PRODUCER_CONF)
    v2 = AvroSerializer(registry, json.dumps(ORDER_V2), conf=PRODUCER_CONF)
    produce(kafka_bootstrap, topic, [v1({"id": "o-0", "amount": 0}, _value(topic))])

    gate = TcpGate.for_url(schema_registry_url).open()
    config = consumer_config(kafka_bootstrap, unique_name("gone"), topic, every_messages=1)
    config["schema_registry"] = {"url": gate.url(schema_registry_url), "timeout_seconds": 2,
                                 "subject_name_strategy": "topic"}
    config["routes"] = {topic: {"handler": HANDLER, "format": "avro",
                                "retry": {"attempts": 1, "initial_backoff_seconds": 0.2,
                                          "max_backoff_seconds": 1.0}}}
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        wait_for(lambda: len(_records(run)) == 1, timeout=60,
                 what=f"the first message decoded through the gate ({run.log_tail()})")
        gate.shut()
        later = [v2({"id": f"o-{n}", "amount": n, "currency": "CHF"}, _value(topic))
                 for n in (1, 2, 3)]
        produce(kafka_bootstrap, topic, later)
        wait_for(lambda: _registry_retries(run) >= 3, timeout=60,
                 what=f"three retries while the registry is away ({run.log_tail()})")
        held = _records(run)
        letters_while_away = sum(end_offsets(kafka_bootstrap, f"{topic}.dlq").values())
        gate.open()
        wait_for(lambda: len(_records(run)) == 4, timeout=60,
                 what=f"the held messages decoded once the registry answers ({run.log_tail()})")
        assert run.alive(), run.log_tail()
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
        gate.shut()

    assert [r["offset"] for r in held] == [0]
    assert letters_while_away == 0
    assert [(r["offset"], r["value"]) for r in _records(run)] == [
        (0, {"id": "o-0", "amount": 0}),
        *((n, {"id": f"o-{n}", "amount": n, "currency": "CHF"}) for n in (1, 2, 3))]
    assert sum(end_offsets(kafka_bootstrap, f"{topic}.dlq").values()) == 0
    assert gate.connections >= 2  # the consumer came back through the reopened gate


def _registry_retries(run: ConsumerProcess) -> int:
    """Retries the consumer logged because the registry did not answer."""
    if not run.log_file.exists():
        return 0
    return sum("SchemaRegistryUnavailable" in line and "retrying in" in line
               for line in run.log_file.read_text(errors="replace").splitlines())


def test_the_registry_behind_a_gateway_is_read_with_a_bearer_token_or_oauth(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    """The registry sits behind a gateway that refuses requests without a bearer token it
    knows. One consumer sends a fixed token (from a file); another OAuth client credentials,
    trading them at the gateway's token endpoint for a token. Both decode every message, and
    the gateway refused none of their requests (it refuses one without a token)."""
    registry = SchemaRegistryClient({"url": schema_registry_url, "timeout": 10})
    topic = create_topic(kafka_bootstrap, 1, prefix="bearer")
    serialize = AvroSerializer(registry, json.dumps(ORDER_V1), conf=PRODUCER_CONF)
    produce(kafka_bootstrap, topic, [serialize({"id": f"o-{n}", "amount": n}, _value(topic))
                                     for n in range(3)])
    gateway = RegistryGateway(schema_registry_url, client_id="orders-consumer",
                              client_secret="s3cret", static_token="fixed-token").start()
    token_file = tmp_path / "registry-token"
    token_file.write_text("fixed-token\n")
    ways = {
        "token": {"bearer_token_file": str(token_file), "logical_cluster": "lsrc-test"},
        "oauth": {"oauth_token_endpoint": f"{gateway.url}/token",
                  "oauth_client_id": "orders-consumer", "oauth_client_secret": "s3cret",
                  "oauth_scope": "registry", "logical_cluster": "lsrc-test"},
    }
    try:
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"{gateway.url}/subjects", timeout=10)
        assert gateway.refused == 1
        for way, authentication in ways.items():
            config = consumer_config(kafka_bootstrap, unique_name(way), topic, every_messages=1)
            config["schema_registry"] = {"url": gateway.url, "timeout_seconds": 5,
                                         **authentication}
            config["routes"] = {topic: {"handler": HANDLER, "format": "avro"}}
            run = ConsumerProcess(tmp_path, way, config).start()
            try:
                wait_for(lambda: len(_records(run)) == 3, timeout=60,  # noqa: B023
                         what=f"{way}: every message decoded through the gateway "
                              f"({run.log_tail()})")
                run.signal(signal.SIGTERM)
                assert run.wait() == 0, run.log_tail()
            finally:
                run.stop_if_running()
            assert [r["value"] for r in _records(run)] == [
                {"id": f"o-{n}", "amount": n} for n in range(3)]
    finally:
        gateway.close()

    assert gateway.refused == 1, "only the request without a token"
    assert (gateway.issued, gateway.scopes) == (1, ["registry"])
    assert gateway.clusters == {"", "lsrc-test"}
