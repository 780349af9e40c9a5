"""What a process tells its operators: traces (OpenTelemetry) and structured log lines.

- `tracing`: the process's tracer (a no-op until the composition root installs an SDK
  provider), W3C trace context in Kafka record headers and HTTP headers, and the span
  shapes every hop shares (server, producer, consumer).
- `logs`: the request fields log lines carry (`request_id`, `tenant`, `model`,
  `deployment`, set where a request is handled) and the JSON and text formatters.
- `settings`: `SLUICE_TRACES`, `SLUICE_LOG_FORMAT`, `SLUICE_LOG_LEVEL`.
- `exporters`: the SDK provider for a trace mode (imports the SDK only when tracing is on).

Nothing here reads the environment or configures logging: `sluice.runtime` does, once per
process.
"""
