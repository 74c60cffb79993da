//! The HTTP client: requests to one agent as its operator, the SDK's and ~okeanos's forms of them,
//! the answers as status and JSON, and raw bytes for what no client library would send.

use std::time::Duration;

use serde_json::{Value, json};

use super::{NODE_ID, Workload, app_id};

/// An HTTP client for one agent, authenticated as its operator.
#[derive(Debug, Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

/// A status code and the JSON body (Null when the body is empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("request to the agent failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is not JSON: {text:?}"))
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    pub fn authed(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Registers app `id` for container `container`.
    pub async fn register(&self, id: &str, container: &str) -> Answer {
        self.register_body(id, app_body(id, container)).await
    }

    /// A running workload container (`workload MODE`) registered as a fresh app.
    pub async fn running_app(&self, mode: &str) -> (Workload, String) {
        let w = Workload::start(mode).await;
        let id = app_id();
        self.register(&id, &w.name).await;
        (w, id)
    }

    pub async fn register_body(&self, id: &str, body: Value) -> Answer {
        let a = self
            .send(
                self.authed(reqwest::Method::PUT, &format!("/v1/apps/{id}"))
                    .json(&body),
            )
            .await;
        assert!(matches!(a.status, 200 | 201), "register {id}: {a:?}");
        a
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.authed(reqwest::Method::GET, path)).await
    }

    /// `POST /v1/apps/{id}/stop` exactly as the CamposCloud SDK sends it: JSON content type, no body.
    pub async fn stop(&self, id: &str) -> Answer {
        self.stop_query(id, "").await
    }

    pub async fn stop_query(&self, id: &str, query: &str) -> Answer {
        self.operate(id, "stop", query).await
    }

    pub async fn stop_body(&self, id: &str, body: Value) -> Answer {
        self.send(
            self.authed(reqwest::Method::POST, &format!("/v1/apps/{id}/stop"))
                .json(&body),
        )
        .await
    }

    /// `POST /v1/apps/{id}/start` exactly as the CamposCloud SDK sends it: JSON content type, no body.
    pub async fn start(&self, id: &str) -> Answer {
        self.operate(id, "start", "").await
    }

    /// `POST /v1/apps/{id}/restart` exactly as the CamposCloud SDK sends it.
    pub async fn restart(&self, id: &str) -> Answer {
        self.operate(id, "restart", "").await
    }

    /// `DELETE /v1/apps/{id}`.
    pub async fn delete(&self, id: &str) -> Answer {
        self.send(self.authed(reqwest::Method::DELETE, &format!("/v1/apps/{id}")))
            .await
    }

    /// The `/metrics` text, read as the operator.
    pub async fn metrics_text(&self) -> String {
        self.authed(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the `/metrics` line that starts with `series` (name and labels).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    /// `POST /api/apps/{id}/{verb}/` as ~okeanos clients send it (`verb` is stop or start), with
    /// this node's instance id and the `Token` scheme.
    pub async fn okeanos(&self, id: &str, verb: &str) -> Answer {
        self.send(
            self.http
                .post(self.url(&format!(
                    "/api/apps/{id}/{verb}/?lambda_instance_id={NODE_ID}"
                )))
                .header("Authorization", format!("Token {}", self.token)),
        )
        .await
    }

    /// `POST /v1/apps/{id}/{verb}{query}` as the SDK sends it (`verb` is stop, start or restart).
    pub async fn operate(&self, id: &str, verb: &str, query: &str) -> Answer {
        self.send(
            self.authed(
                reqwest::Method::POST,
                &format!("/v1/apps/{id}/{verb}{query}"),
            )
            .header("Content-Type", "application/json"),
        )
        .await
    }
}

/// A registration body in the CamposCloud record shape.
pub fn app_body(id: &str, container: &str) -> Value {
    json!({
        "_id": id,
        "containerId": container,
        "teamId": null,
        "restartRequired": false,
        "userId": "60c72b2f9b1e8d001c8e4f3a",
        "name": format!("app {id}"),
        "allocatedMemoryMB": 64,
        "allocatedVCpu": 1,
        "containerImage": "node-agent-test-workload",
        "exposedViaWeb": false,
        "internalPort": 3000,
        "assignedSubdomain": null,
        "startupCommand": "/workload",
        "installDependenciesCmd": null,
        "runtimeEnvironment": "static",
        "autoRestartEnabled": false,
        "status": "active",
        "createdAt": "2025-07-19T00:02:54.455Z",
        "githubDeploys": [],
        "externalPort": null,
        "repository": null,
        "environmentVariables": [{"key": "API_PORT", "value": "3005", "_id": "e1"}],
    })
}

/// The record of `id` as stored, from the list, which does not look at the container.
pub async fn stored(client: &Client, id: &str) -> Value {
    let list = client.get("/v1/apps?limit=500").await;
    assert_eq!(list.status, 200, "{list:?}");
    list.body["applications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not listed: {list:?}"))
}

/// Sends raw bytes to `base` (http://host:port) and reads the answer until the server closes;
/// returns the status and the body.
pub async fn raw_http(base: &str, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
