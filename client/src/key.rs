//! Finding the pre-shared key, in the order the whole suite uses: `--key` (hex or base64),
//! `--key-file`, the `FERRY_KEY` environment variable, then the default key file
//! `dirs::config_dir()/ferry/key` if it exists.

use std::path::{Path, PathBuf};

use ferry_protocol::crypto::KeyError;
use ferry_protocol::Key;

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
    #[error("cannot use key file: {0}")]
    File(KeyError),
    #[error("no key given: pass --key KEY (from the server's connect line), --key-file FILE, set FERRY_KEY, or put the key in {default}")]
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
            return Key::load(path).map_err(KeyResolveError::File);
        }
        if let Some(env) = &self.env {
            return env
                .parse()
                .map_err(|_| KeyResolveError::BadEnv { var: KEY_ENV });
        }
        match &self.default_file {
            Some(path) if path.exists() => Key::load(path).map_err(KeyResolveError::File),
            other => Err(KeyResolveError::Missing {
                default: other.as_deref().map_or_else(
                    || "the default key file".to_string(),
                    |p: &Path| p.display().to_string(),
                ),
            }),
        }
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
        key.save_new(&path).unwrap();
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
