"""Where spans go: with ``tracing.otlp_endpoint``, an SDK tracer provider exporting over
OTLP/HTTP in batches (``pip install checkpoint-consumer[otel]``); without one, the provider the
process already has (set up by the handler modules or ``opentelemetry-instrument``)."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace

from consumer import __version__
from consumer.errors import ConfigError
from consumer.settings import TracingSettings


def tracer_for(settings: TracingSettings) -> tuple[trace.Tracer, Callable[[], None]]:
    """The tracer for ``settings`` and what flushes its spans at exit (raises ConfigError when
    an endpoint is set and the SDK is not installed)."""
    if settings.otlp_endpoint is None:
        return trace.get_tracer("checkpoint-consumer", __version__), _nothing
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise ConfigError([
            f"tracing.otlp_endpoint is set but the OpenTelemetry SDK cannot be imported "
            f"({error}); install it with `pip install checkpoint-consumer[otel]`, or unset "
            "tracing.otlp_endpoint"]) from None
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    # Global, so spans the handlers start themselves (their own libraries') export too.
    trace.set_tracer_provider(provider)
    return provider.get_tracer("checkpoint-consumer", __version__), provider.shutdown


def _nothing() -> None:
    """No provider of ours: nothing to flush."""
