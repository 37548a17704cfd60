//! `ferry://[ID@]HOST[:PORT][,HOST[:PORT]...][/PATH]` server addresses and `udp://HOST:PORT`
//! tracker addresses: parsing and display.
//!
//! Each `HOST[:PORT]` is a connection hint (spec §13.8): a DNS name, an IPv4 address or an IPv6
//! address in brackets (`ferry://[::1]:7000/`), with its own port, default [`DEFAULT_PORT`]. The
//! client races the hints (Happy Eyeballs); [`FerryUrl::host`] and [`FerryUrl::port`] are the
//! first one, [`FerryUrl::hints`] all of them, at most [`MAX_HINTS`]. The path is relative to the served root: leading and
//! duplicate slashes are dropped and `%XX` escapes are decoded, so `ferry://h/a%20b//c/` names
//! `a b/c`. A bare `HOST[:PORT][/PATH]` without the scheme is accepted too. `ID@` names the
//! server that must answer by its node id (spec §13.1): the client then runs the identity
//! handshake and refuses any other key, whichever hint answers. `NAME@` before that
//! (`ferry://alice@HUB/`, `ferry://alice@HUBID@HOST/`) names a node registered at the hub the
//! rest of the address reaches (spec/HUB.md §2).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ferry_protocol::identity::NodeId;

/// The port a server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 6789;

/// Connection hints one address may carry: each costs a connection attempt (spec §13.8).
pub const MAX_HINTS: usize = 16;

/// One connection hint: where the server may be reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hint {
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl Hint {
    /// `host:port`, with brackets around IPv6 addresses, for `lookup_host`, messages and the
    /// known-servers file.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host as an IP address, if it is one (no resolution needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

impl FromStr for Hint {
    type Err = UrlError;

    /// `HOST[:PORT]`, as one hint of an address.
    fn from_str(input: &str) -> Result<Self, UrlError> {
        parse_hint(input.trim(), input)
    }
}

/// A parsed Ferry address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FerryUrl {
    /// A name registered at a hub (`ferry://NAME@HUB/`, spec/HUB.md §2): the server is the node
    /// holding it, and the hints and `server_id` are then the hub's.
    pub name: Option<String>,
    /// The node id of the server that must answer (`ferry://ID@HOST/`), if the address names one.
    pub server_id: Option<NodeId>,
    /// The first hint's host name or IP address, without brackets.
    pub host: String,
    /// The first hint's port.
    pub port: u16,
    /// The hints after the first, in the address's order.
    more_hints: Vec<Hint>,
    /// Path relative to the served root, `/`-separated, no leading or trailing slash; `""` is the
    /// root.
    pub path: String,
}

/// Why an address did not parse. Each message is one sentence naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("unsupported scheme {0:?}: addresses look like ferry://HOST[:PORT][/PATH]")]
    Scheme(String),
    #[error("address {0:?} has no host: addresses look like ferry://HOST[:PORT][/PATH]")]
    NoHost(String),
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    Port(String),
    #[error("invalid IPv6 address {0:?} in brackets")]
    Ipv6(String),
    #[error("invalid host {0:?}")]
    Host(String),
    #[error("invalid percent escape in path {0:?}")]
    Escape(String),
    #[error("invalid server id {text:?} before '@': {reason}")]
    Id { text: String, reason: String },
    #[error("empty connection hint in {0:?}: hints are HOST[:PORT] separated by ','")]
    EmptyHint(String),
    #[error("{0} connection hints: an address carries at most 16")]
    TooManyHints(usize),
}

impl FerryUrl {
    /// An address for `addr` and the root path.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Self {
            name: None,
            server_id: None,
            host: addr.ip().to_string(),
            port: addr.port(),
            more_hints: Vec::new(),
            path: String::new(),
        }
    }

    /// The same server with another path (normalised like a parsed path).
    pub fn with_path(&self, path: &str) -> Self {
        Self {
            name: self.name.clone(),
            server_id: self.server_id,
            host: self.host.clone(),
            port: self.port,
            more_hints: self.more_hints.clone(),
            path: normalize_path(path),
        }
    }

    /// The first hint's `host:port`, with brackets around IPv6 addresses, for `lookup_host` and
    /// messages.
    pub fn authority(&self) -> String {
        self.first_hint().authority()
    }

    /// Every connection hint, the first ([`FerryUrl::host`], [`FerryUrl::port`]) first.
    pub fn hints(&self) -> Vec<Hint> {
        let mut hints = Vec::with_capacity(1 + self.more_hints.len());
        hints.push(self.first_hint());
        hints.extend(self.more_hints.iter().cloned());
        hints
    }

    fn first_hint(&self) -> Hint {
        Hint {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The host as an IP address, if it is one (no resolution needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for FerryUrl {
    type Err = UrlError;

    fn from_str(input: &str) -> Result<Self, UrlError> {
        let s = input.trim();
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ferry") => rest,
            Some((scheme, _)) => return Err(UrlError::Scheme(scheme.to_string())),
            None => s,
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        // `NAME@`, `ID@` or `NAME@ID@` (spec/HUB.md §2): a name has at most 32 characters and
        // an id exactly 34, so the two cannot be confused.
        let (name, authority) = match authority.split_once('@') {
            Some((name, rest)) if is_hub_name(name) => (Some(name.to_string()), rest),
            _ => (None, authority),
        };
        let (server_id, authority) = match authority.split_once('@') {
            Some((id, rest)) => {
                let id = id.parse::<NodeId>().map_err(|e| UrlError::Id {
                    text: id.to_string(),
                    reason: e.to_string(),
                })?;
                (Some(id), rest)
            }
            None => (None, authority),
        };
        if authority.is_empty() {
            return Err(UrlError::NoHost(input.to_string()));
        }
        let mut hints = Vec::new();
        for text in authority.split(',') {
            if text.is_empty() {
                return Err(UrlError::EmptyHint(authority.to_string()));
            }
            hints.push(parse_hint(text, input)?);
        }
        if hints.len() > MAX_HINTS {
            return Err(UrlError::TooManyHints(hints.len()));
        }
        let mut hints = hints.into_iter();
        // `authority` is not empty, so `split` gave at least one hint.
        let Some(Hint { host, port }) = hints.next() else {
            return Err(UrlError::NoHost(input.to_string()));
        };
        let path = percent_decode(path).ok_or_else(|| UrlError::Escape(path.to_string()))?;
        Ok(Self {
            name,
            server_id,
            host,
            port,
            more_hints: hints.collect(),
            path: normalize_path(&path),
        })
    }
}

/// One `HOST[:PORT]` hint; `input` is the whole address, for messages.
fn parse_hint(authority: &str, input: &str) -> Result<Hint, UrlError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| UrlError::Ipv6(authority.to_string()))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::Ipv6(host.to_string()));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| UrlError::Port(p.to_string()))?,
            ),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost(input.to_string()));
    }
    if host.contains(|c: char| c.is_whitespace() || "@?#,[]/".contains(c)) {
        return Err(UrlError::Host(host.to_string()));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(UrlError::Port(p.to_string())),
        },
    };
    Ok(Hint {
        host: host.to_string(),
        port,
    })
}

impl fmt::Display for FerryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .name
            .as_ref()
            .map(|name| format!("{name}@"))
            .unwrap_or_default();
        let id = self
            .server_id
            .map(|id| format!("{name}{id}@"))
            .unwrap_or(name);
        let hints: Vec<String> = self.hints().iter().map(Hint::authority).collect();
        write!(
            f,
            "ferry://{id}{}/{}",
            hints.join(","),
            percent_encode(&self.path)
        )
    }
}

/// Whether `text` is a hub name (spec/HUB.md §2): 1 to 32 characters of `a-z`, `0-9` and `-`,
/// starting with a letter and not ending with `-`.
pub fn is_hub_name(text: &str) -> bool {
    (1..=32).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && !text.ends_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Drops empty and `.` components so `/a//b/./` becomes `a/b`. `..` is kept: the server's jail
/// decides what it means (and refuses escapes with INVALID_PATH).
pub fn normalize_path(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Joins a remote directory and a relative or absolute (`/`-prefixed) path, resolving `..`
/// lexically without ever going above the root. Used by the shell's `cd` and friends.
pub fn join_remote(cwd: &str, path: &str) -> String {
    let mut parts: Vec<&str> = if path.starts_with('/') {
        Vec::new()
    } else {
        cwd.split('/').filter(|c| !c.is_empty()).collect()
    };
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A tracker address, `udp://HOST:PORT` (spec P2P.md: trackers speak UDP). The port is required:
/// trackers have no default port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrackerUrl {
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

/// Why a tracker address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tracker {0:?} is not udp://HOST:PORT")]
pub struct TrackerUrlError(pub String);

impl TrackerUrl {
    /// `host:port`, with brackets around IPv6 addresses, for `lookup_host`.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for TrackerUrl {
    type Err = TrackerUrlError;

    fn from_str(input: &str) -> Result<Self, TrackerUrlError> {
        let bad = || TrackerUrlError(input.to_string());
        let rest = input.trim();
        let rest = match rest.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("udp") => rest,
            _ => return Err(bad()),
        };
        let authority = rest.trim_end_matches('/');
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad());
            }
            (host, after.strip_prefix(':').ok_or_else(bad)?)
        } else {
            authority.split_once(':').ok_or_else(bad)?
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || "@?#/[]".contains(c)) {
            return Err(bad());
        }
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Self {
                host: host.to_string(),
                port,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for TrackerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "udp://{}", self.authority())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> FerryUrl {
        s.parse().unwrap()
    }

    #[test]
    fn parses_host_port_and_path() {
        let u = url("ferry://example.org:7000/docs/a.txt");
        assert_eq!(u.host, "example.org");
        assert_eq!(u.port, 7000);
        assert_eq!(u.path, "docs/a.txt");
        assert_eq!(u.to_string(), "ferry://example.org:7000/docs/a.txt");
    }

    #[test]
    fn default_port_and_root() {
        let u = url("ferry://host");
        assert_eq!((u.port, u.path.as_str()), (DEFAULT_PORT, ""));
        assert_eq!(u.to_string(), "ferry://host:6789/");
        assert_eq!(url("ferry://host/"), u);
        assert_eq!(url("host"), u, "the scheme is optional");
    }

    #[test]
    fn ipv6_in_brackets() {
        let u = url("ferry://[::1]:7000/x");
        assert_eq!(u.host, "::1");
        assert_eq!(u.ip(), Some("::1".parse().unwrap()));
        assert_eq!(u.authority(), "[::1]:7000");
        assert_eq!(u.to_string(), "ferry://[::1]:7000/x");
        assert_eq!(url("ferry://[fe80::1]").port, DEFAULT_PORT);
        assert!(matches!(
            "ferry://[nope]:1/".parse::<FerryUrl>(),
            Err(UrlError::Ipv6(_))
        ));
        assert!(matches!(
            "ferry://[::1/".parse::<FerryUrl>(),
            Err(UrlError::Ipv6(_))
        ));
    }

    #[test]
    fn percent_escapes_and_slashes() {
        let u = url("ferry://h/a%20b//c/./");
        assert_eq!(u.path, "a b/c");
        assert_eq!(u.to_string(), "ferry://h:6789/a%20b/c");
        assert_eq!(url(&u.to_string()), u, "display round-trips");
        assert!(matches!(
            "ferry://h/%zz".parse::<FerryUrl>(),
            Err(UrlError::Escape(_))
        ));
    }

    #[test]
    fn rejects_bad_input_with_one_sentence() {
        for (input, expect) in [
            ("http://h/", "unsupported scheme"),
            ("ferry:///x", "has no host"),
            ("ferry://h:0/", "invalid port"),
            ("ferry://h:99999/", "invalid port"),
            ("ferry://h:x/", "invalid port"),
            ("ferry://:7/", "has no host"),
        ] {
            let err = input.parse::<FerryUrl>().unwrap_err().to_string();
            assert!(err.contains(expect), "{input}: {err}");
        }
    }

    #[test]
    fn a_server_id_before_the_host_names_who_must_answer() {
        let id = ferry_protocol::identity::Identity::from_secret([1; 32]).id();
        let parsed = url(&format!("ferry://{id}@127.0.0.1:7000/docs"));
        assert_eq!(parsed.server_id, Some(id));
        assert_eq!((parsed.host.as_str(), parsed.port), ("127.0.0.1", 7000));
        assert_eq!(
            parsed.to_string(),
            format!("ferry://{id}@127.0.0.1:7000/docs")
        );
        assert_eq!(parsed.with_path("x").server_id, Some(id));
        let v6 = url(&format!("{}@[::1]/", id.to_string().to_uppercase()));
        assert_eq!((v6.server_id, v6.host.as_str()), (Some(id), "::1"));
        assert_eq!(url("ferry://h/").server_id, None);
        for (input, expect) in [
            // Neither a name (uppercase, '_') nor 34 characters long.
            ("ferry://Ab_c@h/".to_string(), "invalid server id \"Ab_c\""),
            (format!("ferry://{id}@/x"), "has no host"),
            (format!("ferry://{id}@h1,,h2:7/"), "empty connection hint"),
        ] {
            let err = input.parse::<FerryUrl>().unwrap_err().to_string();
            assert!(err.contains(expect), "{input}: {err}");
        }
    }

    #[test]
    fn several_hints_each_with_its_own_port() {
        let id = ferry_protocol::identity::Identity::from_secret([1; 32]).id();
        let text = format!("ferry://{id}@10.0.0.1,[2001:db8::1]:7000,files.example.org:7001/a%20b");
        let u = url(&text);
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", DEFAULT_PORT));
        assert_eq!(u.authority(), "10.0.0.1:6789");
        let hints: Vec<String> = u.hints().iter().map(Hint::authority).collect();
        assert_eq!(
            hints,
            [
                "10.0.0.1:6789",
                "[2001:db8::1]:7000",
                "files.example.org:7001"
            ]
        );
        assert_eq!(u.hints()[1].ip(), Some("2001:db8::1".parse().unwrap()));
        assert_eq!((u.server_id, u.path.as_str()), (Some(id), "a b"));
        let shown = u.to_string();
        assert_eq!(
            shown,
            format!("ferry://{id}@10.0.0.1:6789,[2001:db8::1]:7000,files.example.org:7001/a%20b")
        );
        assert_eq!(url(&shown), u, "display round-trips");
        assert_eq!(u.with_path("x").hints(), u.hints());
        assert_eq!(url("h1,h2").hints().len(), 2, "no scheme, no id");
        assert_eq!(url("ferry://h/").hints().len(), 1);
    }

    #[test]
    fn bad_hints_are_refused_with_one_sentence() {
        let many = vec!["h"; MAX_HINTS + 1].join(",");
        for (input, expect) in [
            ("ferry://h1,/".to_string(), "empty connection hint"),
            ("ferry://,h1/".to_string(), "empty connection hint"),
            ("ferry://h1,:7/".to_string(), "has no host"),
            ("ferry://h1,h2:0/".to_string(), "invalid port \"0\""),
            ("ferry://h1,[::1/".to_string(), "invalid IPv6"),
            ("ferry://h1,a]b/".to_string(), "invalid host"),
            (
                format!("ferry://{many}/"),
                "17 connection hints: an address carries at most 16",
            ),
        ] {
            let err = input.parse::<FerryUrl>().unwrap_err().to_string();
            assert!(err.contains(expect), "{input}: {err}");
        }
        assert_eq!(
            url(&format!("ferry://{}/", vec!["h"; MAX_HINTS].join(",")))
                .hints()
                .len(),
            16
        );
    }

    #[test]
    fn joins_remote_paths() {
        assert_eq!(join_remote("a/b", "c"), "a/b/c");
        assert_eq!(join_remote("a/b", ".."), "a");
        assert_eq!(join_remote("a/b", "../../.."), "");
        assert_eq!(join_remote("a/b", "/x/y"), "x/y");
        assert_eq!(join_remote("", "./x/"), "x");
    }

    #[test]
    fn tracker_urls_need_udp_and_a_port() {
        let t: TrackerUrl = "udp://10.0.0.1:6969/".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.1", 6969));
        assert_eq!(t.to_string(), "udp://10.0.0.1:6969");
        let t: TrackerUrl = "udp://[::1]:7".parse().unwrap();
        assert_eq!(t.authority(), "[::1]:7");
        assert_eq!(t.to_string().parse::<TrackerUrl>().unwrap(), t);
        for bad in [
            "http://h:1",
            "udp://h",
            "udp://h:0",
            "udp://:5",
            "udp://h:x",
            "udp://[::1]",
            "h:5",
        ] {
            let err = bad.parse::<TrackerUrl>().unwrap_err().to_string();
            assert!(err.contains("udp://HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_hub_name_comes_before_the_hub_and_is_never_an_id() {
        let id = ferry_protocol::identity::Identity::from_secret([1; 32]).id();
        let plain = url("ferry://alice@hub.example.org:7000/docs");
        assert_eq!(plain.name.as_deref(), Some("alice"));
        assert_eq!(plain.server_id, None);
        assert_eq!(plain.authority(), "hub.example.org:7000");
        assert_eq!(plain.to_string(), "ferry://alice@hub.example.org:7000/docs");
        let pinned = url(&format!("ferry://bob-2@{id}@10.0.0.1:7000/"));
        assert_eq!(pinned.name.as_deref(), Some("bob-2"));
        assert_eq!(pinned.server_id, Some(id));
        assert_eq!(
            pinned.to_string(),
            format!("ferry://bob-2@{id}@10.0.0.1:7000/")
        );
        assert_eq!(url(&pinned.to_string()), pinned);
        let by_id = url(&format!("ferry://{id}@h/"));
        assert_eq!((by_id.name, by_id.server_id), (None, Some(id)));
        assert_eq!(url("ferry://h/").name, None);
        for name in ["a", "alice", "a-1", &"a".repeat(32)] {
            assert!(is_hub_name(name), "{name}");
        }
        for not in [
            "",
            "Alice",
            "1a",
            "a-",
            "a_b",
            &"a".repeat(33),
            &id.to_string(),
        ] {
            assert!(!is_hub_name(not), "{not}");
        }
    }
}
