//! Paths beneath a root, parsed once into a form that cannot name anything outside it.
//!
//! A [`RelPath`] only comes from one of its parsers, which check the raw string by components,
//! never by string prefix. All of them refuse: `..`, anything absolute, Windows drive or UNC
//! prefixes, backslashes, NUL bytes, empty components in the middle, names over [`MAX_NAME`]
//! bytes, paths over [`MAX_PATH`] bytes and more than `max_depth` components. On top of that:
//!
//! - [`RelPath::parse`] (request paths, spec/PROTOCOL.md §3.5): accepts the empty path (the root
//!   itself), drops `.` components and accepts one trailing `/`.
//! - [`RelPath::parse_strict`] (names written locally, e.g. from a listing): something strictly
//!   below the root, so also refuses the empty path and every `.` component.
//! - [`RelPath::parse_portable`] (manifest paths, spec/P2P.md §2.4): strict, no trailing `/`,
//!   and every name is portable to Windows: no `:`, no control characters, no trailing dot or
//!   space, no device names.
//!
//! The only way to turn one into an open file is [`crate::Jail`], which resolves it beneath
//! the root.

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
    #[error("path is empty")]
    EmptyPath,
    #[error("path contains a '.' component")]
    Dot,
    #[error("path component contains a colon (a windows drive or stream)")]
    Colon,
    #[error("path contains a control character")]
    Control,
    #[error("path component ends in a dot or space")]
    TrailingDotOrSpace,
    #[error("path component is a windows device name")]
    DeviceName,
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

/// A checked path relative to a root: zero or more plain names. The empty path is the root
/// itself. Ordered by bytes, the canonical order of manifest files.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
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

    /// Parses a path that must name something strictly below the root: the request rules,
    /// minus the root itself and `.` components (`./x` would otherwise be accepted as `x`).
    /// The depth is bounded only by [`MAX_PATH`].
    pub fn parse_strict(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::EmptyPath);
        }
        let path = Self::parse(raw, MAX_PATH)?;
        if raw.split('/').any(|c| c == ".") {
            return Err(PathError::Dot);
        }
        Ok(path)
    }

    /// Parses a manifest path (spec/P2P.md §2.4): `/`-separated, 1..=`max_depth` components,
    /// each non-empty, not `.` or `..`, without `\`, `:`, NUL or control characters, no Windows
    /// device names, no trailing dot or space. The checks run in the order the spec lists them,
    /// so the first rule broken is the one reported.
    pub fn parse_portable(raw: &str, max_depth: usize) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::EmptyPath);
        }
        if raw.len() > MAX_PATH {
            return Err(PathError::PathTooLong(raw.len()));
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute);
        }
        for (depth, component) in raw.split('/').enumerate() {
            if depth + 1 > max_depth {
                return Err(PathError::TooDeep {
                    depth: raw.split('/').count(),
                    max: max_depth,
                });
            }
            check_portable_name(component)?;
        }
        Ok(Self {
            joined: raw.to_owned(),
        })
    }

    /// `self/name`, where `name` must be one plain name (request rules).
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        let name = Self::parse_strict(name)?;
        if name.components().count() != 1 {
            return Err(PathError::TooDeep {
                depth: name.components().count(),
                max: 1,
            });
        }
        let joined = if self.is_root() {
            name.joined
        } else {
            format!("{}/{}", self.joined, name.joined)
        };
        if joined.len() > MAX_PATH {
            return Err(PathError::PathTooLong(joined.len()));
        }
        Ok(Self { joined })
    }

    /// The directory holding the last component; the root for the root itself.
    pub fn parent(&self) -> Self {
        match self.joined.rsplit_once('/') {
            Some((parent, _)) => Self {
                joined: parent.to_owned(),
            },
            None => Self::root(),
        }
    }

    /// The same directory, another last name (e.g. a partial file beside its final name).
    pub fn with_file_name(&self, name: &str) -> Result<Self, PathError> {
        self.parent().join(name)
    }

    /// The path beneath a directory of this machine, for messages and for callers that still
    /// go through the path-based std API. Only plain names are pushed.
    pub fn under(&self, root: &std::path::Path) -> std::path::PathBuf {
        let mut out = root.to_path_buf();
        for component in self.components() {
            out.push(component);
        }
        out
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

/// One manifest path component (spec/P2P.md §2.4), rules in the spec's order.
fn check_portable_name(c: &str) -> Result<(), PathError> {
    if c.is_empty() {
        return Err(PathError::Empty);
    }
    if c == "." {
        return Err(PathError::Dot);
    }
    if c == ".." {
        return Err(PathError::DotDot);
    }
    if c.len() > MAX_NAME {
        return Err(PathError::NameTooLong(c.len()));
    }
    if c.contains('\\') {
        return Err(PathError::Backslash);
    }
    // A colon makes `C:x` a drive-relative path and `a:b` an alternate data stream on Windows.
    if c.contains(':') {
        return Err(PathError::Colon);
    }
    if c.chars().any(|ch| ch.is_control()) {
        return Err(PathError::Control);
    }
    // Windows strips these, so `a.` and `a` would name the same file.
    if c.ends_with('.') || c.ends_with(' ') {
        return Err(PathError::TrailingDotOrSpace);
    }
    let stem = c.split('.').next().unwrap_or(c).to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        return Err(PathError::DeviceName);
    }
    Ok(())
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

    #[test]
    fn strict_paths_name_something_below_the_root() {
        let strict = |raw: &str| RelPath::parse_strict(raw).map(|p| p.as_str().to_owned());
        assert_eq!(strict("a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(strict("ab:c").unwrap(), "ab:c");
        assert_eq!(strict(""), Err(PathError::EmptyPath));
        assert_eq!(strict("."), Err(PathError::Dot));
        assert_eq!(strict("./x"), Err(PathError::Dot));
        assert_eq!(strict("a/./b"), Err(PathError::Dot));
        assert_eq!(strict("a/.."), Err(PathError::DotDot));
        assert_eq!(strict("/etc"), Err(PathError::Absolute));
        assert_eq!(strict("a\\b"), Err(PathError::Backslash));
        assert_eq!(strict("a//b"), Err(PathError::Empty));
        assert_eq!(strict("C:x"), Err(PathError::Prefix));
    }

    #[test]
    fn portable_paths_follow_the_manifest_rules() {
        let portable = |raw: &str| RelPath::parse_portable(raw, 32);
        assert_eq!(portable("über/ñ").unwrap().as_str(), "über/ñ");
        for (raw, want) in [
            ("", PathError::EmptyPath),
            ("/x", PathError::Absolute),
            ("a/", PathError::Empty),
            ("a/./b", PathError::Dot),
            ("../x", PathError::DotDot),
            ("a\\b", PathError::Backslash),
            ("C:x", PathError::Colon),
            ("a\nb", PathError::Control),
            ("a\0b", PathError::Control),
            ("x.", PathError::TrailingDotOrSpace),
            ("a/com1.txt", PathError::DeviceName),
        ] {
            assert_eq!(portable(raw), Err(want), "{raw:?}");
        }
        assert!(portable(&vec!["d"; 32].join("/")).is_ok());
        assert!(matches!(
            portable(&vec!["d"; 33].join("/")),
            Err(PathError::TooDeep { depth: 33, max: 32 })
        ));
    }

    #[test]
    fn joins_and_parents_stay_plain() {
        let a = RelPath::parse("a/b", 64).unwrap();
        assert_eq!(a.parent().as_str(), "a");
        assert!(a.parent().parent().is_root());
        assert!(RelPath::root().parent().is_root());
        assert_eq!(a.join("c").unwrap().as_str(), "a/b/c");
        assert_eq!(RelPath::root().join("c").unwrap().as_str(), "c");
        assert_eq!(a.with_file_name(".b.part").unwrap().as_str(), "a/.b.part");
        assert_eq!(a.join(".."), Err(PathError::DotDot));
        assert!(a.join("c/d").is_err());
        assert!(a.join("").is_err());
        assert_eq!(
            a.under(std::path::Path::new("/r")),
            std::path::PathBuf::from("/r/a/b")
        );
    }
}
