//! The logs: JSON lines with a request id, and never a token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{ADMIN, start};
use reqwest::{Method, StatusCode};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_json_with_request_ids_and_no_tokens() {
    let captured = Captured::default();
    let sink = captured.clone();
    blindfold_api::json_logs(move || sink.clone()).unwrap();
    let api = start().await;
    let (_, token, _) = api.tenant("st-bart").await;
    let reply = api
        .http
        .get(format!("{}/v1/jobs", api.base))
        .bearer_auth(&token)
        .header("x-request-id", "req-4711")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.headers()["x-request-id"], "req-4711", "the request id is echoed");
    let generated = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(generated.status, StatusCode::OK);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(
        lines.iter().any(|line| line["span"]["request_id"] == "req-4711"),
        "a log line carries the request id: {text}"
    );
    assert!(lines.iter().any(|line| line["fields"]["message"] == "token issued"));
    assert!(!text.contains(&token), "the tenant token is never logged");
    assert!(!text.contains(ADMIN), "the admin token is never logged");
    assert!(!text.contains(&token["bft_".len()..]), "not even without its prefix");
}
