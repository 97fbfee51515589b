"""consumer.kafka.schema_registry: the client's properties for each way to authenticate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from consumer.kafka import schema_registry
from consumer.settings import SchemaRegistrySettings

Properties = Callable[..., dict[str, Any]]


@pytest.fixture
def properties(monkeypatch: pytest.MonkeyPatch) -> Properties:
    """What the registry client is built with for the settings given."""
    def made(**given: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {}
        monkeypatch.setattr(schema_registry, "SchemaRegistryClient", conf.update)
        schema_registry.registry_client(SchemaRegistrySettings(url="http://r", **given))
        return conf

    return made


def test_no_auth_sends_no_credentials_and_never_waits_forever(properties: Properties) -> None:
    assert properties() == {"url": "http://r", "timeout": 10.0, "max.retries": 0}


def test_basic_auth_sends_user_and_password(properties: Properties) -> None:
    assert properties(basic_auth_user="k", basic_auth_password="pw")[
        "basic.auth.user.info"] == "k:pw"


def test_a_bearer_token_is_sent_as_a_static_token_with_its_cluster(
    properties: Properties
) -> None:
    made = properties(bearer_token="t0ken", logical_cluster="lsrc-1", identity_pool_id="pool-1")
    assert {k: v for k, v in made.items() if k.startswith("bearer.")} == {
        "bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": "t0ken",
        "bearer.auth.logical.cluster": "lsrc-1", "bearer.auth.identity.pool.id": "pool-1"}


def test_oauth_client_credentials_let_the_client_fetch_its_tokens(
    properties: Properties
) -> None:
    made = properties(oauth_token_endpoint="https://idp/token", oauth_client_id="c",
                      oauth_client_secret="s", oauth_scope="registry")
    assert {k: v for k, v in made.items() if k.startswith("bearer.")} == {
        "bearer.auth.credentials.source": "OAUTHBEARER",
        "bearer.auth.issuer.endpoint.url": "https://idp/token", "bearer.auth.client.id": "c",
        "bearer.auth.client.secret": "s", "bearer.auth.scope": "registry",
        "bearer.auth.logical.cluster": ""}
