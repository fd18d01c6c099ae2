//! OpenTelemetry end to end: a real `ecdysis serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointed
//! at a fake collector (OTLP/HTTP, protobuf) receives the spans of an event, of the model call
//! (GenAI attributes: model, tokens), of the tool call and of the delivery, in one trace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use common::server::Server;
use ecdysis_testkit::llm::{FakeLlm, Reply};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

/// A collector that keeps every span it is sent, with the content types it saw.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start(&self) -> String {
        let me = self.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let me = me.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    for resource in request.resource_spans {
                        if let Some(resource) = &resource.resource {
                            for attribute in &resource.attributes {
                                if attribute.key == "service.name"
                                    && let Some(AnyValue::StringValue(name)) =
                                        attribute.value.as_ref().and_then(|v| v.value.clone())
                                {
                                    me.service_names.lock().unwrap().push(name);
                                }
                            }
                        }
                        for scope in resource.scope_spans {
                            me.spans.lock().unwrap().extend(scope.spans);
                        }
                    }
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn named(&self, name: &str) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.clone())
}

#[tokio::test]
async fn spans_of_an_event_its_model_and_tool_calls_and_its_delivery_reach_the_collector() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let llm = FakeLlm::start().await.unwrap();
    llm.push(Reply::tool(
        "memory_save",
        json!({ "text": "the deploy window is Tuesday" }),
    ));
    llm.push(Reply::text("Saved it."));
    let dir = tempfile::tempdir().unwrap();
    let llm_url = llm.anthropic_base_url();
    let server = Server::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "ecdysis-test"),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", llm_url.as_str()),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
        ],
    )
    .await;
    let answer = server.ask("otel-room", "remember the deploy window").await;
    assert!(answer.contains("Saved it."), "{answer}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while collector.named("deliver").is_empty()
        || collector.named("chat claude-test").len() < 2
        || collector.named("event").is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "spans seen: {:?}\n{}",
            collector
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let event = collector.named("event").remove(0);
    let chats = collector.named("chat claude-test");
    let tool = collector.named("execute_tool memory_save").remove(0);
    let deliver = collector.named("deliver").remove(0);
    for span in chats.iter().chain([&tool, &deliver]) {
        assert_eq!(
            span.trace_id, event.trace_id,
            "{} is in the event's trace",
            span.name
        );
    }
    for chat in &chats {
        assert_eq!(
            chat.parent_span_id, event.span_id,
            "a model call is the event's child"
        );
        assert_eq!(
            attribute(chat, "gen_ai.operation.name"),
            Some(AnyValue::StringValue("chat".into()))
        );
        assert_eq!(
            attribute(chat, "gen_ai.request.model"),
            Some(AnyValue::StringValue("claude-test".into()))
        );
        assert_eq!(
            attribute(chat, "gen_ai.provider.name"),
            Some(AnyValue::StringValue("anthropic".into()))
        );
        match attribute(chat, "gen_ai.usage.input_tokens") {
            Some(AnyValue::IntValue(n)) => assert!(n > 0, "input tokens {n}"),
            other => panic!("no input tokens: {other:?}"),
        }
        assert!(matches!(
            attribute(chat, "gen_ai.usage.output_tokens"),
            Some(AnyValue::IntValue(_))
        ));
    }
    assert_eq!(
        attribute(&tool, "gen_ai.tool.name"),
        Some(AnyValue::StringValue("memory_save".into()))
    );
    assert_eq!(
        attribute(&deliver, "platform"),
        Some(AnyValue::StringValue("web".into()))
    );
    assert!(
        collector
            .service_names
            .lock()
            .unwrap()
            .iter()
            .all(|n| n == "ecdysis-test")
    );
}
