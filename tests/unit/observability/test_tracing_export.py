"""consumer.observability.tracing_export: with an OTLP endpoint, an SDK provider exporting
there (set global, flushed at close); without one, the process's own provider; off unless
``tracing.enabled`` (no tracer at all)."""

from __future__ import annotations

import builtins
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider

from consumer.errors import ConfigError
from consumer.observability import tracing_export
from consumer.observability.tracing_export import tracer_for
from consumer.observability.wiring import build_observability
from consumer.settings import TracingSettings
from tests.support.wiring import loop_settings


def test_an_endpoint_exports_over_otlp_http_with_the_service_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[Any] = []
    monkeypatch.setattr(tracing_export.trace, "set_tracer_provider", installed.append)
    tracer, flush = tracer_for(TracingSettings(
        enabled=True, service_name="payments", otlp_endpoint="http://127.0.0.1:1/v1/traces"))
    [provider] = installed
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "payments"
    processor = provider._active_span_processor._span_processors[0]  # the batch processor
    exporter = processor._batch_processor._exporter
    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == "http://127.0.0.1:1/v1/traces"
    assert flush == provider.shutdown
    assert tracer.start_span("s").is_recording()
    provider.shutdown()


def test_without_an_endpoint_spans_go_to_the_processs_own_provider(
        monkeypatch: pytest.MonkeyPatch) -> None:
    own = TracerProvider()
    monkeypatch.setattr(tracing_export.trace, "get_tracer",
                        lambda name, version: own.get_tracer(name, version))
    tracer, flush = tracer_for(TracingSettings(enabled=True))
    span = tracer.start_span("s")
    assert span.is_recording()  # the process's SDK provider, not a no-op
    flush()  # nothing of ours to flush: the provider is the process's
    assert own.get_tracer("x").start_span("t").is_recording()  # still running


def test_an_endpoint_without_the_sdk_is_a_config_error_that_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_sdk(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry.sdk") or name.startswith("opentelemetry.exporter"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sdk)
    with pytest.raises(ConfigError, match=r"checkpoint-consumer\[otel\]"):
        tracer_for(TracingSettings(enabled=True, otlp_endpoint="http://127.0.0.1:1/v1/traces"))


def test_tracing_off_gives_the_loop_no_tracer() -> None:
    assert build_observability(loop_settings(["t"])).tracer is None
    settings = loop_settings(["t"]).model_copy(
        update={"tracing": TracingSettings(enabled=True)})
    assert build_observability(settings).tracer is not None
