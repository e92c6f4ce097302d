//! A small async client for the ECS JSON 1.1 API and Skiff's native endpoints.
//!
//! An ECS call is `POST <endpoint>` with `X-Amz-Target:
//! AmazonEC2ContainerServiceV20141113.<Operation>`, `Content-Type:
//! application/x-amz-json-1.1`, the request as a JSON body, and a SigV4 signature (service
//! `ecs`) over `host`, `content-type`, `x-amz-date`, `x-amz-target` and the body's hash:
//! the same request botocore sends. Native endpoints (`/skiff/v1/...`) are signed with the
//! same `ecs` scope, so the server authenticates every request the same way; uploads sign
//! `x-amz-content-sha256: UNSIGNED-PAYLOAD` so a large body streams without being hashed
//! first.
//!
//! Query protocol services (ELBv2) go through [`EcsClient::query`]: a form body
//! `Action=..&Version=..&members`, signed for the service's own signing name, whose XML
//! result is returned as JSON (lists of `member` become arrays, elements with children
//! objects, the rest strings). EC2's dialect of it, whose results sit directly in the
//! response element, goes through [`EcsClient::ec2_query`].
//!
//! Failures keep the server's meaning: an error response `{"__type", "message"}` becomes
//! [`ClientError::Service`] with the namespace prefix (`com.amazonaws.ecs#`) stripped as
//! botocore does (an XML `<Error><Code>` likewise), and a refused connection says the
//! server is not running.

mod ec2;

use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use reqwest::{Body, Response, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::credentials::Credentials;
use crate::sigv4::{self, RequestParts, SigningParams};

/// The `X-Amz-Target` prefix of every ECS operation.
pub const ECS_TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113";
/// The content type of ECS requests and responses.
pub const ECS_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a non-AWS error body to keep in [`ClientError::UnexpectedResponse`].
const BODY_EXCERPT_CHARS: usize = 512;

type UrlParseError = <Url as FromStr>::Err;

/// Signs and sends requests to one Skiff (or ECS-compatible) endpoint.
#[derive(Debug, Clone)]
pub struct EcsClient {
    http: reqwest::Client,
    endpoint: Url,
    credentials: Credentials,
    region: String,
}

impl EcsClient {
    /// A client for `endpoint` (`http://host:port`); requests are signed for `region`.
    pub fn new(
        endpoint: &str,
        credentials: Credentials,
        region: String,
    ) -> Result<Self, ClientError> {
        let url = Url::parse(endpoint).map_err(|source| ClientError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?;
        if url.scheme() != "http" {
            return Err(ClientError::UnsupportedScheme {
                endpoint: endpoint.to_owned(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(ClientError::HttpClient)?;
        Ok(EcsClient {
            http,
            endpoint: url,
            credentials,
            region,
        })
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Calls the ECS operation `operation` (e.g. `"ListClusters"`) with `request` as its
    /// input shape and decodes the output shape.
    pub async fn call<Req, Resp>(&self, operation: &str, request: &Req) -> Result<Resp, ClientError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body = serde_json::to_vec(request).map_err(|source| ClientError::Encode {
            operation: operation.to_owned(),
            source,
        })?;
        let target =
            HeaderValue::from_str(&format!("{ECS_TARGET_PREFIX}.{operation}")).map_err(|_| {
                ClientError::InvalidOperation {
                    operation: operation.to_owned(),
                }
            })?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ECS_CONTENT_TYPE));
        headers.insert(HeaderName::from_static("x-amz-target"), target);
        let payload_sha256 = sigv4::sha256_hex(&body);

        let response = self
            .send(
                Method::POST,
                self.endpoint.clone(),
                headers,
                sigv4::ECS_SERVICE,
                &payload_sha256,
                Some(body.into()),
            )
            .await?;
        tracing::debug!(operation, status = %response.status(), "ECS call");
        let bytes = response
            .bytes()
            .await
            .map_err(|source| self.transport_error(source))?;
        let json: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        serde_json::from_slice(json).map_err(|source| ClientError::Decode {
            operation: operation.to_owned(),
            source,
        })
    }

    /// A signed `GET` of a native endpoint, e.g. `/skiff/v1/tasks/abc/logs?follow=true`.
    /// Returns the response only when its status is a success.
    pub async fn get(&self, path_and_query: &str) -> Result<Response, ClientError> {
        let url = self.native_url(path_and_query)?;
        let empty = sigv4::sha256_hex(b"");
        self.send(
            Method::GET,
            url,
            HeaderMap::new(),
            sigv4::ECS_SERVICE,
            &empty,
            None,
        )
        .await
    }

    /// A signed `POST` of `body` to a native endpoint, streamed: the payload is declared
    /// `UNSIGNED-PAYLOAD` instead of being hashed first. Pass `content_length` when the
    /// size is known so the server sees a `Content-Length` instead of chunked encoding.
    pub async fn post_body(
        &self,
        path: &str,
        body: Body,
        content_length: Option<u64>,
    ) -> Result<Response, ClientError> {
        let url = self.native_url(path)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Some(length) = content_length {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
        self.send(
            Method::POST,
            url,
            headers,
            sigv4::ECS_SERVICE,
            sigv4::UNSIGNED_PAYLOAD,
            Some(body),
        )
        .await
    }

    /// Calls the Query protocol action `action` of the service signed as `service`
    /// (e.g. `elasticloadbalancing`, version `2015-12-01`) with form `members`
    /// (`Targets.member.1.Id`...); returns the `<{action}Result>` element as JSON.
    pub async fn query(
        &self,
        service: &str,
        version: &str,
        action: &str,
        members: &[(String, String)],
    ) -> Result<serde_json::Value, ClientError> {
        let result_name = format!("{action}Result");
        self.query_document(service, version, action, members, |response| {
            response
                .children()
                .find(|n| n.has_tag_name(result_name.as_str()))
                .map_or_else(|| serde_json::json!({}), xml_to_json)
        })
        .await
    }

    /// Sends a Query protocol request and reads the result out of the response's root
    /// element (`<{action}Response>`) with `result`.
    async fn query_document(
        &self,
        service: &str,
        version: &str,
        action: &str,
        members: &[(String, String)],
        result: impl FnOnce(roxmltree::Node<'_, '_>) -> serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", action)
            .append_pair("Version", version)
            .extend_pairs(members)
            .finish();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let payload_sha256 = sigv4::sha256_hex(body.as_bytes());
        let response = self
            .send(
                Method::POST,
                self.endpoint.clone(),
                headers,
                service,
                &payload_sha256,
                Some(body.into()),
            )
            .await?;
        tracing::debug!(action, status = %response.status(), "Query call");
        let text = response
            .text()
            .await
            .map_err(|source| self.transport_error(source))?;
        let decode_error = |reason: String| ClientError::DecodeXml {
            operation: action.to_owned(),
            reason,
        };
        let document =
            roxmltree::Document::parse(&text).map_err(|e| decode_error(e.to_string()))?;
        Ok(result(document.root_element()))
    }

    fn native_url(&self, path_and_query: &str) -> Result<Url, ClientError> {
        if !path_and_query.starts_with('/') {
            return Err(ClientError::InvalidPath {
                path: path_and_query.to_owned(),
            });
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let mut url = self.endpoint.clone();
        url.set_path(path);
        url.set_query(query);
        Ok(url)
    }

    /// Signs (with the path and query exactly as `url` will send them) and sends.
    async fn send(
        &self,
        method: Method,
        url: Url,
        mut headers: HeaderMap,
        service: &str,
        payload_sha256: &str,
        body: Option<Body>,
    ) -> Result<Response, ClientError> {
        headers.insert(HOST, host_header(&url));
        let signature = sigv4::sign(
            &RequestParts {
                method: method.as_str(),
                path: url.path(),
                query: url.query().unwrap_or(""),
                headers: &headers,
            },
            &SigningParams {
                credentials: &self.credentials,
                region: &self.region,
                service,
                time: Utc::now(),
                payload_sha256,
                content_sha256_header: payload_sha256 == sigv4::UNSIGNED_PAYLOAD,
            },
        );
        for (name, value) in signature {
            let value =
                HeaderValue::from_str(&value).map_err(|_| ClientError::InvalidCredentials)?;
            headers.insert(HeaderName::from_static(name), value);
        }

        let mut request = self.http.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| self.transport_error(source))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|source| self.transport_error(source))?;
        Err(error_from_response(status, &headers, &body))
    }

    fn transport_error(&self, source: reqwest::Error) -> ClientError {
        let endpoint = self.endpoint.to_string();
        if source.is_connect() {
            ClientError::Unreachable { endpoint, source }
        } else {
            ClientError::Transport { endpoint, source }
        }
    }
}

/// `host[:port]` as botocore puts it in the signature (no port when it is the default).
fn host_header(url: &Url) -> HeaderValue {
    let host = url.host_str().unwrap_or_default();
    let value = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    HeaderValue::from_str(&value).expect("a parsed URL's host is a valid header value")
}

/// Turns an error response into [`ClientError::Service`] the way botocore reads JSON
/// protocol errors: `__type` from the body, else the `x-amzn-ErrorType` header, cut at
/// `:` and after the last `#`.
fn error_from_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ClientError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body)
        .ok()
        .or_else(|| xml_error(body));
    let header_kind = headers
        .get("x-amzn-errortype")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let request_id = headers
        .get("x-amzn-requestid")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (kind, message) = match parsed {
        Some(ErrorBody { kind, message }) => (kind.or(header_kind), message),
        None => (header_kind, None),
    };
    match kind {
        Some(kind) => {
            let kind = kind.split(':').next().unwrap_or_default();
            let kind = kind.rsplit('#').next().unwrap_or_default();
            ClientError::Service {
                kind: kind.to_owned(),
                message: message.unwrap_or_default(),
                status: status.as_u16(),
                request_id,
            }
        }
        None => ClientError::UnexpectedResponse {
            status: status.as_u16(),
            excerpt: String::from_utf8_lossy(body)
                .chars()
                .take(BODY_EXCERPT_CHARS)
                .collect(),
        },
    }
}

/// Converts an XML element to JSON: `member` (or EC2's `item`) children make an array,
/// other children an object, text a string.
fn xml_to_json(node: roxmltree::Node<'_, '_>) -> serde_json::Value {
    let children: Vec<_> = node.children().filter(|n| n.is_element()).collect();
    if children.is_empty() {
        return serde_json::Value::String(node.text().unwrap_or_default().to_owned());
    }
    if children
        .iter()
        .all(|c| matches!(c.tag_name().name(), "member" | "item"))
    {
        return serde_json::Value::Array(children.into_iter().map(xml_to_json).collect());
    }
    serde_json::Value::Object(
        children
            .into_iter()
            .map(|c| (c.tag_name().name().to_owned(), xml_to_json(c)))
            .collect(),
    )
}

/// Reads a Query protocol error (`<ErrorResponse><Error><Code>…<Message>…`) into the
/// JSON error's fields.
fn xml_error(body: &[u8]) -> Option<ErrorBody> {
    let text = std::str::from_utf8(body).ok()?;
    let document = roxmltree::Document::parse(text).ok()?;
    let error = document.descendants().find(|n| n.has_tag_name("Error"))?;
    let field = |name: &str| {
        error
            .children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(str::to_owned)
    };
    Some(ErrorBody {
        kind: Some(field("Code")?),
        message: field("Message"),
    })
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "__type")]
    kind: Option<String>,
    #[serde(alias = "Message")]
    message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{kind}: {message}")]
    Service {
        /// The AWS error name, e.g. `ClusterNotFoundException`.
        kind: String,
        message: String,
        status: u16,
        request_id: Option<String>,
    },

    #[error("the Skiff server is not reachable at {endpoint}: start it with `skiff server`, or point `--endpoint` (or SKIFF_ENDPOINT) at a running server")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("request to {endpoint} failed")]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("the server answered HTTP {status} without an AWS error body (is {excerpt:?} from a proxy?)")]
    UnexpectedResponse { status: u16, excerpt: String },

    #[error("invalid endpoint URL {endpoint:?}: use http://host:port")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: UrlParseError,
    },

    #[error("endpoint {endpoint} is not plain http://, the only scheme this client speaks: Skiff serves HTTP on loopback or behind your TLS proxy")]
    UnsupportedScheme { endpoint: String },

    #[error("request path {path:?} must be absolute, e.g. /skiff/v1/...")]
    InvalidPath { path: String },

    #[error("operation name {operation:?} cannot be sent in an X-Amz-Target header")]
    InvalidOperation { operation: String },

    #[error("the access key id or session token contains characters not allowed in HTTP headers: check AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN or the credentials file")]
    InvalidCredentials,

    #[error("cannot encode the {operation} request as JSON")]
    Encode {
        operation: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("the {operation} response does not match its expected shape: are the client and server versions compatible?")]
    Decode {
        operation: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("the {operation} response is not the XML document expected ({reason}): are the client and server versions compatible?")]
    DecodeXml { operation: String, reason: String },

    #[error("cannot initialise the HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

#[cfg(test)]
mod tests;
