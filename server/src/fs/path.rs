//! Request paths, parsed once into a form that cannot name anything outside the root.
//!
//! A [`RelPath`] only comes from [`RelPath::parse`], which checks the raw request string by
//! components, never by string prefix: no `..`, nothing absolute, no Windows drive or UNC
//! prefixes, no backslashes, no NUL bytes, no empty components in the middle, every name at
//! most [`MAX_NAME`] bytes, the whole path at most [`MAX_PATH`] bytes and at most `max_depth`
//! components. The only way to turn it into an open file is [`super::jail::Jail`], which
//! resolves it beneath the root.

use std::fmt;

/// Longest single component, as on every common Unix file system.
pub const MAX_NAME: usize = 255;

/// Longest request path, Linux's `PATH_MAX`.
pub const MAX_PATH: usize = 4096;

/// Why a request path was refused. Messages quote at most the client's own string, never a
/// server path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path contains a nul byte")]
    Nul,
    #[error("path contains a backslash; separators are '/'")]
    Backslash,
    #[error("path is absolute; paths are relative to the served root")]
    Absolute,
    #[error("path has a windows drive or unc prefix")]
    Prefix,
    #[error("path contains a '..' component")]
    DotDot,
    #[error("path contains an empty component")]
    Empty,
    #[error("path component of {0} bytes exceeds {MAX_NAME}")]
    NameTooLong(usize),
    #[error("path of {0} bytes exceeds {MAX_PATH}")]
    PathTooLong(usize),
    #[error("path has {depth} components, more than {max}")]
    TooDeep { depth: usize, max: usize },
}

impl PathError {
    /// The wire code: over-long names and paths have their own code, everything else is an
    /// invalid path.
    pub fn code(&self) -> ferry_protocol::ErrorCode {
        use ferry_protocol::ErrorCode;
        match self {
            Self::NameTooLong(_) | Self::PathTooLong(_) => ErrorCode::NAME_TOO_LONG,
            _ => ErrorCode::INVALID_PATH,
        }
    }
}

/// A checked path relative to the served root: zero or more plain names. The empty path is
/// the root itself.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath {
    /// Components joined by `/`; never starts or ends with `/`, never contains `//`, `.`, `..`.
    joined: String,
}

impl RelPath {
    /// The root itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses a request path. `"."` components are dropped and one trailing `/` is accepted
    /// (`"docs/"` names the directory `docs`); everything else that is not a plain name is
    /// refused.
    pub fn parse(raw: &str, max_depth: usize) -> Result<Self, PathError> {
        if raw.len() > MAX_PATH {
            return Err(PathError::PathTooLong(raw.len()));
        }
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        if raw.contains('\\') {
            return Err(PathError::Backslash);
        }
        if raw.starts_with('/') {
            // Also catches `//server/share` (UNC written with forward slashes).
            return Err(PathError::Absolute);
        }
        if has_drive_prefix(raw) {
            return Err(PathError::Prefix);
        }
        let body = raw.strip_suffix('/').unwrap_or(raw);
        let mut joined = String::with_capacity(body.len());
        let mut depth = 0usize;
        if !body.is_empty() {
            for component in body.split('/') {
                match component {
                    "" => return Err(PathError::Empty),
                    "." => continue,
                    ".." => return Err(PathError::DotDot),
                    name if name.len() > MAX_NAME => {
                        return Err(PathError::NameTooLong(name.len()))
                    }
                    name => {
                        depth += 1;
                        if depth > max_depth {
                            return Err(PathError::TooDeep {
                                depth: body.split('/').count(),
                                max: max_depth,
                            });
                        }
                        if !joined.is_empty() {
                            joined.push('/');
                        }
                        joined.push_str(name);
                    }
                }
            }
        }
        Ok(Self { joined })
    }

    pub fn is_root(&self) -> bool {
        self.joined.is_empty()
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.joined.split('/').filter(|c| !c.is_empty())
    }

    /// The last component, or `""` for the root.
    pub fn file_name(&self) -> &str {
        self.joined.rsplit('/').next().unwrap_or("")
    }

    /// The path as given to the kernel relative to the root's descriptor (`"."` for the root).
    pub fn as_kernel_path(&self) -> &str {
        if self.joined.is_empty() {
            "."
        } else {
            &self.joined
        }
    }

    pub fn as_str(&self) -> &str {
        &self.joined
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.joined.is_empty() {
            f.write_str("/")
        } else {
            f.write_str(&self.joined)
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", self.joined)
    }
}

/// `C:`, `c:foo`, `C:/x`: a first component that is a drive letter and a colon.
fn has_drive_prefix(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        RelPath::parse(raw, 64).unwrap().as_str().to_owned()
    }

    fn err(raw: &str) -> PathError {
        RelPath::parse(raw, 64).unwrap_err()
    }

    #[test]
    fn plain_paths_parse() {
        assert_eq!(ok(""), "");
        assert_eq!(ok("."), "");
        assert_eq!(ok("./"), "");
        assert_eq!(ok("a"), "a");
        assert_eq!(ok("a/b/c.txt"), "a/b/c.txt");
        assert_eq!(ok("docs/"), "docs");
        assert_eq!(ok("./a/./b"), "a/b");
        assert_eq!(ok("..."), "...");
        assert_eq!(ok("a..b"), "a..b");
        assert_eq!(
            ok("ab:c"),
            "ab:c",
            "a colon is fine unless it makes a drive prefix"
        );
        assert_eq!(RelPath::parse("a/b", 64).unwrap().file_name(), "b");
        assert_eq!(RelPath::root().as_kernel_path(), ".");
    }

    #[test]
    fn every_escape_is_refused() {
        assert_eq!(err(".."), PathError::DotDot);
        assert_eq!(err("a/../../etc"), PathError::DotDot);
        assert_eq!(err("a/.."), PathError::DotDot);
        assert_eq!(err("/etc/passwd"), PathError::Absolute);
        assert_eq!(err("//server/share"), PathError::Absolute);
        assert_eq!(err("\\\\server\\share"), PathError::Backslash);
        assert_eq!(err("a\\..\\b"), PathError::Backslash);
        assert_eq!(err("C:"), PathError::Prefix);
        assert_eq!(err("c:/windows"), PathError::Prefix);
        assert_eq!(err("C:foo"), PathError::Prefix);
        assert_eq!(err("a\0b"), PathError::Nul);
        assert_eq!(err("a//b"), PathError::Empty);
        assert_eq!(err("a/b//"), PathError::Empty);
    }

    #[test]
    fn lengths_and_depth_are_capped() {
        let name = "n".repeat(MAX_NAME);
        assert_eq!(ok(&name), name);
        assert_eq!(
            err(&"n".repeat(MAX_NAME + 1)),
            PathError::NameTooLong(MAX_NAME + 1)
        );
        let long = vec!["abcdefg"; 600].join("/");
        assert_eq!(err(&long), PathError::PathTooLong(long.len()));
        let deep = vec!["d"; 65].join("/");
        assert!(matches!(err(&deep), PathError::TooDeep { max: 64, .. }));
        assert_eq!(ok(&vec!["d"; 64].join("/")).len(), 127);
        assert_eq!(
            PathError::NameTooLong(300).code(),
            ferry_protocol::ErrorCode::NAME_TOO_LONG
        );
        assert_eq!(
            PathError::DotDot.code(),
            ferry_protocol::ErrorCode::INVALID_PATH
        );
    }
}
