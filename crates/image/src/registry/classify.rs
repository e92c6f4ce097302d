//! Sorting registry failures into what a user can act on, and what is worth retrying.
//!
//! | failure                                         | retried | reported as                 |
//! |-------------------------------------------------|---------|-----------------------------|
//! | TLS handshake (untrusted cert, plain-HTTP peer)  | no      | `RegistryTls`               |
//! | connect / DNS / timeout / broken body            | yes     | `RegistryUnreachable`       |
//! | HTTP 5xx, 408, 429 (`TOOMANYREQUESTS`)           | yes     | `RegistryServer`            |
//! | HTTP 401 / 403 (`UNAUTHORIZED`, `DENIED`)        | no      | `RegistryUnauthorized`      |
//! | HTTP 401 although credentials were sent          | no      | `RegistryCredentialsRefused`|
//! | 404 (`MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, ...)    | no      | `RegistryNotFound`          |
//! | 404 of a blob (`BLOB_UNKNOWN`)                   | no      | `RegistryBlobMissing`       |
//! | content does not hash to the requested digest    | no      | `DigestMismatch`            |
//! | other 4xx                                        | no      | `RegistryRejected`          |
//! | malformed answers                                | no      | `RegistryProtocol`          |
//!
//! The registry's own message (the `errors[].message` of its JSON error envelope) is
//! kept in the error. TLS failures are recognized by a `rustls::Error` anywhere in the
//! error's source chain, including inside `io::Error`s, whose `source()` skips the
//! error they wrap.

use std::error::Error as StdError;
use std::io;

use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::Session;
use crate::digest::Digest;
use crate::error::{BoxedError, ImageError};

/// A failed request, sorted.
#[derive(Debug)]
pub(crate) enum Failure {
    /// May succeed if tried again.
    Transient(Transient),
    /// Will not succeed by retrying; this is the error to report.
    Fatal(ImageError),
}

/// A failure worth retrying.
#[derive(Debug)]
pub(crate) enum Transient {
    /// The connection could not be made or broke.
    Unreachable(BoxedError),
    /// The registry answered with a server error or a rate limit.
    Server { status: u16, message: String },
}

impl Transient {
    /// One line for the retry log.
    pub(crate) fn summary(&self) -> String {
        match self {
            Self::Unreachable(error) => model::error_chain(error.as_ref()),
            Self::Server { status, message } => format!("HTTP {status}: {message}"),
        }
    }

    /// The error to report once retries are exhausted.
    pub(crate) fn into_error(self, session: &Session, attempts: u32) -> ImageError {
        match self {
            Self::Unreachable(source) => ImageError::RegistryUnreachable {
                registry: session.registry.clone(),
                attempts,
                source,
            },
            Self::Server { status, message } => ImageError::RegistryServer {
                registry: session.registry.clone(),
                status,
                attempts,
                message,
            },
        }
    }
}

/// Sorts an `oci-client` error. `blob` names the blob being fetched, if any, so that a
/// 404 becomes "the registry lacks this blob" rather than "no such image".
pub(crate) fn classify(
    error: OciDistributionError,
    session: &Session,
    blob: Option<&Digest>,
) -> Failure {
    let not_found = |message: String| match blob {
        Some(digest) => ImageError::RegistryBlobMissing {
            registry: session.registry.clone(),
            reference: session.reference.clone(),
            digest: digest.clone(),
            message,
        },
        None => ImageError::RegistryNotFound {
            reference: session.reference.clone(),
            message,
        },
    };
    let unauthorized = |message: String| ImageError::RegistryUnauthorized {
        registry: session.registry.clone(),
        reference: session.reference.clone(),
        message,
    };
    // A 401 to credentials means they are wrong; a 403 (`DENIED`) means the account
    // may not pull this repository, which `unauthorized` says.
    let refused = |message: String| match &session.auth {
        RegistryAuth::Basic(username, _) => ImageError::RegistryCredentialsRefused {
            registry: session.registry.clone(),
            reference: session.reference.clone(),
            username: username.clone(),
            message,
        },
        _ => unauthorized(message),
    };
    let rejected = |message: String| ImageError::RegistryRejected {
        registry: session.registry.clone(),
        reference: session.reference.clone(),
        message,
    };
    match error {
        OciDistributionError::RequestError(error) => transport(Box::new(error), session),
        OciDistributionError::IoError(error) => transport(Box::new(error), session),
        OciDistributionError::UnauthorizedError { .. } => {
            Failure::Fatal(refused("authentication required (HTTP 401)".to_owned()))
        }
        OciDistributionError::AuthenticationFailure(reason) => {
            Failure::Fatal(refused(reason.trim().to_owned()))
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope_message(&envelope);
            let code = envelope.errors.first().map(|error| &error.code);
            match code {
                Some(OciErrorCode::Unauthorized) => Failure::Fatal(refused(message)),
                Some(OciErrorCode::Denied) => Failure::Fatal(unauthorized(message)),
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::ManifestBlobUnknown,
                ) => Failure::Fatal(not_found(message)),
                Some(OciErrorCode::Toomanyrequests) => Failure::Transient(Transient::Server {
                    status: 429,
                    message,
                }),
                _ => Failure::Fatal(rejected(message)),
            }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let message = message.trim().to_owned();
            match code {
                401 => Failure::Fatal(refused(format!("HTTP 401: {message}"))),
                403 => Failure::Fatal(unauthorized(format!("HTTP 403: {message}"))),
                404 => Failure::Fatal(not_found(format!("HTTP 404: {message}"))),
                408 | 429 | 500..=599 => Failure::Transient(Transient::Server {
                    status: code,
                    message,
                }),
                _ => Failure::Fatal(rejected(format!("HTTP {code}: {message}"))),
            }
        }
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            match (Digest::parse(&expected), Digest::parse(&actual)) {
                (Ok(expected), Ok(actual)) => {
                    Failure::Fatal(ImageError::DigestMismatch { expected, actual })
                }
                _ => Failure::Fatal(
                    session.protocol_error(DigestError::VerificationError { expected, actual }),
                ),
            }
        }
        other => Failure::Fatal(session.protocol_error(other)),
    }
}

/// What an error in the middle of a blob's body means.
#[derive(Debug)]
pub(crate) enum StreamFailure {
    /// oci-client's own check of a full (non-ranged) answer failed at the end of the
    /// body: every byte has been received, and the content store's check will report
    /// the mismatch with the blob's name.
    VerificationFailed,
    /// Anything else: the connection broke.
    Failed(Failure),
}

/// Sorts an error read from a blob's body stream.
pub(crate) fn stream_error(error: io::Error, session: &Session) -> StreamFailure {
    let is_verification = error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<DigestError>().is_some());
    if is_verification {
        StreamFailure::VerificationFailed
    } else {
        StreamFailure::Failed(transport(Box::new(error), session))
    }
}

/// A failure below HTTP: TLS is fatal (it will not fix itself), the rest is retried.
fn transport(error: BoxedError, session: &Session) -> Failure {
    if is_tls_failure(error.as_ref()) {
        Failure::Fatal(ImageError::RegistryTls {
            registry: session.registry.clone(),
            source: error,
        })
    } else {
        Failure::Transient(Transient::Unreachable(error))
    }
}

/// Whether a `rustls::Error` is anywhere in the chain, looking inside `io::Error`s.
fn is_tls_failure(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = error
            .downcast_ref::<io::Error>()
            .and_then(|io_error| io_error.get_ref())
        {
            if is_tls_failure(inner) {
                return true;
            }
        }
        current = error.source();
    }
    false
}

/// The messages of a registry's error envelope, or its codes when it gave none.
fn envelope_message(envelope: &OciEnvelope) -> String {
    let messages: Vec<String> = envelope
        .errors
        .iter()
        .map(|error| {
            if error.message.is_empty() {
                format!("{:?}", error.code)
            } else {
                error.message.clone()
            }
        })
        .collect();
    if messages.is_empty() {
        "no details given".to_owned()
    } else {
        messages.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Reference;
    use crate::registry::{Registry, RegistryConfig};

    fn session() -> Session {
        Registry::new(RegistryConfig::default())
            .unwrap()
            .session(&Reference::parse("127.0.0.1:5000/team/app:1").unwrap())
            .unwrap()
    }

    fn envelope(code: &str, message: &str) -> OciDistributionError {
        let json = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#);
        OciDistributionError::RegistryError {
            envelope: serde_json::from_str(&json).unwrap(),
            url: "http://127.0.0.1:5000/v2/team/app/manifests/1".to_owned(),
        }
    }

    #[test]
    fn registry_envelopes_map_to_actionable_errors() {
        let session = session();
        let err = match classify(
            envelope("MANIFEST_UNKNOWN", "manifest unknown"),
            &session,
            None,
        ) {
            Failure::Fatal(err) => err,
            other => panic!("{other:?}"),
        };
        assert!(
            matches!(&err, ImageError::RegistryNotFound { reference, message }
                if reference == "127.0.0.1:5000/team/app:1" && message == "manifest unknown"),
            "{err:?}"
        );
        let blob = Digest::of(b"layer");
        assert!(matches!(
            classify(envelope("BLOB_UNKNOWN", "blob unknown to registry"), &session, Some(&blob)),
            Failure::Fatal(ImageError::RegistryBlobMissing { digest, .. }) if digest == blob
        ));
        match classify(
            envelope("DENIED", "requested access to the resource is denied"),
            &session,
            None,
        ) {
            Failure::Fatal(err @ ImageError::RegistryUnauthorized { .. }) => {
                assert!(
                    err.to_string()
                        .contains("skiff registry login 127.0.0.1:5000"),
                    "{err}"
                );
                assert!(
                    err.to_string()
                        .contains("requested access to the resource is denied"),
                    "{err}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(envelope("TOOMANYREQUESTS", "slow down"), &session, None),
            Failure::Transient(Transient::Server { status: 429, .. })
        ));
        assert!(matches!(
            classify(envelope("UNSUPPORTED", "nope"), &session, None),
            Failure::Fatal(ImageError::RegistryRejected { .. })
        ));
    }

    #[test]
    fn status_codes_decide_what_is_retried() {
        let session = session();
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:5000/v2/".to_owned(),
            message: "boom".to_owned(),
        };
        for code in [500, 502, 503, 429, 408] {
            assert!(
                matches!(
                    classify(server(code), &session, None),
                    Failure::Transient(_)
                ),
                "{code}"
            );
        }
        for code in [401, 403] {
            assert!(matches!(
                classify(server(code), &session, None),
                Failure::Fatal(ImageError::RegistryUnauthorized { .. })
            ));
        }
        assert!(matches!(
            classify(server(404), &session, None),
            Failure::Fatal(ImageError::RegistryNotFound { .. })
        ));
        assert!(matches!(
            classify(
                OciDistributionError::UnauthorizedError { url: String::new() },
                &session,
                None
            ),
            Failure::Fatal(ImageError::RegistryUnauthorized { .. })
        ));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let Failure::Transient(transient) =
            classify(OciDistributionError::IoError(reset), &session, None)
        else {
            panic!("a reset connection is transient");
        };
        let err = transient.into_error(&session, 4);
        assert!(
            matches!(err, ImageError::RegistryUnreachable { attempts: 4, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_401_to_stored_credentials_says_they_are_wrong() {
        let registry = Registry::new(RegistryConfig {
            credentials: std::sync::Arc::new(|_: &str| {
                Some(crate::registry::Credentials {
                    username: "deploy".to_owned(),
                    password: "wrong".to_owned(),
                })
            }),
            ..RegistryConfig::default()
        })
        .unwrap();
        let with_login = registry
            .session(&Reference::parse("127.0.0.1:5000/team/app:1").unwrap())
            .unwrap();
        let unauthorized = || OciDistributionError::UnauthorizedError { url: String::new() };
        let err = match classify(unauthorized(), &with_login, None) {
            Failure::Fatal(err @ ImageError::RegistryCredentialsRefused { .. }) => err,
            other => panic!("{other:?}"),
        };
        assert!(
            err.to_string()
                .contains("refused the credentials of deploy for 127.0.0.1:5000/team/app:1")
                && err
                    .to_string()
                    .contains("`skiff registry login 127.0.0.1:5000 -u deploy --password-stdin`"),
            "{err}"
        );
        assert!(matches!(
            classify(
                envelope("UNAUTHORIZED", "authentication required"),
                &with_login,
                None
            ),
            Failure::Fatal(ImageError::RegistryCredentialsRefused { .. })
        ));
        // DENIED: the credentials are fine, the account may not pull this repository.
        assert!(matches!(
            classify(envelope("DENIED", "denied"), &with_login, None),
            Failure::Fatal(ImageError::RegistryUnauthorized { .. })
        ));
        // Without a login, a 401 asks for one.
        assert!(matches!(
            classify(unauthorized(), &session(), None),
            Failure::Fatal(ImageError::RegistryUnauthorized { .. })
        ));
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, tls);
        assert!(is_tls_failure(&wrapped));
        assert!(matches!(
            classify(OciDistributionError::IoError(wrapped), &session(), None),
            Failure::Fatal(ImageError::RegistryTls { .. })
        ));
        assert!(!is_tls_failure(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
    }

    #[test]
    fn mismatching_content_is_a_digest_mismatch() {
        let (expected, actual) = (Digest::of(b"a"), Digest::of(b"b"));
        let error = OciDistributionError::DigestError(DigestError::VerificationError {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
        assert!(matches!(
            classify(error, &session(), None),
            Failure::Fatal(ImageError::DigestMismatch { expected: e, actual: a }) if e == expected && a == actual
        ));
        let stream = io::Error::other(DigestError::VerificationError {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
        assert!(matches!(
            stream_error(stream, &session()),
            StreamFailure::VerificationFailed
        ));
    }
}
