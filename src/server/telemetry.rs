//! OpenTelemetry traces over OTLP/HTTP (protobuf), off by default: with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, the `tracing`
//! spans go to that collector as well as to the log: one per event (`event`), model call
//! (`chat <model>`, with the GenAI semantic conventions' model and token attributes), tool call
//! (`execute_tool <name>`) and delivery (`deliver`). The exporter reads the standard `OTEL_*`
//! variables (headers, timeout, `OTEL_SERVICE_NAME`, `OTEL_BSP_*`); spans are sent in batches
//! from a thread of their own, so a slow collector never holds up an answer.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// The running exporter; [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Whether the environment names a collector.
pub fn configured(env: &dyn Fn(&str) -> Option<String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| env(name).is_some_and(|v| !v.trim().is_empty()))
}

impl Telemetry {
    /// The exporter of the `OTEL_*` environment, or `None` when no collector is named. Call it
    /// outside the async runtime (the exporter's HTTP client runs its own).
    pub fn from_env() -> Result<Option<Self>, String> {
        if !configured(&|name| std::env::var(name).ok()) {
            return Ok(None);
        }
        // The exporter's HTTP client takes rustls's process-wide provider: ring, as everywhere
        // else in ecdysis (an error only means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("the OTLP exporter: {e}"))?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "ecdysis".into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service)
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        Ok(Some(Self { provider }))
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("ecdysis"))
    }

    /// Send the spans still waiting and stop the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("ecdysis: the OTLP exporter did not shut down cleanly: {e}");
        }
    }
}
