"""librdkafka's mock cluster, driven through the C API of the library confluent-kafka ships
(ctypes): brokers inside this process whose answers a unit test scripts, e.g. "not the
coordinator" twice. Proof of how our code treats a client's answers, never of what a real
broker does (the integration tests are for that)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import confluent_kafka

#: Kafka's API keys and error codes a test scripts.
OFFSET_FETCH = 9
NOT_COORDINATOR = 16

_PRODUCER = 1


def _library() -> ctypes.CDLL:
    """The librdkafka confluent-kafka loaded (the same file, so the same loaded copy)."""
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka-*.so*"))
    if not found:
        raise RuntimeError(f"no librdkafka in {libs}: confluent-kafka is not a wheel here")
    lib = ctypes.CDLL(str(found[0]))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                                 ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                               ctypes.c_int]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    return lib


class MockCluster:
    """A one-broker mock cluster; ``bootstrap`` is its address."""

    def __init__(self) -> None:
        self._lib = _library()
        errors = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        # The owner handle never connects: no warning that it has no brokers.
        self._lib.rd_kafka_conf_set(ctypes.c_void_p(conf), b"log_level", b"3", errors,
                                    ctypes.c_size_t(len(errors)))
        self._owner = self._lib.rd_kafka_new(_PRODUCER, conf, errors, len(errors))
        if not self._owner:
            raise RuntimeError(f"rd_kafka_new failed: {errors.value.decode()}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._owner, 1)
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(
            self._cluster).decode()

    def create_topic(self, name: str, partitions: int) -> None:
        code = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, 1)
        if code != 0:
            raise RuntimeError(f"creating mock topic {name} failed: error {code}")

    def fail_next(self, api_key: int, *errors: int) -> None:
        """The next ``len(errors)`` requests of ``api_key`` are answered with these errors."""
        self._lib.rd_kafka_mock_push_request_errors(
            ctypes.c_void_p(self._cluster), ctypes.c_int16(api_key),
            ctypes.c_size_t(len(errors)), *(ctypes.c_int(e) for e in errors))

    def close(self) -> None:
        self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
        self._lib.rd_kafka_destroy(self._owner)
