//! Image references and their docker-style normalization.
//!
//! Grammar (docker/distribution's `reference` package):
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]          host: DNS labels joined by ".", or [IPv6]
//! path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! ```
//!
//! The first component is a domain only if it contains `.` or `:`, is `localhost`, or
//! has an uppercase letter; otherwise the name is on Docker Hub (`docker.io`), where a
//! single-component name lives in `library/`. A reference without tag or digest gets
//! `:latest`. So `busybox` becomes `docker.io/library/busybox:latest` and
//! `127.0.0.1:5000/app` becomes `127.0.0.1:5000/app:latest`.

use std::fmt;

use crate::digest::Digest;
use crate::error::ImageError;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPOSITORY_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LENGTH: usize = 255;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes a reference.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let invalid = |reason| ImageError::InvalidReference {
            reference: reference.to_owned(),
            reason,
        };
        if reference.is_empty() {
            return Err(invalid("the reference is empty"));
        }
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest).map_err(|_| {
                    invalid("the part after `@` must be a `sha256:<64 hex digits>` digest")
                })?;
                (name, Some(digest))
            }
            None => (reference, None),
        };
        let (name, tag) = match name.rfind(':') {
            Some(colon) if !name[colon..].contains('/') => {
                (&name[..colon], Some(&name[colon + 1..]))
            }
            _ => (name, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid(
                    "a tag is 1-128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
                ));
            }
        }
        if name.len() > MAX_NAME_LENGTH {
            return Err(invalid("the repository name is longer than 255 characters"));
        }
        let (domain, path) = split_domain(name);
        if !valid_domain(domain) {
            return Err(invalid(
                "the registry must be a host name or IP address with an optional port",
            ));
        }
        if path.is_empty() {
            return Err(invalid("the repository name is empty"));
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(invalid(
                "repository path components are lowercase letters and digits separated by `.`, `_`, `__` or `-`",
            ));
        }
        if path.len() == 64
            && path.bytes().all(|b| b.is_ascii_hexdigit())
            && domain == DEFAULT_DOMAIN
        {
            return Err(invalid(
                "a 64-digit hex string is an image id, not a name: write it as `sha256:<hex>`",
            ));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPOSITORY_PREFIX}{path}")
        } else {
            path.to_owned()
        };
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            domain: domain.to_owned(),
            path,
            tag,
            digest,
        })
    }

    /// The registry host (and port), `docker.io` for Docker Hub.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, if any (always set unless the reference has a digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `domain/path`, the repository without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Normalizes a reference the way docker does: `busybox` ->
/// `docker.io/library/busybox:latest`, `team/app:1` -> `docker.io/team/app:1`,
/// `127.0.0.1:5000/app` -> `127.0.0.1:5000/app:latest`; digests are kept.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    Reference::parse(reference).map(|r| r.to_string())
}

/// Splits `name` into domain and path, applying Docker Hub's defaults.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            if first == LEGACY_DEFAULT_DOMAIN {
                (DEFAULT_DOMAIN, rest)
            } else {
                (first, rest)
            }
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_path_component(component: &str) -> bool {
    // Alternating runs: alphanumeric, then a separator (".", "_", "__" or "-"+), ...
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // [IPv6]:port
        match rest.split_once(']') {
            Some((address, port)) => {
                if address.is_empty()
                    || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
                {
                    return false;
                }
                match port {
                    "" => return true,
                    port => return port.strip_prefix(':').is_some_and(valid_port),
                }
            }
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    host.split('.').all(label_ok) && port.is_none_or(valid_port)
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalization_table() {
        let digest = format!("sha256:{HEX}");
        let cases = [
            ("busybox", "docker.io/library/busybox:latest".to_owned()),
            (
                "busybox:latest",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_owned()),
            (
                "library/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            ("team/app:1", "docker.io/team/app:1".to_owned()),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest".to_owned()),
            ("localhost/app:v2", "localhost/app:v2".to_owned()),
            (
                "localhost:5000/a/b/c",
                "localhost:5000/a/b/c:latest".to_owned(),
            ),
            ("registry.local/app:v2", "registry.local/app:v2".to_owned()),
            ("[::1]:5000/app", "[::1]:5000/app:latest".to_owned()),
            (
                "my_org/my-app__x.y",
                "docker.io/my_org/my-app__x.y:latest".to_owned(),
            ),
            (
                &format!("busybox@{digest}"),
                format!("docker.io/library/busybox@{digest}"),
            ),
            (
                &format!("busybox:1@{digest}"),
                format!("docker.io/library/busybox:1@{digest}"),
            ),
            (
                &format!("127.0.0.1:5000/app@{digest}"),
                format!("127.0.0.1:5000/app@{digest}"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_reference(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "busybox:",
            "busybox:-tag",
            "busybox@sha256:abc",
            "busybox@md5:abc",
            "a//b",
            "-app",
            "app-",
            "app..x",
            "registry.local:port/app",
            "registry.local:/app",
            "with space",
            HEX,
            &"a".repeat(256),
        ] {
            assert!(
                matches!(
                    normalize_reference(bad),
                    Err(ImageError::InvalidReference { .. })
                ),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn parts_are_exposed() {
        let reference = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(reference.domain(), "127.0.0.1:5000");
        assert_eq!(reference.path(), "team/app");
        assert_eq!(reference.tag(), Some("v1"));
        assert_eq!(reference.digest(), None);
        assert_eq!(reference.repository(), "127.0.0.1:5000/team/app");
    }
}
