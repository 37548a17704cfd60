//! Finding the pre-shared key, in the order the whole suite uses: `--key` (hex or base64),
//! `--key-file`, the `FERRY_KEY` environment variable, then the default key file
//! `dirs::config_dir()/ferry/key` if it exists (a server creates it when nothing else is given).

use std::path::{Path, PathBuf};

use ferry_protocol::Key;

use crate::key_file::{self, KeyFileError};

/// Environment variable holding a key (hex or base64).
pub const KEY_ENV: &str = "FERRY_KEY";

/// Where a key may come from, as given on the command line and in the environment.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// `--key`: the key itself.
    pub key: Option<String>,
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
    /// The value of `FERRY_KEY`, if set.
    pub env: Option<String>,
    /// The default key file; `None` when the platform has no config directory.
    pub default_file: Option<PathBuf>,
}

/// No usable key. Each message is one sentence that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyResolveError {
    #[error("--key is not a valid key: expected 64 hex characters or 43 base64 characters")]
    BadArgument,
    #[error("{var} is not a valid key: expected 64 hex characters or 43 base64 characters")]
    BadEnv { var: &'static str },
    #[error("{0}")]
    File(KeyFileError),
    #[error("no key given: pass --key=KEY (from the server's connect line), --key-file FILE, set FERRY_KEY, or put the key in {default}")]
    Missing { default: String },
}

impl KeySources {
    /// Sources from command-line values plus the process environment.
    pub fn from_env(key: Option<String>, key_file: Option<PathBuf>) -> Self {
        Self {
            key,
            key_file,
            env: std::env::var(KEY_ENV).ok().filter(|v| !v.trim().is_empty()),
            default_file: default_key_file(),
        }
    }

    /// The first source that is present wins; a present but broken source is an error rather
    /// than a silent fall-through to the next one.
    pub fn resolve(&self) -> Result<Key, KeyResolveError> {
        if let Some(key) = &self.key {
            return key.parse().map_err(|_| KeyResolveError::BadArgument);
        }
        if let Some(path) = &self.key_file {
            return key_file::load(path).map_err(KeyResolveError::File);
        }
        if let Some(env) = &self.env {
            return env
                .parse()
                .map_err(|_| KeyResolveError::BadEnv { var: KEY_ENV });
        }
        match &self.default_file {
            Some(path) if path.exists() => key_file::load(path).map_err(KeyResolveError::File),
            other => Err(KeyResolveError::Missing {
                default: other.as_deref().map_or_else(
                    || "the default key file".to_string(),
                    |p: &Path| p.display().to_string(),
                ),
            }),
        }
    }
}

/// What [`KeySources::resolve_or_create`] did to find the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// An existing source (flag, file, environment or default file).
    Found,
    /// No source was present: a new key was written to this default file.
    Created(PathBuf),
}

impl KeySources {
    /// [`KeySources::resolve`] for a server: when no source is present at all, generates a key
    /// and saves it in the default file (owner-only), so a first start needs no set-up.
    pub fn resolve_or_create(&self) -> Result<(Key, KeyOrigin), KeyResolveError> {
        match self.resolve() {
            Err(KeyResolveError::Missing { default }) => {
                let path = self
                    .default_file
                    .clone()
                    .ok_or(KeyResolveError::Missing { default })?;
                let key = Key::generate();
                key_file::save_new(&key, &path).map_err(KeyResolveError::File)?;
                Ok((key, KeyOrigin::Created(path)))
            }
            other => other.map(|key| (key, KeyOrigin::Found)),
        }
    }
}

/// The line a user pastes to connect: `PROGRAM shell --key=KEY URL`. The key is joined to its
/// flag with `=` because a base64 key may start with `-`, which would otherwise read as a flag
/// (issue 9); `PROGRAM` is quoted for a POSIX shell when it needs to be.
pub fn connect_line(program: &str, key: &Key, url: &impl std::fmt::Display) -> String {
    format!(
        "{} shell --key={} {url}",
        shell_quote(program),
        key.to_base64()
    )
}

/// `word` as one word for a POSIX shell: unchanged when it is plain, single-quoted otherwise.
pub fn shell_quote(word: &str) -> std::borrow::Cow<'_, str> {
    let plain = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '/' | '.' | '-' | '_' | '+' | ':' | ',' | '@' | '=')
        });
    if plain {
        word.into()
    } else {
        format!("'{}'", word.replace('\'', r"'\''")).into()
    }
}

/// `dirs::config_dir()/ferry/key`.
pub fn default_key_file() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("ferry").join("key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_key(dir: &Path, name: &str, key: &Key) -> PathBuf {
        let path = dir.join(name);
        key_file::save_new(key, &path).unwrap();
        path
    }

    #[test]
    fn order_is_flag_file_env_default() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c, d] = [(); 4].map(|_| Key::generate());
        let file_b = write_key(dir.path(), "b", &b);
        let file_d = write_key(dir.path(), "d", &d);
        let mut sources = KeySources {
            key: Some(a.to_base64()),
            key_file: Some(file_b),
            env: Some(c.to_hex()),
            default_file: Some(file_d),
        };
        assert_eq!(sources.resolve().unwrap(), a);
        sources.key = None;
        assert_eq!(sources.resolve().unwrap(), b);
        sources.key_file = None;
        assert_eq!(sources.resolve().unwrap(), c);
        sources.env = None;
        assert_eq!(sources.resolve().unwrap(), d);
        sources.default_file = Some(dir.path().join("absent"));
        let err = sources.resolve().unwrap_err().to_string();
        assert!(err.starts_with("no key given"), "{err}");
        assert!(err.contains("absent"), "{err}");
    }

    #[test]
    fn broken_sources_are_errors_not_skipped() {
        let sources = KeySources {
            key: Some("not a key".into()),
            env: Some(Key::generate().to_hex()),
            ..Default::default()
        };
        assert!(matches!(
            sources.resolve(),
            Err(KeyResolveError::BadArgument)
        ));
        let sources = KeySources {
            env: Some("zz".into()),
            ..Default::default()
        };
        assert!(sources
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("FERRY_KEY"));
    }

    #[test]
    fn a_server_creates_the_default_file_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("config/ferry/key");
        let sources = KeySources {
            default_file: Some(default.clone()),
            ..Default::default()
        };
        let (key, origin) = sources.resolve_or_create().unwrap();
        assert_eq!(origin, KeyOrigin::Created(default.clone()));
        assert_eq!(
            sources.resolve_or_create().unwrap(),
            (key, KeyOrigin::Found)
        );
        // A present but broken source is never replaced by a new key.
        let broken = KeySources {
            env: Some("zz".into()),
            default_file: Some(dir.path().join("other")),
            ..Default::default()
        };
        assert!(broken.resolve_or_create().is_err());
        assert!(!dir.path().join("other").exists());
    }

    #[cfg(unix)]
    #[test]
    fn readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), "k", &Key::generate());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let sources = KeySources {
            key_file: Some(path),
            ..Default::default()
        };
        let err = sources.resolve().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
