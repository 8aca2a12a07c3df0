//! A mocked Kubernetes API server at the HTTP level (the kube-rs tower-test pattern): a
//! [`kube::Client`] whose requests arrive at an [`ApiServer`], where a test asserts each one
//! (method, path, content type), gets it back as a [`Call`] (query, JSON body) and answers with
//! canned responses: JSON objects, `Status` failures, lists.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{Handle, SendResponse};

/// Content type of a server-side apply PATCH.
pub const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// The tower-test handle the server side holds.
pub type MockHandle = Handle<Request<Body>, Response<Body>>;

/// A client (default namespace `default`) and the mocked API server it talks to.
pub fn pair() -> (kube::Client, ApiServer) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(svc, "default"), ApiServer { handle })
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    /// The raw query string (kube-rs writes `&a=b&c=d`); empty when there is none.
    pub query: String,
    pub content_type: Option<String>,
    /// The body as JSON; `Null` when empty.
    pub body: Value,
}

impl Call {
    /// The query's parameters (undecoded).
    pub fn params(&self) -> BTreeMap<&str, &str> {
        query(&self.query)
    }

    async fn read(req: Request<Body>) -> Self {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Call {
            method,
            path,
            query,
            content_type,
            body,
        }
    }
}

/// The server side of [`pair`].
#[derive(Debug)]
pub struct ApiServer {
    handle: MockHandle,
}

impl ApiServer {
    /// The next raw request, for answers the helpers below do not cover (deferred replies,
    /// streamed watch bodies). None when the client is gone.
    pub async fn next_request(&mut self) -> Option<(Request<Body>, SendResponse<Response<Body>>)> {
        self.handle.next_request().await
    }

    /// Answers the next request, whatever it is, with `reply(&call)`.
    pub async fn reply_next(&mut self, reply: impl FnOnce(&Call) -> Response<Body>) -> Call {
        let (req, send) = self
            .handle
            .next_request()
            .await
            .expect("expected a request");
        let call = Call::read(req).await;
        send.send_response(reply(&call));
        call
    }

    /// Answers the next request, asserting its method and path first, with `reply(&call)`
    /// (which may assert more before the client sees an answer).
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        reply: impl FnOnce(&Call) -> Response<Body>,
    ) -> Call {
        let (req, send) = self
            .handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}"));
        assert_eq!(req.method(), method, "{}", req.uri());
        assert_eq!(req.uri().path(), path);
        let call = Call::read(req).await;
        send.send_response(reply(&call));
        call
    }

    /// Answers a GET of `path` with `reply`.
    pub async fn expect_get(&mut self, path: &str, reply: Response<Body>) -> Call {
        self.expect(Method::GET, path, |_| reply).await
    }

    /// Answers a GET of `{collection}/{name}` with 404, then the LIST of `collection` with an
    /// empty `{kind}List` (a client looking an object up and then its neighbours).
    pub async fn expect_absent(
        &mut self,
        collection: &str,
        name: &str,
        api_version: &str,
        kind: &str,
    ) {
        self.expect_get(&format!("{collection}/{name}"), not_found(name))
            .await;
        let empty = list(api_version, kind, "1", vec![]);
        self.expect_get(collection, ok(&empty)).await;
    }

    /// Answers a server-side apply PATCH of `path` (apply content type asserted) by echoing
    /// the object sent.
    pub async fn expect_apply(&mut self, path: &str) -> Call {
        self.expect_apply_with(path, |c| ok(&c.body)).await
    }

    /// Answers a server-side apply PATCH of `path` (apply content type asserted) with
    /// `reply(&call)`.
    pub async fn expect_apply_with(
        &mut self,
        path: &str,
        reply: impl FnOnce(&Call) -> Response<Body>,
    ) -> Call {
        self.expect(Method::PATCH, path, |c| {
            assert_eq!(c.content_type.as_deref(), Some(APPLY_PATCH), "{}", c.path);
            reply(c)
        })
        .await
    }

    /// Asserts that no request arrives within `within` (a closed channel counts as none);
    /// `what` says why one would be wrong.
    pub async fn expect_no_request(&mut self, within: Duration, what: &str) {
        let next = tokio::time::timeout(within, self.handle.next_request()).await;
        if let Ok(Some((req, _))) = next {
            panic!("{what}: {} {}", req.method(), req.uri());
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

/// A 200 JSON response.
pub fn ok(v: &Value) -> Response<Body> {
    json_response(StatusCode::OK, v)
}

/// A Kubernetes `Status` failure.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// The API server's 404 for object `name`.
pub fn not_found(name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("\"{name}\" not found"),
    )
}

/// A `{kind}List` of `items` at resource version `rv`.
pub fn list(api_version: &str, kind: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": rv}, "items": items})
}

/// Query parameters of a request (kube-rs writes `?&a=b&c=d`; values stay encoded).
pub fn query(q: &str) -> BTreeMap<&str, &str> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};
    use kube::Api;

    #[test]
    fn parses_kube_rs_queries() {
        assert_eq!(
            query("&fieldManager=meshtune&force=true&x"),
            [("fieldManager", "meshtune"), ("force", "true"), ("x", "")].into()
        );
        assert!(query("").is_empty());
    }

    #[tokio::test]
    async fn asserts_records_and_answers_requests() {
        let (client, mut server) = pair();
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        let served = tokio::spawn(async move {
            let get = server
                .expect_get("/api/v1/namespaces/ns/configmaps/a", not_found("a"))
                .await;
            assert_eq!(get.body, Value::Null);
            let list_call = server
                .expect_get(
                    "/api/v1/namespaces/ns/configmaps",
                    ok(&list("v1", "ConfigMap", "5", vec![])),
                )
                .await;
            let apply = server
                .expect_apply("/api/v1/namespaces/ns/configmaps/b")
                .await;
            server
                .expect_no_request(Duration::from_millis(50), "nothing after the apply")
                .await;
            (list_call, apply)
        });
        let e = api.get("a").await.unwrap_err();
        assert!(e.to_string().contains("\"a\" not found"), "{e}");
        assert!(api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty());
        let cm: ConfigMap = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}),
        )
        .unwrap();
        let echoed = api
            .patch("b", &PatchParams::apply("me").force(), &Patch::Apply(&cm))
            .await
            .unwrap();
        assert_eq!(echoed.metadata.name.as_deref(), Some("b"));
        let (list_call, apply) = served.await.unwrap();
        assert_eq!(list_call.method, Method::GET);
        assert_eq!(apply.params().get("fieldManager"), Some(&"me"));
        assert_eq!(apply.params().get("force"), Some(&"true"));
        assert_eq!(apply.body["metadata"]["name"], "b");
    }
}
