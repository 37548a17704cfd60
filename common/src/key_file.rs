//! Key files: read one (refusing files others can read, as ssh does) and create one that only
//! its owner can read. The format (32 raw bytes, or hex/base64 text) is the protocol crate's
//! [`Key::from_file_bytes`].

use std::io::{Read, Write};
use std::path::Path;

use ferry_protocol::crypto::KeyError;
use ferry_protocol::Key;

/// A key file that cannot be used. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Encoding { path: String, source: KeyError },
    #[error("key file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A key file is tiny; anything longer is not one and is not slurped.
const MAX_KEY_FILE: u64 = 4096;

/// Reads the key in `path`.
pub fn load(path: &Path) -> Result<Key, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    // Check the permissions of the file actually opened, before reading the secret.
    let mut file = std::fs::File::open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    let mut bytes = Vec::with_capacity(128);
    (&mut file)
        .take(MAX_KEY_FILE)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Key::from_file_bytes(&bytes).map_err(|source| KeyFileError::Encoding {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `key` as hex text to a new file readable only by its owner, creating parent
/// directories (mode 0700). Fails if the file exists, so a key is never overwritten.
pub fn save_new(key: &Key, path: &Path) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    writeln!(file, "{}", key.to_hex()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn key_files_are_owner_only_and_loose_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let key = Key::generate();
        save_new(&key, &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap(), key);
        assert!(save_new(&key, &path).is_err(), "must not overwrite");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&path)
            .unwrap()
            .write_all(b"not a key\n")
            .unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Encoding { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
