//! The client against a tiny axum server that authenticates every request with
//! [`sigv4::verify`], the way the real router does.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::Router;
use futures::stream;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::*;
use crate::sigv4::{BodyIntegrity, Payload, VerifyParams};

const REGION: &str = "us-east-1";

/// A server on an ephemeral loopback port; stopped when dropped.
struct TestServer {
    endpoint: String,
    task: JoinHandle<()>,
}

impl TestServer {
    async fn start(known: Credentials) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state(Arc::new(known));
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestServer { endpoint, task }
    }

    fn client(&self, credentials: Credentials) -> EcsClient {
        EcsClient::new(&self.endpoint, credentials, REGION.into()).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> AxumResponse {
    let body = json!({ "__type": kind, "message": message }).to_string();
    (
        status,
        [
            (CONTENT_TYPE, ECS_CONTENT_TYPE),
            (HeaderName::from_static("x-amzn-requestid"), "req-1"),
        ],
        body,
    )
        .into_response()
}

async fn handle(State(known): State<Arc<Credentials>>, request: Request) -> AxumResponse {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let streamed = path == "/skiff/v1/upload";
    let verified = sigv4::verify(
        &RequestParts {
            method: parts.method.as_str(),
            path,
            query,
            headers: &parts.headers,
        },
        if streamed {
            Payload::Streamed
        } else {
            Payload::Bytes(&body)
        },
        &VerifyParams {
            service: sigv4::ECS_SERVICE,
            region: Some(REGION),
            now: Utc::now(),
        },
        |id| (id == known.access_key_id).then(|| (*known).clone()),
    );
    let verified = match verified {
        Ok(verified) => verified,
        Err(err) => {
            let (kind, message) = err.aws_error();
            return aws_error(
                StatusCode::from_u16(err.http_status()).unwrap(),
                kind,
                &message,
            );
        }
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };

    match (parts.method.as_str(), path) {
        ("POST", "/") => {
            assert_eq!(header("content-type").as_deref(), Some(ECS_CONTENT_TYPE));
            let target = header("x-amz-target").unwrap_or_default();
            match target.strip_prefix(&format!("{ECS_TARGET_PREFIX}.")) {
                Some("ListClusters") => {
                    let input: Value = serde_json::from_slice(&body).unwrap();
                    let output = json!({
                        "clusterArns": ["arn:aws:ecs:us-east-1:000000000000:cluster/default"],
                        "echo": input,
                    });
                    ([(CONTENT_TYPE, ECS_CONTENT_TYPE)], output.to_string()).into_response()
                }
                Some("DescribeClusters") => aws_error(
                    StatusCode::BAD_REQUEST,
                    "com.amazonaws.ecs#ClusterNotFoundException",
                    "Cluster not found.",
                ),
                Some("Proxy") => {
                    (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").into_response()
                }
                _ => aws_error(
                    StatusCode::BAD_REQUEST,
                    "UnknownOperationException",
                    &target,
                ),
            }
        }
        ("GET", _) if path.starts_with("/skiff/v1/echo/") => {
            format!("{path}?{query}").into_response()
        }
        ("POST", "/skiff/v1/upload") => json!({
            "length": body.len(),
            "sha256": sigv4::sha256_hex(&body),
            "unsigned": verified.body == BodyIntegrity::Unsigned,
            "contentLength": header("content-length"),
            "chunked": header("transfer-encoding"),
        })
        .to_string()
        .into_response(),
        _ => aws_error(StatusCode::NOT_FOUND, "NotFoundException", path),
    }
}

fn credentials() -> Credentials {
    Credentials::generate()
}

#[tokio::test]
async fn call_round_trips_a_signed_ecs_request() {
    let known = credentials();
    let server = TestServer::start(known.clone()).await;
    let client = server.client(known);

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ListClustersRequest {
        max_results: u32,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ListClustersResponse {
        cluster_arns: Vec<String>,
        echo: Value,
    }
    let response: ListClustersResponse = client
        .call("ListClusters", &ListClustersRequest { max_results: 5 })
        .await
        .unwrap();
    assert_eq!(
        response.cluster_arns,
        ["arn:aws:ecs:us-east-1:000000000000:cluster/default"]
    );
    assert_eq!(response.echo, json!({ "maxResults": 5 }));
}

#[tokio::test]
async fn session_token_credentials_are_sent_and_accepted() {
    let known = Credentials {
        session_token: Some("temporary/token+=".into()),
        ..credentials()
    };
    let server = TestServer::start(known.clone()).await;
    let response: Value = server
        .client(known)
        .call("ListClusters", &json!({}))
        .await
        .unwrap();
    assert!(response["clusterArns"].is_array());
}

#[tokio::test]
async fn service_errors_keep_the_aws_error_name() {
    let known = credentials();
    let server = TestServer::start(known.clone()).await;
    let err = server
        .client(known)
        .call::<_, Value>("DescribeClusters", &json!({ "clusters": ["nope"] }))
        .await
        .unwrap_err();
    match &err {
        ClientError::Service {
            kind,
            message,
            status,
            request_id,
        } => {
            assert_eq!(kind, "ClusterNotFoundException");
            assert_eq!(message, "Cluster not found.");
            assert_eq!(*status, 400);
            assert_eq!(request_id.as_deref(), Some("req-1"));
        }
        other => panic!("expected a service error, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "ClusterNotFoundException: Cluster not found."
    );
}

#[tokio::test]
async fn bad_credentials_are_rejected_by_the_verifier() {
    let known = credentials();
    let server = TestServer::start(known.clone()).await;
    let kind_of = |result: Result<Value, ClientError>| match result {
        Err(ClientError::Service { kind, .. }) => kind,
        other => panic!("expected a service error, got {other:?}"),
    };

    let wrong_secret = Credentials::new(known.access_key_id.clone(), "wrong");
    let result = server
        .client(wrong_secret)
        .call("ListClusters", &json!({}))
        .await;
    assert_eq!(kind_of(result), "InvalidSignatureException");

    let unknown_key = Credentials::new("SKIFUNKNOWN", known.secret_access_key.clone());
    let result = server
        .client(unknown_key)
        .call("ListClusters", &json!({}))
        .await;
    assert_eq!(kind_of(result), "UnrecognizedClientException");
}

#[tokio::test]
async fn non_aws_error_bodies_are_reported_with_an_excerpt() {
    let known = credentials();
    let server = TestServer::start(known.clone()).await;
    let err = server
        .client(known)
        .call::<_, Value>("Proxy", &json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::UnexpectedResponse { status: 502, excerpt } if excerpt.contains("bad gateway")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stopped_server_is_reported_as_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = EcsClient::new(&endpoint, credentials(), REGION.into()).unwrap();
    let err = client
        .call::<_, Value>("ListClusters", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&endpoint), "{err}");
    assert!(
        err.to_string().contains("start it with `skiff server`"),
        "{err}"
    );
    // The flag named is the skiff CLI's, not the AWS CLI's --endpoint-url.
    assert!(
        err.to_string().contains("`--endpoint` (or SKIFF_ENDPOINT)"),
        "{err}"
    );
}

#[tokio::test]
async fn get_signs_encoded_paths_and_queries() {
    let known = credentials();
    let server = TestServer::start(known.clone()).await;
    let client = server.client(known);
    let path = "/skiff/v1/echo/registry.local%3A5000%2Fapp/logs?follow=true&since=2024-01-01T00%3A00%3A00Z&b=a%20b";
    let text = client.get(path).await.unwrap().text().await.unwrap();
    assert_eq!(text, path);

    let err = client.get("/skiff/v1/missing").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Service { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn post_body_streams_an_unsigned_payload() {
    let known = credentials();
    let server = TestServer::start(known.clone()).await;
    let client = server.client(known);
    let chunks: Vec<Vec<u8>> = (0..48u8).map(|i| vec![i; 64 * 1024]).collect();
    let all: Vec<u8> = chunks.concat();
    let expected_sha = sigv4::sha256_hex(&all);

    let body = Body::wrap_stream(stream::iter(
        chunks.clone().into_iter().map(Ok::<_, std::io::Error>),
    ));
    let response: Value = client
        .post_body("/skiff/v1/upload", body, Some(all.len() as u64))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["length"], all.len());
    assert_eq!(response["sha256"], expected_sha.as_str());
    assert_eq!(response["unsigned"], true);
    assert_eq!(response["contentLength"], all.len().to_string());

    let body = Body::wrap_stream(stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ));
    let response: Value = client
        .post_body("/skiff/v1/upload", body, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["sha256"], expected_sha.as_str());
    assert_eq!(response["chunked"], "chunked");
}

#[test]
fn endpoints_and_paths_are_validated() {
    let https = EcsClient::new("https://ecs.example.com", credentials(), REGION.into());
    assert!(matches!(https, Err(ClientError::UnsupportedScheme { .. })));
    let garbage = EcsClient::new("not a url", credentials(), REGION.into());
    assert!(matches!(garbage, Err(ClientError::InvalidEndpoint { .. })));

    let client = EcsClient::new("http://127.0.0.1:9", credentials(), REGION.into()).unwrap();
    assert!(matches!(
        client.native_url("skiff/v1"),
        Err(ClientError::InvalidPath { .. })
    ));
    let url = client.native_url("/skiff/v1/x%2Fy?a=1").unwrap();
    assert_eq!(url.as_str(), "http://127.0.0.1:9/skiff/v1/x%2Fy?a=1");
    assert_eq!(host_header(&url), "127.0.0.1:9");
    let default_port = Url::parse("http://skiff.local:80/").unwrap();
    assert_eq!(host_header(&default_port), "skiff.local");
}

#[test]
fn error_kinds_are_read_like_botocore() {
    let mut headers = HeaderMap::new();
    let parse = |headers: &HeaderMap, body: &str| match error_from_response(
        StatusCode::BAD_REQUEST,
        headers,
        body.as_bytes(),
    ) {
        ClientError::Service { kind, message, .. } => (kind, message),
        other => panic!("expected a service error, got {other:?}"),
    };
    assert_eq!(
        parse(
            &headers,
            r#"{"__type":"com.amazonaws.ecs#InvalidParameterException","Message":"bad"}"#
        ),
        ("InvalidParameterException".into(), "bad".into())
    );
    headers.insert(
        "x-amzn-errortype",
        HeaderValue::from_static("ThrottlingException:http://internal.amazon.com/"),
    );
    assert_eq!(
        parse(&headers, ""),
        ("ThrottlingException".into(), String::new())
    );
    assert_eq!(
        parse(&headers, r#"{"__type":"ClientException","message":"m"}"#),
        ("ClientException".into(), "m".into()),
        "the body's __type wins over the header"
    );
}

#[test]
fn query_errors_and_results_are_read_from_xml() {
    let body = crate::query::error_response("TargetGroupNotFound", "no such group", true, "r1");
    match error_from_response(StatusCode::BAD_REQUEST, &HeaderMap::new(), body.as_bytes()) {
        ClientError::Service { kind, message, .. } => {
            assert_eq!(
                (kind.as_str(), message.as_str()),
                ("TargetGroupNotFound", "no such group")
            )
        }
        other => panic!("expected a service error, got {other:?}"),
    }
    let xml = "<R><Groups><member><Name>a</Name><Arns><member>x</member></Arns></member></Groups><Empty/></R>";
    let document = roxmltree::Document::parse(xml).unwrap();
    assert_eq!(
        xml_to_json(document.root_element()),
        json!({"Groups": [{"Name": "a", "Arns": ["x"]}], "Empty": ""})
    );
}

/// The real AWS CLI v1 (botocore) talks to a server that verifies with our verifier.
#[tokio::test]
async fn aws_cli_requests_verify() {
    let available = tokio::process::Command::new("aws")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|output| output.status.success());
    if !available {
        eprintln!("SKIPPED aws_cli_requests_verify: the AWS CLI is not installed");
        return;
    }
    let known = credentials();
    let server = TestServer::start(known.clone()).await;
    let aws = |secret: &str, args: &[&str]| {
        let mut command = tokio::process::Command::new("aws");
        command
            .args(args)
            .args([
                "--endpoint-url",
                &server.endpoint,
                "--region",
                REGION,
                "--output",
                "json",
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("AWS_ACCESS_KEY_ID", &known.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .kill_on_drop(true);
        command
    };

    let output = aws(
        &known.secret_access_key,
        &["ecs", "list-clusters", "--max-results", "3"],
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "aws ecs list-clusters failed: {stderr}"
    );
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        listed["clusterArns"][0],
        "arn:aws:ecs:us-east-1:000000000000:cluster/default"
    );

    let output = aws(
        &known.secret_access_key,
        &["ecs", "describe-clusters", "--clusters", "x"],
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("(ClusterNotFoundException)"), "{stderr}");

    let output = aws("wrong-secret", &["ecs", "list-clusters"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("(InvalidSignatureException)"), "{stderr}");
}
