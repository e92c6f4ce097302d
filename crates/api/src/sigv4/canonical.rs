//! SigV4 canonicalisation, the one definition the signer and the verifier share.
//!
//! Everything here follows botocore's `SigV4Auth` byte for byte: the canonical request
//! (method, URI, query, headers, signed header names, payload hash), the credential scope,
//! and the HMAC chain from the secret to the signature.

use std::fmt;

use hmac::Mac;
use http::HeaderMap;

use super::{sha256_hex, HmacSha256, RequestParts, ALGORITHM, TERMINATOR};

/// `date/region/service/aws4_request`.
pub(super) struct Scope<'a> {
    pub(super) date: &'a str,
    pub(super) region: &'a str,
    pub(super) service: &'a str,
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{TERMINATOR}",
            self.date, self.region, self.service
        )
    }
}

/// Signed header names with their canonical values, in signing order.
pub(super) struct CanonicalHeaders(pub(super) Vec<(String, Vec<u8>)>);

impl CanonicalHeaders {
    /// The signer's view: every header, sorted by name, repeated names merged.
    pub(super) fn from_unsorted<'v>(headers: impl Iterator<Item = (String, &'v [u8])>) -> Self {
        let mut headers: Vec<_> = headers.collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0)); // stable: repeated values keep their order
        let mut merged: Vec<(String, Vec<u8>)> = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            match merged.last_mut() {
                Some((last, values)) if *last == name => {
                    values.push(b',');
                    values.extend(canonical_header_value(value));
                }
                _ => merged.push((name, canonical_header_value(value))),
            }
        }
        CanonicalHeaders(merged)
    }

    /// The verifier's view: exactly the names of `SignedHeaders`, in their order.
    pub(super) fn from_signed_names(names: &[String], headers: &HeaderMap) -> Self {
        let entries = names
            .iter()
            .map(|name| {
                let values: Vec<Vec<u8>> = headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|value| canonical_header_value(value.as_bytes()))
                    .collect();
                (name.clone(), values.join(&b','))
            })
            .collect();
        CanonicalHeaders(entries)
    }

    pub(super) fn signed_names(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|(name, _)| name.as_str()).collect();
        names.join(";")
    }
}

/// Trims the value and collapses each run of whitespace to one space (botocore:
/// `' '.join(value.split())`).
pub(super) fn canonical_header_value(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for word in value
        .split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty())
    {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    out
}

pub(super) fn canonical_request(
    request: &RequestParts<'_>,
    headers: &CanonicalHeaders,
    payload_hash: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(request.method.to_ascii_uppercase().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_uri(request.path).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query(request.query).as_bytes());
    out.push(b'\n');
    for (name, value) in &headers.0 {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(headers.signed_names().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    out
}

/// The wire path without dot segments and empty segments, percent-encoded once more.
pub(super) fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut normalized = String::with_capacity(path.len() + 1);
    normalized.push('/');
    normalized.push_str(&segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    uri_encode(normalized.as_bytes(), false)
}

/// Query pairs decoded, strictly re-encoded, sorted by key then value.
pub(super) fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(key), true),
                uri_encode(&percent_decode(value), true),
            )
        })
        .collect();
    pairs.sort();
    let pairs: Vec<String> = pairs
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    pairs.join("&")
}

/// RFC 3986 encoding: everything but `A-Za-z0-9-_.~` (and `/` unless `encode_slash`)
/// becomes `%XX` with upper-case hex.
fn uri_encode(bytes: &[u8], encode_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_alphanumeric()
            || b"-_.~".contains(&byte)
            || (byte == b'/' && !encode_slash)
        {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; anything else (including a malformed `%`) is kept literally.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The final HMAC, ready to `finalize` (signer) or `verify_slice` (verifier).
pub(super) fn signature_mac(
    secret: &str,
    scope: &Scope<'_>,
    amz_date: &str,
    canonical_request: &[u8],
) -> HmacSha256 {
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request)
    );
    let key = [scope.date, scope.region, scope.service, TERMINATOR]
        .iter()
        .fold(format!("AWS4{secret}").into_bytes(), |key, part| {
            hmac(&key, part.as_bytes()).finalize().into_bytes().to_vec()
        });
    hmac(&key, string_to_sign.as_bytes())
}

fn hmac(key: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of any length: `new_from_slice` cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac
}
