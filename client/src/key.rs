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

    /// The base64 alphabet of [`Key::to_base64`], in index order.
    const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// A key whose base64 text starts with `BASE64[first]`: the first character is the top six
    /// bits of the first byte.
    fn key_starting_with(first: u8, rest: [u8; 32]) -> Key {
        let mut bytes = rest;
        bytes[0] = (first << 2) | (rest[0] & 0b11);
        Key::from_bytes(bytes)
    }

    /// Parses a printed connect line with the real `ferry` command line and returns its key.
    fn key_from_line(line: &str) -> Key {
        use clap::Parser;
        let words = crate::shell::parse::split(line).unwrap().words;
        let cli = crate::cli::Cli::try_parse_from(&words)
            .unwrap_or_else(|e| panic!("{line:?} does not parse: {e}"));
        assert!(
            matches!(cli.command, crate::cli::Command::Shell(_)),
            "{line}"
        );
        cli.global.key.unwrap().parse().unwrap()
    }

    #[test]
    fn every_first_character_round_trips_through_the_connect_line() {
        let url = "ferry://127.0.0.1:6789/";
        for (first, c) in BASE64.iter().enumerate() {
            let key = key_starting_with(first as u8, [0x5a; 32]);
            assert!(key.to_base64().starts_with(*c as char));
            let line = connect_line("ferry", &key, &url);
            assert_eq!(key_from_line(&line), key, "{line}");
        }
    }

    #[test]
    fn a_program_path_with_spaces_stays_one_word() {
        let key = key_starting_with(62, [7; 32]);
        let line = connect_line("/tmp/my builds/ferry's/ferry", &key, &"ferry://h/");
        let words = crate::shell::parse::split(&line).unwrap().words;
        assert_eq!(words[0], "/tmp/my builds/ferry's/ferry");
        assert_eq!(key_from_line(&line), key);
    }

    /// Lines printed before the fix put the key in its own word; they must keep working.
    #[test]
    fn old_connect_lines_with_a_leading_dash_still_parse() {
        let key = key_starting_with(62, [1; 32]);
        assert!(key.to_base64().starts_with('-'));
        let line = format!(
            "ferry shell --key {} ferry://127.0.0.1:6789/",
            key.to_base64()
        );
        assert_eq!(key_from_line(&line), key);
        let line = format!("ferry --key {} ls ferry://h/", key.to_base64());
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(line.split(' ')).unwrap();
        assert_eq!(cli.global.key.unwrap().parse::<Key>().unwrap(), key);
    }

    proptest::proptest! {
        // Each case parses 64 lines with clap; 32 cases are 2,048 lines.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Random keys and ports, each case with every possible first character, so the cases
        /// proptest happens to draw cannot miss the one that matters.
        #[test]
        fn connect_lines_round_trip(rest in proptest::prelude::any::<[u8; 32]>(), port in 1u16..) {
            let url = format!("ferry://127.0.0.1:{port}/");
            for first in 0..64 {
                let key = key_starting_with(first, rest);
                let line = connect_line("ferry", &key, &url);
                proptest::prop_assert_eq!(key_from_line(&line), key);
            }
        }
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
