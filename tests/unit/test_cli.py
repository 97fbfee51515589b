"""consumer.cli: exit codes and output of ``consumer run`` / ``consumer check``, no broker."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import consumer.cli
from consumer.cli import main
from consumer.errors import EXIT_CONFIG, EXIT_OK

REPO_ROOT = Path(__file__).resolve().parents[2]

VALID = """\
kafka:
  bootstrap_servers: "127.0.0.1:1"
  group_id: cli-test
  librdkafka:
    sasl.username: consumer
    sasl.password: hunter2
routes:
  events: handlers.echo:handle
"""


@pytest.fixture(autouse=True)
def _never_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if the CLI gets as far as building a Kafka consumer; keeps sys.path."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CLI built a consumer loop (it would connect to Kafka)")

    monkeypatch.setattr(consumer.cli, "build_loop", refuse)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(REPO_ROOT)


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def config_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("config: ")]


def test_run_with_an_invalid_config_exits_2_with_one_config_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """\
kafka:
  group_id: g
  poll_batch_size: lots
routes:
  events: handlers.echo
colour: blue
"""
    assert main(["run", "--config", write(tmp_path, text)]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = config_lines(captured.err)
    assert len(lines) == 4, captured.err
    assert sorted(line.split(": ", 2)[1] for line in lines) == [
        "colour",
        "kafka.bootstrap_servers",
        "kafka.poll_batch_size",
        "routes.events.handler",
    ]


def test_run_with_a_missing_config_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["run", "--config", str(missing)]) == EXIT_CONFIG
    lines = config_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert str(missing) in lines[0]


def test_run_with_a_handler_that_does_not_import_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = VALID.replace("handlers.echo:handle", "handlers.no_such_module:handle")
    assert main(["run", "--config", write(tmp_path, text)]) == EXIT_CONFIG
    lines = config_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith("config: routes.events.handler: cannot import module")
    assert "handlers.no_such_module" in lines[0]


def test_run_reports_every_bad_handler_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = VALID.replace(
        "  events: handlers.echo:handle\n",
        "  events: handlers.echo:absent\n  audit: handlers.no_such_module:handle\n",
    )
    assert main(["run", "--config", write(tmp_path, text)]) == EXIT_CONFIG
    lines = config_lines(capsys.readouterr().err)
    assert len(lines) == 2
    assert any(line.startswith("config: routes.events.handler: ") for line in lines)
    assert any(line.startswith("config: routes.audit.handler: ") for line in lines)


def test_run_with_malformed_json_in_the_environment_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad CONSUMER_<SECTION> value is a configuration problem (exit 2), not a crash."""
    monkeypatch.setenv("CONSUMER_KAFKA", "{oops")
    assert main(["run", "--config", write(tmp_path, VALID)]) == EXIT_CONFIG
    assert len(config_lines(capsys.readouterr().err)) == 1


def test_check_prints_the_effective_config_as_json_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUMER_KAFKA__CLIENT_ID", "from-env")
    assert main(["check", "--config", write(tmp_path, VALID)]) == EXIT_OK
    captured = capsys.readouterr()
    assert "hunter2" not in captured.out
    assert "hunter2" not in captured.err
    printed = json.loads(captured.out)
    assert printed["kafka"]["librdkafka"] == {"sasl.username": "consumer", "sasl.password": "***"}
    assert printed["kafka"]["group_id"] == "cli-test"
    assert printed["kafka"]["client_id"] == "from-env"
    assert printed["routes"]["events"]["handler"] == "handlers.echo:handle"
    assert printed["checkpoint"] == {
        "every_messages": 1000, "every_seconds": 5.0, "synchronous_commits": False,
        "max_unconfirmed_messages": None,
    }


def test_check_names_a_setting_given_by_its_former_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = VALID + "store:\n  url: postgresql://u@h/db\n  postgres_async_connections: 20\n"
    assert main(["check", "--config", write(tmp_path, config)]) == EXIT_OK
    captured = capsys.readouterr()
    assert config_lines(captured.err) == [
        "config: store.postgres_async_connections is now store.async_connections (it serves "
        "MariaDB too); the former name still works"]
    assert json.loads(captured.out)["store"]["async_connections"] == 20


def test_check_reads_the_file_named_by_consumer_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUMER_CONFIG", write(tmp_path, VALID.replace("cli-test", "via-env")))
    assert main(["check"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["kafka"]["group_id"] == "via-env"


def test_check_with_an_invalid_config_exits_2_and_prints_no_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = VALID.replace("  group_id: cli-test\n", "")
    assert main(["check", "--config", write(tmp_path, text)]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert config_lines(captured.err) == ["config: kafka.group_id: required, but not set"]


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_CONFIG
    assert "usage: consumer" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["replay-everything"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_dlq_redrive_help_shows_redrives_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    """`consumer dlq redrive --help` describes redrive (its usage line and its options), not the
    `dlq` group."""
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "redrive", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: consumer dlq redrive" in out
    for option in ("--execute", "--since", "--exception-type", "--partition"):
        assert option in out


def test_files_the_alert_rules_cite_exist() -> None:
    """config/alerts.yml points operators at documentation files; each one is in the repo."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "config" / "alerts.yml").read_text()
    cited = set(re.findall(r"[\w./-]+\.(?:md|py)\b", text))
    assert cited, "the rules cite where their metrics are described"
    missing = sorted(name for name in cited if not (root / name).exists())
    assert missing == []


def test_store_migrate_brings_a_version_1_sqlite_store_to_the_current_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`consumer store migrate` on a real v1 SQLite file: version 3, and the group's key is
    rewritten to its topic's scope; the output names both versions and the count."""
    import sqlite3

    from consumer.dedup import key_function
    from consumer.message import Message
    from consumer.store.base import SQLITE_SCHEMA_VERSION
    from tests.support.store_v1 import SCHEMA_V1

    path = tmp_path / "v1.db"
    event = Message("events", 0, 0, b"", headers=[("idempotency-key", b"e-1")], timestamp=0.0)
    with sqlite3.connect(path) as db:
        for statement in SCHEMA_V1["sqlite"]:
            db.execute(statement)
        db.execute("INSERT INTO consumer_processed_keys VALUES ('cli-test', ?, 'events', 0, 0, 1)",
                   (key_function("header:idempotency-key", {}, "group")(event),))
    config = write(tmp_path, VALID + f"store:\n  url: sqlite:///{path}\n")
    assert main(["store", "migrate", "--config", config]) == EXIT_OK
    out = capsys.readouterr().out
    version = SQLITE_SCHEMA_VERSION
    assert f"from schema version 1 to {version}; 1 processed keys of group cli-test rewritten" \
        in out
    assert f"(schema version {version})" in out
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version, coordinates_keys FROM consumer_schema"
                          ).fetchall() == [(version, "digest")]
        assert db.execute("SELECT key FROM consumer_processed_keys").fetchall() == [
            (key_function("header:idempotency-key", {})(event),)]
    assert main(["store", "migrate", "--config", config]) == EXIT_OK
    assert "migrated" not in capsys.readouterr().out
