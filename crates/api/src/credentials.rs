//! Access keys: the standard AWS credential chain, and the server's credentials file.
//!
//! [`resolve`] looks for credentials where the AWS CLI and SDKs do, first hit wins:
//!
//! 1. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
//! 2. the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default
//!    `~/.aws/credentials`), profile `AWS_PROFILE` (default `default`);
//! 3. the file `skiff server` writes on first start, `<state dir>/credentials`, profile
//!    `skiff`, so that a local `skiff` CLI works with no setup at all.
//!
//! As in botocore, empty variables count as unset, a missing file is skipped, and half a
//! key pair (an id without a secret) is an error rather than a silent fall-through. A
//! profile named explicitly with `AWS_PROFILE` must exist.
//!
//! [`write_credentials_file`] writes a profile into an INI credentials file atomically
//! (temporary file, fsync, rename, fsync of the directory) with mode 0600, keeping the
//! other profiles of an existing file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ini::{EscapePolicy, Ini, LineSeparator, ParseOption, WriteOption};
use rand::rngs::OsRng;
use rand::Rng;

/// Prefix of every access key id Skiff generates (AWS uses `AKIA`/`ASIA`).
pub const ACCESS_KEY_PREFIX: &str = "SKIF";
/// Profile of the credentials file `skiff server` writes in its state directory.
pub const FALLBACK_PROFILE: &str = "skiff";
/// Name of that file inside the state directory.
pub const FALLBACK_FILE_NAME: &str = "credentials";

const DEFAULT_PROFILE: &str = "default";
const ACCESS_KEY_ID: &str = "aws_access_key_id";
const SECRET_ACCESS_KEY: &str = "aws_secret_access_key";
const SESSION_TOKEN: &str = "aws_session_token";
/// The same alphabet as AWS access key ids (RFC 4648 base32).
const ACCESS_KEY_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const ACCESS_KEY_RANDOM_CHARS: usize = 16;
/// The same alphabet and length as AWS secret access keys (base64).
const SECRET_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const SECRET_CHARS: usize = 40;

/// An access key pair, optionally with a session token (temporary credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// A fresh long-term key pair from the operating system's CSPRNG: an id of
    /// [`ACCESS_KEY_PREFIX`] plus 16 base32 characters, and a 40-character secret
    /// (240 bits of entropy).
    pub fn generate() -> Self {
        Credentials::new(
            format!(
                "{ACCESS_KEY_PREFIX}{}",
                random_string(ACCESS_KEY_ALPHABET, ACCESS_KEY_RANDOM_CHARS)
            ),
            random_string(SECRET_ALPHABET, SECRET_CHARS),
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(alphabet[OsRng.gen_range(0..alphabet.len())]))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or \
         AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE, or start `skiff server` which writes {}",
        fallback.display()
    )]
    NotFound { fallback: PathBuf },

    #[error("{present} is set but {missing} is not: set both, or unset {present}")]
    PartialEnvironment {
        present: &'static str,
        missing: &'static str,
    },

    #[error(
        "profile [{profile}] in {} has {present} but no {missing}: add {missing} to it",
        path.display()
    )]
    PartialProfile {
        path: PathBuf,
        profile: String,
        present: &'static str,
        missing: &'static str,
    },

    #[error(
        "profile [{profile}] (from AWS_PROFILE) is not in {}: add it, or unset AWS_PROFILE",
        path.display()
    )]
    ProfileNotFound { path: PathBuf, profile: String },

    #[error("cannot parse credentials file {}: fix the INI syntax", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ini::ParseError,
    },

    #[error("cannot read credentials file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot write credentials file {}: check that its directory is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the {field} to store in profile [{profile}] is empty or contains whitespace or control characters")]
    InvalidValue {
        profile: String,
        field: &'static str,
    },
}

/// Resolves credentials from the process environment, the shared credentials file, then
/// `<state_dir_fallback>/credentials` (profile `skiff`).
pub fn resolve(state_dir_fallback: &Path) -> Result<Credentials, CredentialsError> {
    resolve_with(|name| std::env::var(name).ok(), state_dir_fallback)
}

/// [`resolve`] with the environment read through `env` (tests pass a map).
pub fn resolve_with(
    env: impl Fn(&str) -> Option<String>,
    state_dir_fallback: &Path,
) -> Result<Credentials, CredentialsError> {
    let var = |name: &str| env(name).filter(|value| !value.is_empty());

    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => {
            tracing::debug!(source = "environment", "using AWS credentials");
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: var("AWS_SESSION_TOKEN"),
            });
        }
        (Some(_), None) => {
            return Err(CredentialsError::PartialEnvironment {
                present: "AWS_ACCESS_KEY_ID",
                missing: "AWS_SECRET_ACCESS_KEY",
            })
        }
        (None, Some(_)) => {
            return Err(CredentialsError::PartialEnvironment {
                present: "AWS_SECRET_ACCESS_KEY",
                missing: "AWS_ACCESS_KEY_ID",
            })
        }
        (None, None) => {}
    }

    let home = var("HOME").map(PathBuf::from);
    let shared_file = match var("AWS_SHARED_CREDENTIALS_FILE") {
        Some(path) => Some(expand_home(&path, home.as_deref())),
        None => home.map(|home| home.join(".aws").join("credentials")),
    };
    if let Some(path) = shared_file {
        let explicit_profile = var("AWS_PROFILE");
        let profile = explicit_profile.as_deref().unwrap_or(DEFAULT_PROFILE);
        match load_profile(&path, profile)? {
            ProfileLookup::Found(credentials) => {
                tracing::debug!(source = %path.display(), profile, "using AWS credentials");
                return Ok(credentials);
            }
            ProfileLookup::NoSuchProfile if explicit_profile.is_some() => {
                return Err(CredentialsError::ProfileNotFound {
                    path,
                    profile: profile.to_owned(),
                })
            }
            ProfileLookup::NoFile | ProfileLookup::NoSuchProfile | ProfileLookup::NoKeys => {}
        }
    }

    let fallback = state_dir_fallback.join(FALLBACK_FILE_NAME);
    match load_profile(&fallback, FALLBACK_PROFILE)? {
        ProfileLookup::Found(credentials) => {
            tracing::debug!(source = %fallback.display(), profile = FALLBACK_PROFILE, "using AWS credentials");
            Ok(credentials)
        }
        _ => Err(CredentialsError::NotFound { fallback }),
    }
}

/// `~/x` -> `$HOME/x`, as botocore's `os.path.expanduser`.
fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

enum ProfileLookup {
    Found(Credentials),
    NoFile,
    NoSuchProfile,
    /// The profile exists but holds no static keys (e.g. only `role_arn`).
    NoKeys,
}

/// The static keys of `profile` in the credentials file at `path`, if both exist.
pub fn read_profile(path: &Path, profile: &str) -> Result<Option<Credentials>, CredentialsError> {
    Ok(match load_profile(path, profile)? {
        ProfileLookup::Found(credentials) => Some(credentials),
        ProfileLookup::NoFile | ProfileLookup::NoSuchProfile | ProfileLookup::NoKeys => None,
    })
}

fn load_profile(path: &Path, profile: &str) -> Result<ProfileLookup, CredentialsError> {
    let Some(ini) = read_ini(path)? else {
        return Ok(ProfileLookup::NoFile);
    };
    let Some(section) = ini.section(Some(profile)) else {
        return Ok(ProfileLookup::NoSuchProfile);
    };
    let field = |name| {
        section
            .get(name)
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let partial = |present, missing| CredentialsError::PartialProfile {
        path: path.to_owned(),
        profile: profile.to_owned(),
        present,
        missing,
    };
    match (field(ACCESS_KEY_ID), field(SECRET_ACCESS_KEY)) {
        (Some(id), Some(secret)) => Ok(ProfileLookup::Found(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: field(SESSION_TOKEN),
        })),
        (Some(_), None) => Err(partial(ACCESS_KEY_ID, SECRET_ACCESS_KEY)),
        (None, Some(_)) => Err(partial(SECRET_ACCESS_KEY, ACCESS_KEY_ID)),
        (None, None) => Ok(ProfileLookup::NoKeys),
    }
}

/// Parses an INI file the way Python's configparser reads it: no escapes, no quoting.
fn read_ini(path: &Path) -> Result<Option<Ini>, CredentialsError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let options = ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..ParseOption::default()
    };
    Ini::load_from_str_opt(&text, options)
        .map(Some)
        .map_err(|source| CredentialsError::Parse {
            path: path.to_owned(),
            source,
        })
}

/// Writes `credentials` as `[profile]` of the INI file at `path` (mode 0600, atomic),
/// replacing that profile and keeping any others. Creates the parent directory.
pub fn write_credentials_file(
    path: &Path,
    profile: &str,
    credentials: &Credentials,
) -> Result<(), CredentialsError> {
    let mut fields = vec![
        (ACCESS_KEY_ID, credentials.access_key_id.as_str()),
        (SECRET_ACCESS_KEY, credentials.secret_access_key.as_str()),
    ];
    if let Some(token) = &credentials.session_token {
        fields.push((SESSION_TOKEN, token));
    }
    for &(field, value) in &fields {
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(CredentialsError::InvalidValue {
                profile: profile.to_owned(),
                field,
            });
        }
    }

    let mut ini = read_ini(path)?.unwrap_or_default();
    while ini.delete(Some(profile)).is_some() {}
    let mut section = ini.with_section(Some(profile));
    for (field, value) in fields {
        section.set(field, value);
    }

    let write_error = |source| CredentialsError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(write_error)?;
    let mut text = Vec::new();
    ini.write_to_opt(
        &mut text,
        WriteOption {
            escape_policy: EscapePolicy::Nothing,
            line_separator: LineSeparator::SystemDefault,
            kv_separator: " = ",
        },
    )
    .map_err(write_error)?;
    write_atomically(dir, path, &text).map_err(write_error)?;
    tracing::info!(path = %path.display(), profile, access_key_id = %credentials.access_key_id, "wrote credentials file");
    Ok(())
}

fn write_atomically(dir: &Path, path: &Path, contents: &[u8]) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let temp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        random_string(ACCESS_KEY_ALPHABET, 8)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist, or may already be renamed.
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// An environment for [`resolve_with`] from a list of variables.
    fn env_of<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        move |name| map.get(name).map(|value| (*value).to_owned())
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        write_credentials_file(
            &dir.path().join(FALLBACK_FILE_NAME),
            FALLBACK_PROFILE,
            &Credentials::new("SKIFFILE", "file-secret"),
        )
        .unwrap();
        let vars = [
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "token"),
            ("HOME", "/nonexistent"),
        ];
        let creds = resolve_with(env_of(&vars), dir.path()).unwrap();
        assert_eq!(
            creds,
            Credentials {
                access_key_id: "AKIDENV".into(),
                secret_access_key: "env-secret".into(),
                session_token: Some("token".into()),
            }
        );
    }

    #[test]
    fn half_an_environment_pair_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_with(env_of(&[("AWS_ACCESS_KEY_ID", "AKID")]), dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or unset AWS_ACCESS_KEY_ID"
        );
        // Empty values count as unset, as in botocore.
        let vars = [("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")];
        let err = resolve_with(env_of(&vars), dir.path()).unwrap_err();
        assert!(matches!(err, CredentialsError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn shared_file_default_and_named_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        write(
            &home.join(".aws/credentials"),
            "# comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s/ecr+et=\n\n\
             [dev]\naws_access_key_id=AKIDDEV\naws_secret_access_key=dev\naws_session_token=tok\n",
        );
        let home_str = home.to_str().unwrap();
        let creds = resolve_with(env_of(&[("HOME", home_str)]), dir.path()).unwrap();
        assert_eq!(creds, Credentials::new("AKIDDEFAULT", "s/ecr+et="));

        let vars = [("HOME", home_str), ("AWS_PROFILE", "dev")];
        let creds = resolve_with(env_of(&vars), dir.path()).unwrap();
        assert_eq!(creds.access_key_id, "AKIDDEV");
        assert_eq!(creds.session_token.as_deref(), Some("tok"));

        let vars = [("HOME", home_str), ("AWS_PROFILE", "prod")];
        let err = resolve_with(env_of(&vars), dir.path()).unwrap_err();
        assert!(
            matches!(&err, CredentialsError::ProfileNotFound { profile, .. } if profile == "prod")
        );
        assert!(err.to_string().contains("unset AWS_PROFILE"), "{err}");
    }

    #[test]
    fn shared_file_location_from_environment_with_tilde() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("custom/creds"),
            "[default]\naws_access_key_id=AKIDCUSTOM\naws_secret_access_key=x\n",
        );
        let vars = [
            ("HOME", dir.path().to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", "~/custom/creds"),
        ];
        let creds = resolve_with(env_of(&vars), dir.path()).unwrap();
        assert_eq!(creds.access_key_id, "AKIDCUSTOM");
    }

    #[test]
    fn partial_or_malformed_profiles_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        let vars = [("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap())];

        write(&file, "[default]\naws_access_key_id=AKID\n");
        let err = resolve_with(env_of(&vars), dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                CredentialsError::PartialProfile {
                    missing: SECRET_ACCESS_KEY,
                    ..
                }
            ),
            "{err:?}"
        );

        write(&file, "[default\naws_access_key_id=AKID\n");
        let err = resolve_with(env_of(&vars), dir.path()).unwrap_err();
        assert!(matches!(err, CredentialsError::Parse { .. }), "{err:?}");

        // A profile without static keys (e.g. an assumed role) falls through to the next source.
        write(&file, "[default]\nrole_arn=arn:aws:iam::1:role/x\n");
        let err = resolve_with(env_of(&vars), dir.path()).unwrap_err();
        assert!(matches!(err, CredentialsError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn fallback_file_written_by_the_server_is_found() {
        let state = tempfile::tempdir().unwrap();
        let generated = Credentials::generate();
        write_credentials_file(
            &state.path().join(FALLBACK_FILE_NAME),
            FALLBACK_PROFILE,
            &generated,
        )
        .unwrap();
        let creds = resolve_with(env_of(&[("HOME", "/nonexistent")]), state.path()).unwrap();
        assert_eq!(creds, generated);
    }

    #[test]
    fn nothing_found_says_what_to_do() {
        let state = tempfile::tempdir().unwrap();
        let err = resolve_with(env_of(&[]), state.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("no AWS credentials found: set AWS_ACCESS_KEY_ID"),
            "{message}"
        );
        assert!(
            message.ends_with(&format!("{}/credentials", state.path().display())),
            "{message}"
        );
    }

    #[test]
    fn write_is_private_atomic_and_keeps_other_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/credentials");
        write(
            &path,
            "[other]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=o\n",
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        let first = Credentials::generate();
        write_credentials_file(&path, "skiff", &first).unwrap();
        let second = Credentials {
            session_token: Some("tok".into()),
            ..Credentials::generate()
        };
        write_credentials_file(&path, "skiff", &second).unwrap();

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("[skiff]").count(), 1, "{text}");
        assert!(!text.contains(&first.secret_access_key), "{text}");
        let Some(ProfileLookup::Found(other)) = load_profile(&path, "other").ok() else {
            panic!("profile [other] was lost: {text}");
        };
        assert_eq!(other.access_key_id, "AKIDOTHER");
        let Some(ProfileLookup::Found(skiff)) = load_profile(&path, "skiff").ok() else {
            panic!("profile [skiff] missing: {text}");
        };
        assert_eq!(skiff, second);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["credentials"], "temporary files left behind");
    }

    #[test]
    fn write_refuses_values_that_would_corrupt_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = Credentials::new("AKID", "secret\n[evil]");
        let err = write_credentials_file(&dir.path().join("c"), "skiff", &bad).unwrap_err();
        assert!(
            matches!(
                err,
                CredentialsError::InvalidValue {
                    field: SECRET_ACCESS_KEY,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn generated_keys_look_like_aws_keys() {
        let a = Credentials::generate();
        let b = Credentials::generate();
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_ne!(a.secret_access_key, b.secret_access_key);
        assert_eq!(a.access_key_id.len(), 20);
        assert!(a.access_key_id.starts_with(ACCESS_KEY_PREFIX));
        assert!(a
            .access_key_id
            .bytes()
            .all(|c| ACCESS_KEY_ALPHABET.contains(&c)));
        assert_eq!(a.secret_access_key.len(), 40);
        assert!(a
            .secret_access_key
            .bytes()
            .all(|c| SECRET_ALPHABET.contains(&c)));
        assert!(a.session_token.is_none());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let creds = Credentials {
            session_token: Some("tok-secret".into()),
            ..Credentials::new("AKIDSHOWN", "very-secret")
        };
        let shown = format!("{creds:?}");
        assert!(shown.contains("AKIDSHOWN"));
        assert!(
            !shown.contains("very-secret") && !shown.contains("tok-secret"),
            "{shown}"
        );
    }
}
