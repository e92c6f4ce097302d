//! AWS Signature Version 4: the client's signer and the server's verifier, sharing one
//! canonicalisation so they cannot drift apart.
//!
//! How a signature is made (and checked):
//!
//! ```text
//!  canonical request            METHOD \n canonical URI \n canonical query \n
//!                               name:value \n ... \n \n signed;header;names \n payload hash
//!  string to sign               AWS4-HMAC-SHA256 \n 20150830T123600Z \n
//!                               20150830/us-east-1/ecs/aws4_request \n hex(sha256(canonical))
//!  signing key                  HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service),
//!                               "aws4_request")
//!  signature                    hex(HMAC(signing key, string to sign))
//!  Authorization header         AWS4-HMAC-SHA256 Credential=AKID/<scope>,
//!                               SignedHeaders=host;x-amz-date, Signature=<hex>
//! ```
//!
//! Canonicalisation follows botocore (the reference the AWS CLI and boto3 sign with):
//! the URI is the wire path with dot segments and empty segments removed, then
//! percent-encoded again (non-S3 services double-encode, so `%3A` signs as `%253A`); the
//! query's pairs are decoded, strictly re-encoded and sorted; header names are lower-case,
//! values trimmed with inner whitespace runs collapsed, repeated headers joined by `,`.
//!
//! The verifier ([`verify`], or [`SignedRequest`] when the key lookup is async) rebuilds
//! the canonical request from the headers listed in `SignedHeaders` only, checks the
//! credential scope and a 15-minute clock skew, and compares signatures in constant time
//! (`Mac::verify_slice`). Every failure is a [`SigV4Error`] that renders as the AWS wire
//! error (`__type`, message, status) through [`SigV4Error::aws_error`].
//!
//! Not supported: presigned URLs (signature in the query string), aws-chunked streaming
//! signatures, the `Date` header instead of `X-Amz-Date`, and SigV4a.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::credentials::Credentials;

mod canonical;

use canonical::{canonical_request, signature_mac, CanonicalHeaders, Scope};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Payload hash that tells the verifier the body is not covered by the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Signing name of the ECS API.
pub const ECS_SERVICE: &str = "ecs";
/// How far a request's `X-Amz-Date` may be from the server's clock, as in AWS.
pub const MAX_CLOCK_SKEW_MINUTES: i64 = 15;

pub const X_AMZ_DATE: &str = "x-amz-date";
pub const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";
pub const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
const AUTHORIZATION: &str = "authorization";

const AMZ_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";
const SCOPE_DATE_FORMAT: &str = "%Y%m%d";
const TERMINATOR: &str = "aws4_request";

/// Headers the signer never includes: `Authorization` itself and the hop-by-hop or
/// proxy-rewritten headers botocore leaves out (`SIGNED_HEADERS_BLACKLIST`).
const UNSIGNABLE_HEADERS: [&str; 12] = [
    AUTHORIZATION,
    "connection",
    "expect",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-amzn-trace-id",
];

type HmacSha256 = Hmac<Sha256>;

/// The parts of an HTTP request that SigV4 covers, exactly as they are on the wire:
/// `path` and `query` still percent-encoded, `query` without the `?`.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
}

/// Lower-case hex SHA-256 of `data`, the payload hash of a signed body.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------------

/// What [`sign`] needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct SigningParams<'a> {
    pub credentials: &'a Credentials,
    pub region: &'a str,
    pub service: &'a str,
    pub time: DateTime<Utc>,
    /// Hex SHA-256 of the body ([`sha256_hex`]), or [`UNSIGNED_PAYLOAD`].
    pub payload_sha256: &'a str,
    /// Also send (and sign) the payload hash as `x-amz-content-sha256`. Required for
    /// [`UNSIGNED_PAYLOAD`], which the verifier only learns from that header.
    pub content_sha256_header: bool,
}

/// Signs a request whose headers (which must include `host`) are `request.headers`;
/// returns the headers to add: `authorization`, `x-amz-date`, and `x-amz-security-token`
/// and `x-amz-content-sha256` when they apply. Any such headers already in the request
/// are ignored, as botocore replaces them.
pub fn sign(request: &RequestParts<'_>, params: &SigningParams<'_>) -> Vec<(&'static str, String)> {
    let amz_date = params.time.format(AMZ_DATE_FORMAT).to_string();
    let scope_date = params.time.format(SCOPE_DATE_FORMAT).to_string();
    let scope = Scope {
        date: &scope_date,
        region: params.region,
        service: params.service,
    };

    let mut added = vec![(X_AMZ_DATE, amz_date.clone())];
    if let Some(token) = &params.credentials.session_token {
        added.push((X_AMZ_SECURITY_TOKEN, token.clone()));
    }
    if params.content_sha256_header {
        added.push((X_AMZ_CONTENT_SHA256, params.payload_sha256.to_owned()));
    }
    let replaced = |name: &str| {
        UNSIGNABLE_HEADERS.contains(&name)
            || [X_AMZ_DATE, X_AMZ_SECURITY_TOKEN, X_AMZ_CONTENT_SHA256].contains(&name)
    };
    let headers = CanonicalHeaders::from_unsorted(
        request
            .headers
            .iter()
            .filter(|(name, _)| !replaced(name.as_str()))
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes()))
            .chain(
                added
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), value.as_bytes())),
            ),
    );

    let canonical = canonical_request(request, &headers, params.payload_sha256);
    let signature = signature_mac(
        &params.credentials.secret_access_key,
        &scope,
        &amz_date,
        &canonical,
    )
    .finalize()
    .into_bytes();
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={}",
        params.credentials.access_key_id,
        headers.signed_names(),
        hex::encode(signature)
    );
    added.insert(0, (AUTHORIZATION, authorization));
    added
}

// ---------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------

/// What the verifier expects of a request.
#[derive(Debug, Clone, Copy)]
pub struct VerifyParams<'a> {
    /// The signing name this endpoint serves, e.g. [`ECS_SERVICE`].
    pub service: &'a str,
    /// The region this endpoint serves; `None` accepts whatever region the client signed.
    pub region: Option<&'a str>,
    /// The server's clock.
    pub now: DateTime<Utc>,
}

/// The request body, as far as the verifier can see it.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The whole body, already read.
    Bytes(&'a [u8]),
    /// A body the caller streams after verification; the request must then carry
    /// `x-amz-content-sha256`.
    Streamed,
}

/// What the signature says about the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyIntegrity {
    /// The body's hash was checked and is covered by the signature.
    Verified,
    /// The client signed `UNSIGNED-PAYLOAD`: the body is not authenticated.
    Unsigned,
    /// A streamed body whose hex SHA-256 must equal this once fully read.
    CheckAfterStreaming { sha256: String },
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub region: String,
    pub body: BodyIntegrity,
}

/// Verifies `request`; `lookup` maps an access key id to its credentials (`None`: unknown).
pub fn verify(
    request: &RequestParts<'_>,
    payload: Payload<'_>,
    params: &VerifyParams<'_>,
    lookup: impl FnOnce(&str) -> Option<Credentials>,
) -> Result<Verified, SigV4Error> {
    let signed = SignedRequest::parse(request, params)?;
    let credentials = lookup(signed.access_key_id());
    signed.verify(credentials.as_ref(), payload)
}

/// A request whose `Authorization` header parsed and whose scope and date are acceptable,
/// waiting for its credentials: lets the caller look the key up asynchronously between
/// [`SignedRequest::parse`] and [`SignedRequest::verify`].
#[derive(Debug)]
pub struct SignedRequest<'a> {
    request: RequestParts<'a>,
    access_key_id: String,
    scope_date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
}

impl<'a> SignedRequest<'a> {
    /// Parses the `Authorization` header and checks everything that needs no secret:
    /// algorithm, credential scope, `X-Amz-Date` and clock skew, and that `host` is signed.
    pub fn parse(
        request: &RequestParts<'a>,
        params: &VerifyParams<'_>,
    ) -> Result<Self, SigV4Error> {
        let header = request
            .headers
            .get(AUTHORIZATION)
            .ok_or(SigV4Error::MissingAuthenticationToken)?
            .to_str()
            .map_err(|_| SigV4Error::AuthorizationNotText)?;
        let parsed = parse_authorization(header)?;

        let amz_date = request
            .headers
            .get(X_AMZ_DATE)
            .ok_or(SigV4Error::MissingDate)?
            .to_str()
            .map_err(|_| SigV4Error::MalformedDate {
                value: "<not text>".to_owned(),
            })?
            .to_owned();
        let signed_at = NaiveDateTime::parse_from_str(&amz_date, AMZ_DATE_FORMAT)
            .map_err(|_| SigV4Error::MalformedDate {
                value: amz_date.clone(),
            })?
            .and_utc();

        let [access_key_id, scope_date, region, service, terminator] = parsed.credential;
        if terminator != TERMINATOR {
            return Err(SigV4Error::WrongTerminator { found: terminator });
        }
        if amz_date.get(..8) != Some(scope_date.as_str()) {
            return Err(SigV4Error::ScopeDateMismatch {
                scope_date,
                amz_date,
            });
        }
        if service != params.service {
            return Err(SigV4Error::WrongService {
                expected: params.service.to_owned(),
                found: service,
            });
        }
        if let Some(expected) = params.region.filter(|expected| *expected != region) {
            return Err(SigV4Error::WrongRegion {
                expected: expected.to_owned(),
                found: region,
            });
        }
        check_clock_skew(signed_at, params.now)?;
        if !parsed.signed_headers.iter().any(|name| name == "host") {
            return Err(SigV4Error::HostNotSigned);
        }

        Ok(SignedRequest {
            request: *request,
            access_key_id,
            scope_date,
            region,
            service,
            signed_headers: parsed.signed_headers,
            signature: parsed.signature,
            amz_date,
        })
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Checks the signature with `credentials`, the result of looking up
    /// [`access_key_id`](Self::access_key_id) (`None`: no such key).
    pub fn verify(
        self,
        credentials: Option<&Credentials>,
        payload: Payload<'_>,
    ) -> Result<Verified, SigV4Error> {
        let credentials = credentials.ok_or(SigV4Error::UnrecognizedClient)?;
        let headers = self.request.headers;
        let token = headers
            .get(X_AMZ_SECURITY_TOKEN)
            .map(|value| value.as_bytes());
        let token_matches = match (credentials.session_token.as_deref(), token) {
            (Some(expected), Some(given)) => constant_time_eq(expected.as_bytes(), given),
            (None, None) => true,
            _ => false,
        };
        if !token_matches {
            return Err(SigV4Error::UnrecognizedClient);
        }

        let (payload_hash, body) = payload_hash(headers, payload)?;
        let canonical_headers = CanonicalHeaders::from_signed_names(&self.signed_headers, headers);
        let canonical = canonical_request(&self.request, &canonical_headers, &payload_hash);
        let scope = Scope {
            date: &self.scope_date,
            region: &self.region,
            service: &self.service,
        };
        let provided = hex::decode(&self.signature).map_err(|_| SigV4Error::SignatureMismatch)?;
        signature_mac(
            &credentials.secret_access_key,
            &scope,
            &self.amz_date,
            &canonical,
        )
        .verify_slice(&provided)
        .map_err(|_| SigV4Error::SignatureMismatch)?;
        Ok(Verified {
            access_key_id: self.access_key_id,
            region: self.region,
            body,
        })
    }
}

struct ParsedAuthorization {
    /// access key id, date, region, service, terminator
    credential: [String; 5],
    signed_headers: Vec<String>,
    signature: String,
}

fn parse_authorization(header: &str) -> Result<ParsedAuthorization, SigV4Error> {
    let header = header.trim();
    let (algorithm, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if algorithm != ALGORITHM {
        return Err(SigV4Error::UnsupportedAlgorithm {
            found: algorithm.to_owned(),
        });
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, value)) = part.split_once('=') else {
            continue;
        };
        let value = Some(value.trim()).filter(|value| !value.is_empty());
        match name.trim() {
            "Credential" => credential = value,
            "SignedHeaders" => signed_headers = value,
            "Signature" => signature = value,
            _ => {}
        }
    }
    let missing: Vec<_> = [
        ("Credential", credential.is_none()),
        ("Signature", signature.is_none()),
        ("SignedHeaders", signed_headers.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(SigV4Error::MissingAuthorizationParts {
            missing,
            header: header.to_owned(),
        });
    };

    let parts: Vec<&str> = credential.split('/').collect();
    let credential: [String; 5] = match parts.as_slice() {
        [id, date, region, service, terminator]
            if !id.is_empty()
                && date.len() == 8
                && date.bytes().all(|b| b.is_ascii_digit())
                && !region.is_empty()
                && !service.is_empty() =>
        {
            [id, date, region, service, terminator].map(|part| (*part).to_owned())
        }
        _ => {
            return Err(SigV4Error::MalformedCredential {
                credential: credential.to_owned(),
            })
        }
    };
    Ok(ParsedAuthorization {
        credential,
        signed_headers: signed_headers.split(';').map(str::to_owned).collect(),
        signature: signature.to_owned(),
    })
}

fn check_clock_skew(signed_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), SigV4Error> {
    let skew = TimeDelta::minutes(MAX_CLOCK_SKEW_MINUTES);
    let stamp = |time: DateTime<Utc>| time.format(AMZ_DATE_FORMAT).to_string();
    if signed_at < now - skew {
        return Err(SigV4Error::SignatureExpired {
            signed: stamp(signed_at),
            limit: stamp(now - skew),
            now: stamp(now),
        });
    }
    if signed_at > now + skew {
        return Err(SigV4Error::SignatureNotYetCurrent {
            signed: stamp(signed_at),
            limit: stamp(now + skew),
            now: stamp(now),
        });
    }
    Ok(())
}

/// The payload hash to put in the canonical request, and what it means for the body.
fn payload_hash(
    headers: &HeaderMap,
    payload: Payload<'_>,
) -> Result<(String, BodyIntegrity), SigV4Error> {
    let declared = match headers.get(X_AMZ_CONTENT_SHA256) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| SigV4Error::UnsupportedContentSha256 {
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                })?,
        ),
        None => None,
    };
    match (declared, payload) {
        (Some(UNSIGNED_PAYLOAD), _) => Ok((UNSIGNED_PAYLOAD.to_owned(), BodyIntegrity::Unsigned)),
        (Some(hash), _) if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(SigV4Error::UnsupportedContentSha256 {
                value: hash.to_owned(),
            })
        }
        (Some(hash), Payload::Bytes(body)) => {
            if sha256_hex(body).eq_ignore_ascii_case(hash) {
                Ok((hash.to_owned(), BodyIntegrity::Verified))
            } else {
                Err(SigV4Error::ContentSha256Mismatch)
            }
        }
        (Some(hash), Payload::Streamed) => Ok((
            hash.to_owned(),
            BodyIntegrity::CheckAfterStreaming {
                sha256: hash.to_ascii_lowercase(),
            },
        )),
        (None, Payload::Bytes(body)) => Ok((sha256_hex(body), BodyIntegrity::Verified)),
        (None, Payload::Streamed) => Err(SigV4Error::MissingContentSha256),
    }
}

/// Equality whose running time depends only on the lengths (which are not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a request was not authenticated. [`SigV4Error::aws_error`] gives the AWS wire
/// error; `Display` is its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,

    #[error("Authorization header is not valid ASCII.")]
    AuthorizationNotText,

    #[error("Unsupported AWS 'algorithm': '{found}'. Sign requests with AWS Signature Version 4 (AWS4-HMAC-SHA256).")]
    UnsupportedAlgorithm { found: String },

    #[error("{} Authorization={header}", missing.iter().map(|part| format!("Authorization header requires '{part}' parameter.")).collect::<Vec<_>>().join(" "))]
    MissingAuthorizationParts {
        missing: Vec<&'static str>,
        header: String,
    },

    #[error("Credential '{credential}' is malformed: it must be <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request.")]
    MalformedCredential { credential: String },

    #[error("Authorization header requires existence of an 'X-Amz-Date' header.")]
    MissingDate,

    #[error("Date must be in ISO-8601 'basic format'. Got '{value}'. See http://en.wikipedia.org/wiki/ISO_8601")]
    MalformedDate { value: String },

    #[error("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")]
    HostNotSigned,

    #[error("Credential should be scoped with a valid terminator: 'aws4_request', not '{found}'.")]
    WrongTerminator { found: String },

    #[error("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{scope_date}' != '{}', from '{amz_date}'.", amz_date.get(..8).unwrap_or(amz_date))]
    ScopeDateMismatch {
        scope_date: String,
        amz_date: String,
    },

    #[error("Credential should be scoped to correct service: '{expected}', not '{found}'.")]
    WrongService { expected: String, found: String },

    #[error("Credential should be scoped to a valid region, not '{found}'. This endpoint serves '{expected}'.")]
    WrongRegion { expected: String, found: String },

    #[error("Signature expired: {signed} is now earlier than {limit} ({now} - 15 min.)")]
    SignatureExpired {
        signed: String,
        limit: String,
        now: String,
    },

    #[error("Signature not yet current: {signed} is still later than {limit} ({now} + 15 min.)")]
    SignatureNotYetCurrent {
        signed: String,
        limit: String,
        now: String,
    },

    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,

    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    SignatureMismatch,

    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    ContentSha256Mismatch,

    #[error("x-amz-content-sha256 must be the body's hex SHA-256 or UNSIGNED-PAYLOAD; '{value}' is not supported (aws-chunked signing is not).")]
    UnsupportedContentSha256 { value: String },

    #[error("A streamed request body needs an 'x-amz-content-sha256' header: the body's hex SHA-256, or UNSIGNED-PAYLOAD.")]
    MissingContentSha256,
}

impl SigV4Error {
    /// The AWS error name (`__type`) and message for the response body.
    pub fn aws_error(&self) -> (&'static str, String) {
        let kind = match self {
            SigV4Error::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            SigV4Error::AuthorizationNotText
            | SigV4Error::UnsupportedAlgorithm { .. }
            | SigV4Error::MissingAuthorizationParts { .. }
            | SigV4Error::MalformedCredential { .. }
            | SigV4Error::MissingDate
            | SigV4Error::MalformedDate { .. }
            | SigV4Error::HostNotSigned
            | SigV4Error::UnsupportedContentSha256 { .. }
            | SigV4Error::MissingContentSha256 => "IncompleteSignatureException",
            SigV4Error::UnrecognizedClient => "UnrecognizedClientException",
            SigV4Error::WrongTerminator { .. }
            | SigV4Error::ScopeDateMismatch { .. }
            | SigV4Error::WrongService { .. }
            | SigV4Error::WrongRegion { .. }
            | SigV4Error::SignatureExpired { .. }
            | SigV4Error::SignatureNotYetCurrent { .. }
            | SigV4Error::SignatureMismatch => "InvalidSignatureException",
            SigV4Error::ContentSha256Mismatch => "XAmzContentSHA256Mismatch",
        };
        (kind, self.to_string())
    }

    /// The HTTP status AWS answers with: 403 for a request with no signature at all,
    /// 400 for every other authentication failure.
    pub fn http_status(&self) -> u16 {
        match self {
            SigV4Error::MissingAuthenticationToken => 403,
            _ => 400,
        }
    }
}

#[cfg(test)]
mod tests;
