"""Everything that talks to Kafka does so over a SASL_SSL listener (SCRAM-SHA-512 over TLS,
certificates made at start) with configuration only: `consumer run` (its group consumer and its
dead-letter producer), `consumer lag`, `consumer replay` and `consumer dlq redrive`. A wrong
password stops the consumer at start with a clear error (exit 2), and no secret (the SASL
password, the store DSN's password) shows in logs, `consumer check`, /metrics or dead letters.

The broker is the tests' own (``secured_kafka``); the tests set up topics and read results
through its PLAINTEXT listener, and give the consumer the SASL_SSL one only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from consumer_process import REPO_ROOT, ConsumerProcess, consumer_config, wait_for

from consumer.errors import EXIT_CONFIG
from tests.support.failing_handlers import records
from tests.support.kafka import (
    create_named_topic,
    create_topic,
    end_offsets,
    group_offsets,
    produce,
    read_topic,
    unique_name,
)
from tests.support.scrape import endpoint
from tests.support.secured_kafka import SecuredKafka
from tests.support.stores import fresh_store

pytestmark = pytest.mark.integration

EVENTS = 20
#: Event 7 is not JSON (poison: dead-lettered without a handler call); event 13's handler
#: always raises (dead-lettered after its retries).
POISON, FAILING = 7, 13


@dataclass
class SecuredRun:
    """What one `consumer run` over SASL_SSL, and the commands after it, did and printed."""

    kafka: SecuredKafka
    topic: str
    group: str
    handled: list[int]
    exit_code: int
    committed: dict[int, int | None]
    dead_letters: list[object]
    outputs: dict[str, str]
    commands: dict[str, subprocess.CompletedProcess[str]]
    ends_before_redrive: dict[int, int]
    ends_after_redrive: dict[int, int]
    committed_after_replay: dict[int, int | None]
    dsn_password: str


def _secured_kafka_config(kafka: SecuredKafka, group: str, topic: str,
                          **extra: object) -> dict[str, Any]:
    """The SASL_SSL listener and its user, nothing else: the password comes from a file."""
    config = consumer_config(kafka.bootstrap, group, topic, **extra)
    config["kafka"]["librdkafka"].update(kafka.librdkafka())
    return config


def _command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer", *args], cwd=REPO_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture(scope="module")
def secured_run(secured_kafka: SecuredKafka, postgres_dsn: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRun]:
    """One consumer over SASL_SSL with a PostgreSQL store, both secrets read from files named
    by the environment, JSON logs at DEBUG; then `consumer check`, `lag`, `dlq redrive` and
    `replay` with the same configuration."""
    tmp = tmp_path_factory.mktemp("sasl-run")
    plain = secured_kafka.plaintext_bootstrap
    topic = create_topic(plain, 2, prefix="sasl")
    create_named_topic(plain, f"{topic}.dlq")
    produce(plain, topic, (b"{not json" if i == POISON else json.dumps(
        {"n": i, "kind": "fail" if i == FAILING else "good"}).encode() for i in range(EVENTS)),
        partition=lambda i: i % 2)
    group = unique_name("sasl")
    with fresh_store("postgresql", tmp, postgres_dsn) as store:
        (tmp / "sasl-password").write_text(secured_kafka.password + "\n")
        (tmp / "store-url").write_text(store.url + "\n")
        env = {"CONSUMER_KAFKA__SASL_PASSWORD_FILE": str(tmp / "sasl-password"),
               "CONSUMER_STORE__URL_FILE": str(tmp / "store-url")}
        config = _secured_kafka_config(secured_kafka, group, topic)
        config["store"] = {}  # the URL comes from CONSUMER_STORE__URL_FILE
        config["checkpoint"] = {"every_messages": 5, "every_seconds": 0.5}
        config["logging"] = {"format": "json"}
        config["routes"] = {topic: {"handler": "tests.support.failing_handlers:apply",
                                    "format": "json",
                                    "retry": {"attempts": 2, "initial_backoff_seconds": 0.05,
                                              "max_backoff_seconds": 0.1}}}
        config_file = tmp / "consumer.yaml"
        config_file.write_text(yaml.safe_dump(config))
        run = ConsumerProcess(tmp, "run", config, env=env).start()
        outputs: dict[str, str] = {}
        try:
            # Offsets are asked only once the group has handled events: before that, this
            # broker has no __consumer_offsets, and the read answers "nothing committed"
            # (consumer.kafka.admin.committed_offsets).
            wait_for(lambda: len(records(str(run.record_file))) >= EVENTS - 2, timeout=60,
                     what=f"the consumer to handle the events ({run.log_tail()})")
            wait_for(lambda: group_offsets(plain, group, topic, 2) == {0: 10, 1: 10},
                     timeout=60, what=f"the group to commit every event ({run.log_tail()})")
            with urllib.request.urlopen(f"{endpoint(run)}/metrics", timeout=10) as response:
                outputs["/metrics"] = response.read().decode()
            run.signal(signal.SIGTERM)
            exit_code = run.wait()
        finally:
            run.stop_if_running()
        handled = sorted(n for _, _, n, _, outcome, _ in records(str(run.record_file))
                         if outcome == "handled")
        committed = group_offsets(plain, group, topic, 2)
        dead_letters = read_topic(plain, f"{topic}.dlq")
        outputs["consumer run log"] = run.log_file.read_text()
        commands = {"check": _command("check", "--config", str(config_file), env=env),
                    "lag": _command("lag", "--config", str(config_file), "--json", env=env)}
        ends_before = end_offsets(plain, topic)
        commands["redrive"] = _command("dlq", "redrive", "--config", str(config_file),
                                       "--execute", env=env)
        ends_after = end_offsets(plain, topic)
        commands["replay"] = _command("replay", "--config", str(config_file), "--topic", topic,
                                      "--to-earliest", "--keep-keys", "--execute", env=env)
        committed_after_replay = group_offsets(plain, group, topic, 2)
        yield SecuredRun(secured_kafka, topic, group, handled, exit_code, committed,
                         dead_letters, outputs, commands, ends_before, ends_after,
                         committed_after_replay, urlsplit(postgres_dsn).password or "")


def test_the_consumer_handles_and_commits_over_sasl_ssl(secured_run: SecuredRun) -> None:
    # A set: the record file is an effect outside the store, repeated when a batch is
    # retried around the failing event.
    assert set(secured_run.handled) == set(range(EVENTS)) - {POISON, FAILING}
    assert secured_run.committed == {0: 10, 1: 10}
    assert secured_run.exit_code == 0, secured_run.outputs["consumer run log"][-2000:]
    assert secured_run.kafka.bootstrap in secured_run.outputs["consumer run log"]


def test_the_dead_letter_producer_writes_over_sasl_ssl(secured_run: SecuredRun) -> None:
    """The poison event (not JSON) and the event whose handler always raises."""
    letters = sorted((int(headers["dlq.original.offset"]), headers["dlq.exception.type"])
                     for headers in ({name: (value or b"").decode() for name, value in
                                      letter.headers() or []}  # type: ignore[attr-defined]
                                     for letter in secured_run.dead_letters))
    assert letters == [(POISON // 2, "PoisonMessage"), (FAILING // 2, "AlwaysFails")]


def test_lag_reads_the_group_over_sasl_ssl(secured_run: SecuredRun) -> None:
    lag = secured_run.commands["lag"]
    assert lag.returncode == 0, lag.stderr
    report = json.loads(lag.stdout)
    assert report["total_lag"] == 0
    assert {(p["partition"], p["committed"], p["store"]) for p in report["partitions"]} == {
        (0, 10, 10), (1, 10, 10)}


def test_redrive_reads_and_republishes_dead_letters_over_sasl_ssl(
    secured_run: SecuredRun,
) -> None:
    redrive = secured_run.commands["redrive"]
    assert redrive.returncode == 0, redrive.stderr
    assert "redrove 2 dead letter(s)" in redrive.stdout
    before, after = secured_run.ends_before_redrive, secured_run.ends_after_redrive
    assert sum(after.values()) - sum(before.values()) == 2


def test_replay_moves_the_stopped_group_over_sasl_ssl(secured_run: SecuredRun) -> None:
    replay = secured_run.commands["replay"]
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert secured_run.committed_after_replay == {0: 0, 1: 0}


def test_no_secret_in_logs_check_output_metrics_or_dead_letters(
    secured_run: SecuredRun,
) -> None:
    """The SASL password and the store DSN's password, both read from files, appear nowhere
    an operator or a collector sees: the JSON log (DEBUG), `consumer check`, /metrics, the
    commands' output, and every header of every dead letter."""
    secrets = {"SASL password": secured_run.kafka.password,
               "store DSN password": secured_run.dsn_password}
    assert all(len(secret) >= 8 for secret in secrets.values()), secrets.keys()
    seen = dict(secured_run.outputs)
    for name, done in secured_run.commands.items():
        seen[f"consumer {name}"] = done.stdout + done.stderr
    for i, letter in enumerate(secured_run.dead_letters):
        seen[f"dead letter {i}"] = repr(letter.headers()) + repr(  # type: ignore[attr-defined]
            letter.value())  # type: ignore[attr-defined]
    assert "***" in seen["consumer check"] and "sasl_password_file" in seen["consumer check"]
    assert "consumer_commits_total" in seen["/metrics"]
    assert json.loads(seen["consumer run log"].splitlines()[0])["level"] == "INFO"
    leaks = [f"{secret_name} in {where}" for where, text in seen.items()
             for secret_name, secret in secrets.items() if secret in text]
    assert leaks == []


def test_a_wrong_password_stops_the_consumer_at_start_naming_listener_and_mechanism(
    secured_kafka: SecuredKafka, tmp_path: Path
) -> None:
    """No retry loop: the broker refused the credentials, and retrying cannot fix them."""
    topic = create_topic(secured_kafka.plaintext_bootstrap, 1, prefix="sasl-wrong")
    password_file = tmp_path / "sasl-password"
    password_file.write_text("not-the-password\n")
    config = _secured_kafka_config(secured_kafka, unique_name("wrong"), topic,
                                   sasl_password_file=str(password_file))
    began = time.monotonic()
    run = ConsumerProcess(tmp_path, "wrong", config).start()
    try:
        code = run.wait(timeout=30)
    finally:
        run.stop_if_running()
    log = run.log_file.read_text()
    assert code == EXIT_CONFIG, log
    assert time.monotonic() - began < 20, log
    assert secured_kafka.bootstrap in log
    assert "SCRAM-SHA-512" in log
    assert "kafka.sasl_password_file" in log
    assert "not-the-password" not in log


@pytest.mark.parametrize("command", [
    ["lag"], ["replay", "--to-earliest"], ["dlq", "redrive"]])
def test_a_wrong_password_stops_each_command_at_once_with_exit_2(
    secured_kafka: SecuredKafka, tmp_path: Path, command: list[str]
) -> None:
    """Not a traceback after the admin timeout: the refused handshake, in about a second."""
    (tmp_path / "sasl-password").write_text("not-the-password\n")
    topic = unique_name("sasl-cmd")
    config = _secured_kafka_config(secured_kafka, unique_name("wrong"), topic,
                                   sasl_password_file=str(tmp_path / "sasl-password"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    arguments = [*command, "--config", str(tmp_path / "c.yaml")]
    if command[0] == "replay":
        arguments += ["--topic", topic]
    began = time.monotonic()
    done = _command(*arguments, env={})
    assert done.returncode == EXIT_CONFIG, done.stdout + done.stderr
    assert time.monotonic() - began < 8, done.stderr
    assert f"Kafka at {secured_kafka.bootstrap} refused user 'consumer'" in done.stderr
    assert "sasl.mechanism SCRAM-SHA-512" in done.stderr
    assert "Traceback" not in done.stderr
