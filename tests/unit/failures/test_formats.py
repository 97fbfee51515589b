"""Route decoders: chosen once from format / key_format, decoding into message.value_decoded and
key_decoded, poison for data that does not decode, and a registry that does not answer kept
apart from poison (retried, never dead-lettered)."""

from __future__ import annotations

import random
import socket

import pytest

from consumer.clock import ManualClock
from consumer.errors import ConfigError, SchemaRegistryUnavailable
from consumer.events import Observer
from consumer.failures.formats import PoisonMessage, build_decoders
from consumer.failures.retries import FailurePolicy, Failures, Verdict
from consumer.message import Message
from consumer.settings import RouteSettings, SchemaRegistrySettings
from consumer.testing import InMemoryDeadLetterSink

HANDLER = "tests:handler"
CUSTOM = "tests.support.format_handlers:semicolons"


def _route(**settings: object) -> RouteSettings:
    return RouteSettings.model_validate({"handler": HANDLER, **settings})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed when the block ends: connections refused


def test_routes_without_a_format_get_no_decoder_at_all() -> None:
    assert build_decoders({"raw": _route(), "bytes": _route(format="bytes")}, None) == {}


def test_json_and_custom_decoders_fill_value_decoded_and_key_decoded() -> None:
    decoders = build_decoders({"t": _route(format="json", key_format=CUSTOM)}, None)
    message = Message("t", 0, 1, b'{"n": 1}', key=b"a=1;b=2")
    decoders["t"](message)
    assert message.value_decoded == {"n": 1}
    assert message.key_decoded == {"a": "1", "b": "2"}


def test_a_route_that_decodes_only_keys_leaves_value_decoded_unset_with_a_clear_error() -> None:
    decoders = build_decoders({"t": _route(key_format="text")}, None)
    message = Message("t", 0, 1, b"\xff", key=b"k")
    decoders["t"](message)
    assert message.key_decoded == "k"
    with pytest.raises(AttributeError, match="decodes no values; set its format"):
        _ = message.value_decoded


def test_data_a_decoder_rejects_is_a_poison_message_naming_the_field_and_format() -> None:
    decoders = build_decoders({"t": _route(format=CUSTOM)}, None)
    with pytest.raises(PoisonMessage, match=r"value is not valid .*semicolons.*not key=value"):
        decoders["t"](Message("t", 0, 1, b"nope"))


def test_a_decoder_or_protobuf_class_that_cannot_be_imported_is_a_config_error() -> None:
    registry = SchemaRegistrySettings(url="http://127.0.0.1:1")
    with pytest.raises(ConfigError) as raised:
        build_decoders({"a": _route(format="tests.support.nowhere:decode"),
                        "b": _route(format="protobuf", protobuf_message="json:JSONDecoder"),
                        "c": _route(format="protobuf", protobuf_message="json:dumps")},
                       registry)
    problems = raised.value.problems
    assert problems[0].startswith("routes.a.format: cannot import module")
    assert problems[1].startswith("routes.b.format: protobuf decoder cannot be built")
    assert problems[2].startswith("routes.c.format: json:dumps is not a class")
    assert len(problems) == 3


def test_a_registry_that_refuses_connections_is_unavailable_not_poison() -> None:
    """A real client against a port nothing listens on: the decode raises
    SchemaRegistryUnavailable, which passes through the decoder instead of becoming poison."""
    url = f"http://127.0.0.1:{_closed_port()}"
    decoders = build_decoders({"t": _route(format="avro")},
                              SchemaRegistrySettings(url=url, timeout_seconds=2))
    framed = b"\x00\x00\x00\x00\x01\x02x"
    with pytest.raises(SchemaRegistryUnavailable, match="did not answer for t\\[0\\]@5"):
        decoders["t"](Message("t", 0, 5, framed))
    with pytest.raises(PoisonMessage, match="magic byte"):  # no registry needed to see this
        decoders["t"](Message("t", 0, 6, b"\x07" + framed[1:]))


def test_an_unavailable_registry_is_retried_past_the_attempts_and_never_dead_lettered() -> None:
    clock = ManualClock()
    sink = InMemoryDeadLetterSink()
    policy = FailurePolicy(attempts=2, initial_backoff=1.0, max_backoff=4.0, multiplier=2.0,
                           jitter=0.0, never_retry=(), stop_on=(), dead_letter_topic="t.dlq",
                           format="avro")
    failures = Failures({"t": policy}, sink=sink, group="g", observer=Observer(),
                        monotonic=clock.monotonic, wall=clock.wall, rng=random.Random(1))
    message = Message("t", 0, 5, b"\x00\x00\x00\x00\x01")
    outage = SchemaRegistryUnavailable("http://r", "t", 0, 5, "ConnectError")
    for _ in range(5):
        assert failures.exhausted_error(message) is None  # decoded again each time
        assert failures.failed(message, outage) is Verdict.RETRY
        assert failures.message_failed(message, outage)[0] is Verdict.RETRY
        assert failures.message_exhausted(message) is None
    assert sink.sent == []
    poison = PoisonMessage("value is not valid avro")
    assert failures.failed(message, poison) is Verdict.DEAD_LETTERED
    assert [h["dlq.reason"] for _, _, h in sink.sent] == [b"deserialization"]
