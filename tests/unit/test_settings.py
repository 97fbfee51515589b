"""consumer.settings: file + environment loading, validation messages, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.settings import Settings, load_settings, read_config_file

YAML_CONFIG = """\
kafka:
  bootstrap_servers: "127.0.0.1:1"
  group_id: from-file
  client_id: file-client
routes:
  events:
    handler: handlers.echo:handle
checkpoint:
  every_messages: 10
  every_seconds: 3
"""

TOML_CONFIG = """\
log_level = "DEBUG"

[kafka]
bootstrap_servers = "127.0.0.1:1"
group_id = "from-toml"
poll_batch_size = 7

[routes.events]
handler = "handlers.echo:handle"

[checkpoint]
every_messages = 20
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


# --- reading files -------------------------------------------------------------------------


def test_yaml_file_values_are_loaded_and_the_rest_take_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "c.yaml", YAML_CONFIG))
    assert settings.kafka.bootstrap_servers == "127.0.0.1:1"
    assert settings.kafka.group_id == "from-file"
    assert settings.kafka.client_id == "file-client"
    assert settings.routes["events"].handler == "handlers.echo:handle"
    assert settings.checkpoint.every_messages == 10
    assert settings.checkpoint.every_seconds == 3.0
    # Not in the file: defaults.
    assert settings.kafka.auto_offset_reset == "earliest"
    assert settings.shutdown.grace_seconds == 30.0
    assert settings.handler_path == ["."]


def test_yml_suffix_is_read_as_yaml(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "c.yml", YAML_CONFIG))
    assert settings.kafka.group_id == "from-file"


def test_toml_file_values_are_loaded(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "c.toml", TOML_CONFIG))
    assert settings.kafka.group_id == "from-toml"
    assert settings.kafka.poll_batch_size == 7
    assert settings.routes["events"].handler == "handlers.echo:handle"
    assert settings.checkpoint.every_messages == 20
    assert settings.checkpoint.every_seconds == 5.0
    assert settings.log_level == "DEBUG"


def test_consumer_config_variable_names_the_file_when_no_path_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUMER_CONFIG", str(write(tmp_path, "c.yaml", YAML_CONFIG)))
    assert load_settings().kafka.group_id == "from-file"


# --- environment overrides -----------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUMER_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("CONSUMER_LOG_LEVEL", "ERROR")
    settings = load_settings(write(tmp_path, "c.yaml", YAML_CONFIG))
    assert settings.kafka.group_id == "from-env"
    assert settings.log_level == "ERROR"


def test_nested_sections_merge_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overriding one key of a section keeps the file's other keys of that section."""
    monkeypatch.setenv("CONSUMER_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("CONSUMER_CHECKPOINT__EVERY_SECONDS", "0.25")
    settings = load_settings(write(tmp_path, "c.yaml", YAML_CONFIG))
    assert settings.kafka.group_id == "from-env"
    assert settings.kafka.bootstrap_servers == "127.0.0.1:1"
    assert settings.kafka.client_id == "file-client"
    assert settings.checkpoint.every_seconds == 0.25
    assert settings.checkpoint.every_messages == 10


def test_environment_supplies_a_setting_the_file_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = YAML_CONFIG.replace('  bootstrap_servers: "127.0.0.1:1"\n', "")
    monkeypatch.setenv("CONSUMER_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:2")
    settings = load_settings(write(tmp_path, "c.yaml", text))
    assert settings.kafka.bootstrap_servers == "127.0.0.1:2"
    assert settings.kafka.group_id == "from-file"


def test_environment_value_of_the_wrong_type_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUMER_KAFKA__SESSION_TIMEOUT_MS", "soon")
    problems = problems_of(write(tmp_path, "c.yaml", YAML_CONFIG))
    assert len(problems) == 1
    assert problems[0].startswith("kafka.session_timeout_ms: ")
    assert "'soon'" in problems[0]


def test_malformed_json_in_a_section_variable_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole section given as unparsable JSON in the environment is reported like any other
    problem (ConfigError naming the setting), not as a pydantic-settings traceback."""
    monkeypatch.setenv("CONSUMER_CHECKPOINT", "{not json")
    problems = problems_of(write(tmp_path, "c.yaml", YAML_CONFIG))
    assert len(problems) == 1
    assert "checkpoint" in problems[0]


# --- routes --------------------------------------------------------------------------------


def test_route_shorthand_means_the_same_as_the_handler_mapping(tmp_path: Path) -> None:
    short = YAML_CONFIG.replace(
        "  events:\n    handler: handlers.echo:handle\n", "  events: handlers.echo:handle\n"
    )
    assert "events: handlers.echo:handle" in short
    assert load_settings(write(tmp_path, "short.yaml", short)) == load_settings(
        write(tmp_path, "long.yaml", YAML_CONFIG)
    )


def test_no_route_at_all_is_a_config_error(tmp_path: Path) -> None:
    text = YAML_CONFIG.split("routes:")[0] + "routes: {}\n"
    problems = problems_of(write(tmp_path, "c.yaml", text))
    assert len(problems) == 1
    assert problems[0].startswith("routes: ")


# --- validation messages -------------------------------------------------------------------


def test_every_problem_is_reported_at_once_one_line_each_naming_the_setting(
    tmp_path: Path,
) -> None:
    text = """\
kafka:
  group_id: g
  session_timeout_ms: soon
  colour: blue
routes:
  events: not-an-import-path
checkpoint:
  every_messages: null
  every_seconds: null
"""
    problems = problems_of(write(tmp_path, "c.yaml", text))
    assert len(problems) == 5, problems
    assert all("\n" not in p for p in problems)
    by_setting = {p.split(": ", 1)[0]: p for p in problems}
    assert set(by_setting) == {
        "kafka.bootstrap_servers",
        "kafka.session_timeout_ms",
        "kafka.colour",
        "routes.events.handler",
        "checkpoint",
    }
    assert by_setting["kafka.bootstrap_servers"].endswith("required, but not set")
    assert by_setting["kafka.colour"].endswith("unknown setting")
    assert "(got 'soon')" in by_setting["kafka.session_timeout_ms"]
    assert "'not-an-import-path'" in by_setting["routes.events.handler"]
    assert "module:function" in by_setting["routes.events.handler"]
    assert "both off" in by_setting["checkpoint"]


def test_config_error_message_lists_each_problem_on_its_own_line() -> None:
    error = ConfigError(["a: one", "b: two"])
    assert str(error).splitlines() == ["invalid configuration:", "  a: one", "  b: two"]


def test_unknown_top_level_key_is_reported(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "c.yaml", YAML_CONFIG + "colour: blue\n"))
    assert problems == ["colour: unknown setting"]


def test_one_checkpoint_trigger_may_be_off(tmp_path: Path) -> None:
    text = YAML_CONFIG.replace("every_seconds: 3", "every_seconds: null")
    settings = load_settings(write(tmp_path, "c.yaml", text))
    assert settings.checkpoint.every_seconds is None
    assert settings.checkpoint.every_messages == 10


@pytest.mark.parametrize(
    "handler", ["handlers.echo", "handlers.echo:", ":handle", "handlers echo:handle", "a:b:c"]
)
def test_handler_not_of_the_form_module_colon_function_is_refused(
    tmp_path: Path, handler: str
) -> None:
    text = YAML_CONFIG.replace("handler: handlers.echo:handle", f"handler: {handler!r}")
    problems = problems_of(write(tmp_path, "c.yaml", text))
    assert len(problems) == 1
    assert problems[0].startswith("routes.events.handler: ")


def test_empty_yaml_file_reports_the_required_sections(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "c.yaml", ""))
    assert sorted(problems) == [
        "kafka: required, but not set",
        "routes: required, but not set",
    ]


# --- librdkafka pass-through and secrets ---------------------------------------------------

LIBRDKAFKA_CONFIG = YAML_CONFIG.replace(
    "  client_id: file-client\n",
    """\
  client_id: file-client
  librdkafka:
    security.protocol: SASL_SSL
    sasl.password: hunter2
    ssl.key.password: swordfish
    fetch.min.bytes: 10
    enable.partition.eof: true
    socket.timeout.s: 0.5
""",
)


def test_librdkafka_values_are_passed_through_as_strings(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "c.yaml", LIBRDKAFKA_CONFIG))
    values = {k: v.get_secret_value() for k, v in settings.kafka.librdkafka.items()}
    assert values == {
        "security.protocol": "SASL_SSL",
        "sasl.password": "hunter2",
        "ssl.key.password": "swordfish",
        "fetch.min.bytes": "10",
        "enable.partition.eof": "true",
        "socket.timeout.s": "0.5",
    }


def test_masked_replaces_password_values_with_stars_and_keeps_the_rest(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "c.yaml", LIBRDKAFKA_CONFIG))
    masked = settings.masked()
    assert masked["kafka"]["librdkafka"] == {
        "security.protocol": "SASL_SSL",
        "sasl.password": "***",
        "ssl.key.password": "***",
        "fetch.min.bytes": "10",
        "enable.partition.eof": "true",
        "socket.timeout.s": "0.5",
    }
    assert masked["kafka"]["group_id"] == "from-file"
    dumped = json.dumps(masked)
    assert "hunter2" not in dumped
    assert "swordfish" not in dumped


def test_repr_of_settings_never_shows_a_secret(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "c.yaml", LIBRDKAFKA_CONFIG))
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)


@pytest.mark.parametrize("owned", ["enable.auto.commit", "group.id"])
def test_librdkafka_keys_the_framework_owns_are_refused(tmp_path: Path, owned: str) -> None:
    text = YAML_CONFIG.replace(
        "  client_id: file-client\n", f"  client_id: file-client\n  librdkafka:\n    {owned}: x\n"
    )
    problems = problems_of(write(tmp_path, "c.yaml", text))
    assert len(problems) == 1
    assert problems[0].startswith("kafka.librdkafka: ")
    assert owned in problems[0]


# --- unusable files ------------------------------------------------------------------------


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    problems = problems_of(path)
    assert len(problems) == 1
    assert str(path) in problems[0]
    assert "cannot read" in problems[0]


def test_directory_instead_of_a_file_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "c.yaml"
    folder.mkdir()
    problems = problems_of(folder)
    assert len(problems) == 1
    assert "cannot read" in problems[0]


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "c.yaml", "kafka: [unclosed\n"))
    assert len(problems) == 1
    assert "not valid yaml" in problems[0]


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "c.toml", "[kafka\n"))
    assert len(problems) == 1
    assert "not valid toml" in problems[0]


@pytest.mark.parametrize("name", ["c.json", "c.ini", "config"])
def test_unsupported_suffix_is_a_config_error(tmp_path: Path, name: str) -> None:
    problems = problems_of(write(tmp_path, name, "{}"))
    assert len(problems) == 1
    assert ".yaml, .yml or .toml" in problems[0]


def test_top_level_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_config_file(write(tmp_path, "c.yaml", "- a\n- b\n"))
    assert len(caught.value.problems) == 1
    assert "must be a mapping" in caught.value.problems[0]


def test_file_that_is_not_utf8_text_is_a_config_error(tmp_path: Path) -> None:
    """Binary garbage in the config file is reported as a ConfigError, not a traceback."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"kafka:\n  group_id: \xff\xfe\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert str(path) in problems[0]


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "c.yaml", YAML_CONFIG))
    with pytest.raises(ValueError, match="frozen"):
        settings.log_level = "DEBUG"
    assert isinstance(settings, Settings)


def test_concurrency_and_ordering_default_to_todays_behaviour() -> None:
    from consumer.settings import RouteSettings
    route = RouteSettings(handler="h:f")
    assert (route.concurrency, route.ordering) == (1, "key")


def test_a_sqlite_store_with_a_concurrent_route_is_refused_naming_the_route() -> None:
    """SQLite takes one writer: concurrent transactions per message would queue on its lock."""
    import pytest
    from pydantic import ValidationError

    from consumer.settings import Settings
    with pytest.raises(ValidationError,
                       match=r"routes\.orders\.concurrency \(8\).*SQLite takes one writer"):
        Settings.model_validate({
            "kafka": {"bootstrap_servers": "b:9092", "group_id": "g"},
            "routes": {"orders": {"handler": "h:f", "concurrency": 8}},
            "store": {"url": "sqlite:///x.db"}})


def test_a_postgresql_store_takes_concurrent_routes() -> None:
    from consumer.settings import Settings
    settings = Settings.model_validate({
        "kafka": {"bootstrap_servers": "b:9092", "group_id": "g"},
        "routes": {"orders": {"handler": "h:f", "concurrency": 8}},
        "store": {"url": "postgresql://u@h/db"}})
    assert settings.routes["orders"].concurrency == 8


def test_async_connections_is_read_by_its_former_name_too_but_not_by_both() -> None:
    def store(**given: object) -> dict[str, object]:
        return {"kafka": {"bootstrap_servers": "b:9092", "group_id": "g"},
                "routes": {"orders": "h:f"}, "store": {"url": "postgresql://u@h/db", **given}}

    assert Settings.model_validate(store()).store.async_connections == 32
    assert Settings.model_validate(store()).store.former_names() == []
    named = Settings.model_validate(store(async_connections=12)).store
    assert (named.async_connections, named.former_names()) == (12, [])
    former = Settings.model_validate(store(postgres_async_connections=20)).store
    assert former.async_connections == 20
    assert former.former_names() == [
        "store.postgres_async_connections is now store.async_connections (it serves MariaDB "
        "too); the former name still works"]
    with pytest.raises(ValueError, match=r"store\.async_connections and "
                                         r"store\.postgres_async_connections .* both set"):
        Settings.model_validate(store(async_connections=12, postgres_async_connections=20))


def test_the_former_name_of_async_connections_comes_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(YAML_CONFIG + "store:\n  url: postgresql://u@h/db\n")
    monkeypatch.setenv("CONSUMER_STORE__POSTGRES_ASYNC_CONNECTIONS", "7")
    assert load_settings(path).store.async_connections == 7
    monkeypatch.setenv("CONSUMER_STORE__ASYNC_CONNECTIONS", "9")
    with pytest.raises(ConfigError, match="both set"):
        load_settings(path)


def test_the_buffer_defaults_to_forty_per_message_in_flight_and_at_least_ten_thousand() -> None:
    def buffered(kafka: dict[str, object], *concurrency: int) -> int:
        return Settings.model_validate({
            "kafka": {"bootstrap_servers": "b:9092", "group_id": "g", **kafka},
            "routes": {f"t{i}": {"handler": "h:f", "concurrency": c}
                       for i, c in enumerate(concurrency)},
            "store": {"url": "none"}}).buffered_messages()

    assert buffered({}, 1) == 10_000
    assert buffered({}, 100, 1) == 10_000
    assert buffered({}, 1000) == 40_000
    assert buffered({}, 600, 400, 1) == 40_000  # the routes' messages in flight together
    assert buffered({"max_buffered_messages": 500}, 1000) == 500  # a set value wins


# --- secrets from files (kafka.sasl_password_file, store.url_file) ---------------------------

SECRET_FILES_CONFIG = """\
kafka:
  bootstrap_servers: "127.0.0.1:1"
  group_id: g
  librdkafka:
    security.protocol: SASL_SSL
    sasl.username: svc
routes:
  events: handlers.echo:handle
"""


def test_sasl_password_and_store_url_come_from_files_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variables the Kubernetes manifests set: one trailing newline is not part of it."""
    write(tmp_path, "sasl", "Pa55-from-file\n")
    write(tmp_path, "dsn", "postgresql://svc:Db-pa55@db.example/app\n")
    monkeypatch.setenv("CONSUMER_KAFKA__SASL_PASSWORD_FILE", str(tmp_path / "sasl"))
    monkeypatch.setenv("CONSUMER_STORE__URL_FILE", str(tmp_path / "dsn"))
    settings = load_settings(write(tmp_path, "c.yaml", SECRET_FILES_CONFIG))
    assert settings.kafka.librdkafka["sasl.password"].get_secret_value() == "Pa55-from-file"
    assert settings.kafka.librdkafka["sasl.username"].get_secret_value() == "svc"
    assert settings.store.url.get_secret_value() == "postgresql://svc:Db-pa55@db.example/app"
    printed = json.dumps(settings.masked())
    assert "Pa55-from-file" not in printed and "Db-pa55" not in printed
    assert str(tmp_path / "sasl") in printed  # where it came from is not a secret


def test_secret_files_given_in_the_config_file(tmp_path: Path) -> None:
    write(tmp_path, "sasl", "from-yaml")
    text = SECRET_FILES_CONFIG.replace(
        "  group_id: g\n", f"  group_id: g\n  sasl_password_file: {tmp_path / 'sasl'}\n")
    settings = load_settings(write(tmp_path, "c.yaml", text))
    assert settings.kafka.librdkafka["sasl.password"].get_secret_value() == "from-yaml"


def test_a_missing_secret_file_is_a_config_error_naming_setting_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUMER_KAFKA__SASL_PASSWORD_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("CONSUMER_STORE__URL_FILE", str(tmp_path / "also-absent"))
    problems = problems_of(write(tmp_path, "c.yaml", SECRET_FILES_CONFIG))
    assert len(problems) == 2, problems
    assert any("kafka.sasl_password_file: cannot read" in p and "absent" in p for p in problems)
    assert any("store.url_file: cannot read" in p and "also-absent" in p for p in problems)


def test_an_empty_secret_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUMER_KAFKA__SASL_PASSWORD_FILE", str(write(tmp_path, "s", "\n")))
    problems = problems_of(write(tmp_path, "c.yaml", SECRET_FILES_CONFIG))
    assert problems == [f"kafka: kafka.sasl_password_file: {tmp_path / 's'} is empty; the "
                        "secret is missing from the file (an empty Kubernetes Secret key?)"]


def test_the_password_and_its_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUMER_KAFKA__SASL_PASSWORD_FILE", str(write(tmp_path, "s", "a")))
    text = SECRET_FILES_CONFIG.replace("    sasl.username: svc\n",
                                       "    sasl.username: svc\n    sasl.password: inline\n")
    problems = problems_of(write(tmp_path, "c.yaml", text))
    assert len(problems) == 1
    assert "kafka.librdkafka.sasl.password and kafka.sasl_password_file are both set" in problems[0]
    assert "inline" not in problems[0]


def test_the_store_url_and_its_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUMER_STORE__URL_FILE", str(write(tmp_path, "d", "sqlite:///a.db")))
    monkeypatch.setenv("CONSUMER_STORE__URL", "sqlite:///b.db")
    problems = problems_of(write(tmp_path, "c.yaml", SECRET_FILES_CONFIG))
    assert len(problems) == 1
    assert "store.url and store.url_file are both set" in problems[0]


def test_a_url_file_holding_a_bare_password_is_refused_without_printing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password mounted where the URL belongs: the error must not repeat it."""
    monkeypatch.setenv("CONSUMER_STORE__URL_FILE", str(write(tmp_path, "d", "Hunter2-secret")))
    problems = problems_of(write(tmp_path, "c.yaml", SECRET_FILES_CONFIG))
    assert len(problems) == 1 and "is not a store" in problems[0]
    assert "Hunter2" not in problems[0]


def test_a_password_in_the_url_query_is_masked() -> None:
    settings = Settings(kafka={"bootstrap_servers": "b:1", "group_id": "g"},
                        routes={"t": "m:f"},
                        store={"url": "postgresql://svc@db/app?sslmode=require&password=Qp4ss&x=1"})
    assert settings.store.masked_url() == (
        "postgresql://svc@db/app?sslmode=require&password=***&x=1")
    assert "Qp4ss" not in json.dumps(settings.masked())


# --- formats and the schema registry -------------------------------------------------------


def _format_settings(routes: dict[str, object], **extra: object) -> Settings:
    return Settings.model_validate({"kafka": {"bootstrap_servers": "b:1", "group_id": "g"},
                                    "routes": routes, **extra})


def test_a_route_names_a_known_format_or_a_decoders_import_path() -> None:
    settings = _format_settings({"a": {"handler": "h:f", "format": "avro", "key_format": "m:d"}},
                                schema_registry={"url": "http://r:8081"})
    assert (settings.routes["a"].format, settings.routes["a"].key_format) == ("avro", "m:d")
    with pytest.raises(ValueError, match="'xml' is not one of bytes, text, json, avro"):
        _format_settings({"a": {"handler": "h:f", "format": "xml"}})


def test_registry_formats_need_a_schema_registry_naming_each_route() -> None:
    with pytest.raises(ValueError, match=r"routes.a \(protobuf, avro\) read their schemas"):
        _format_settings({"a": {"handler": "h:f", "format": "protobuf", "key_format": "avro",
                                "protobuf_message": "m:Order"},
                          "b": {"handler": "h:f", "format": "json"}})


def test_protobuf_and_its_message_class_go_together() -> None:
    registry = {"url": "http://r:8081"}
    with pytest.raises(ValueError, match="protobuf_message goes with format: protobuf"):
        _format_settings({"a": {"handler": "h:f", "format": "protobuf"}},
                         schema_registry=registry)
    with pytest.raises(ValueError, match="key_protobuf_message goes with key_format"):
        _format_settings({"a": {"handler": "h:f", "key_protobuf_message": "m:K"}},
                         schema_registry=registry)
    with pytest.raises(ValueError, match="'Order' is not an import path"):
        _format_settings({"a": {"handler": "h:f", "format": "protobuf",
                                "protobuf_message": "Order"}}, schema_registry=registry)


def test_registry_password_comes_from_its_file_and_is_masked(tmp_path: Path) -> None:
    secret = write(tmp_path, "password", "s3cret-pw\n")
    settings = _format_settings({"a": "h:f"}, schema_registry={
        "url": "http://r:8081", "basic_auth_user": "key",
        "basic_auth_password_file": str(secret)})
    registry = settings.schema_registry
    assert registry is not None and registry.basic_auth_password is not None
    assert registry.basic_auth_password.get_secret_value() == "s3cret-pw"
    assert registry.timeout_seconds == 10.0  # never the client's wait-forever default
    assert "s3cret-pw" not in json.dumps(settings.masked())


def test_registry_auth_problems_are_config_errors(tmp_path: Path) -> None:
    secret = write(tmp_path, "password", "pw")
    for section, match in (
        ({"basic_auth_user": "key"}, "basic_auth_user and basic_auth_password"),
        ({"basic_auth_user": "a:b", "basic_auth_password": "pw"}, "must not contain ':'"),
        ({"basic_auth_user": "k", "basic_auth_password": "pw",
          "basic_auth_password_file": str(secret)}, "are both set"),
        ({"timeout_seconds": 0}, "greater than 0"),
        ({"bearer_token": "t", "bearer_token_file": str(secret)}, "are both set"),
        ({"basic_auth_user": "k", "basic_auth_password": "pw", "bearer_token": "t"},
         "basic auth and bearer_token are both set"),
        ({**OAUTH, "bearer_token": "t"}, "bearer_token and OAuth client credentials are both"),
        ({"oauth_client_id": "c", "oauth_client_secret": "s"},
         "missing: oauth_token_endpoint, oauth_scope"),
        ({**OAUTH, "oauth_client_secret_file": str(secret)}, "are both set"),
    ):
        with pytest.raises(ValueError, match=match):
            _format_settings({"a": "h:f"}, schema_registry={"url": "http://r", **section})


OAUTH = {"oauth_token_endpoint": "https://idp/token", "oauth_client_id": "c",
         "oauth_client_secret": "s3cret-client", "oauth_scope": "registry"}


def test_registry_bearer_token_and_oauth_secrets_come_from_files_and_are_masked(
    tmp_path: Path
) -> None:
    token = write(tmp_path, "token", "t0ken-value\n")
    client_secret = write(tmp_path, "client-secret", "s3cret-client\n")
    by_token = _format_settings({"a": "h:f"}, schema_registry={
        "url": "http://r", "bearer_token_file": str(token), "logical_cluster": "lsrc-1"})
    by_oauth = _format_settings({"a": "h:f"}, schema_registry={
        "url": "http://r", **{k: v for k, v in OAUTH.items() if k != "oauth_client_secret"},
        "oauth_client_secret_file": str(client_secret)})
    registry, oauth = by_token.schema_registry, by_oauth.schema_registry
    assert registry is not None and oauth is not None
    assert registry.bearer_token is not None and oauth.oauth_client_secret is not None
    assert registry.bearer_token.get_secret_value() == "t0ken-value"
    assert oauth.oauth_client_secret.get_secret_value() == "s3cret-client"
    printed = json.dumps([by_token.masked(), by_oauth.masked()])
    assert "t0ken-value" not in printed and "s3cret-client" not in printed
