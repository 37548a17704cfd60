//! Text and JSON renderings of entries, shared by the one-shot commands and the shell.

use std::time::{Duration, UNIX_EPOCH};

use ferry_protocol::message::{Entry, EntryKind};
use indicatif::HumanBytes;

/// `ls -l` style type and permission string, e.g. `drwxr-xr-x`.
pub fn mode_string(kind: EntryKind, mode: u32) -> String {
    let kind = match kind {
        EntryKind::DIRECTORY => 'd',
        EntryKind::SYMLINK => 'l',
        EntryKind::FILE => '-',
        _ => '?',
    };
    let mut out = String::with_capacity(10);
    out.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

/// Lowercase kind name.
pub fn kind_name(kind: EntryKind) -> String {
    match kind {
        EntryKind::FILE => "file".into(),
        EntryKind::DIRECTORY => "directory".into(),
        EntryKind::SYMLINK => "symlink".into(),
        EntryKind::OTHER => "other".into(),
        EntryKind(n) => format!("unknown(0x{n:02x})"),
    }
}

/// `2026-11-21 09:04` (UTC).
pub fn short_time(secs: i64, nanos: u32) -> String {
    let rfc = rfc3339(secs, nanos);
    // rfc3339 is `YYYY-MM-DDTHH:MM:SS...Z`; keep date and minutes.
    match rfc.get(..16) {
        Some(head) => head.replacen('T', " ", 1),
        None => rfc,
    }
}

/// `2026-11-21T09:04:52.000000005Z`, or the raw number for times humantime cannot render.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    if secs < 0 {
        return format!("{secs}.{nanos:09}");
    }
    let time = UNIX_EPOCH + Duration::new(secs as u64, nanos);
    if nanos == 0 {
        humantime::format_rfc3339_seconds(time).to_string()
    } else {
        humantime::format_rfc3339_nanos(time).to_string()
    }
}

/// Display name: directories get a trailing `/`, symlinks an `@`. Control characters (which
/// a hostile name could use to rewrite the terminal) are shown as `?`.
pub fn display_name(entry: &Entry) -> String {
    let name = printable(&entry.name);
    match entry.kind {
        EntryKind::DIRECTORY => format!("{name}/"),
        EntryKind::SYMLINK => format!("{name}@"),
        _ => name,
    }
}

pub use ferry_common::text::{printable, printable_cut, MAX_REMOTE_MESSAGE};

/// One JSON value as text, with C1 controls and DEL escaped as well as the C0 ones serde_json
/// escapes: a remote name inside JSON cannot reach a terminal that displays the JSON raw.
pub fn json_text(value: &serde_json::Value) -> String {
    let raw = value.to_string();
    // Outside strings JSON text is ASCII, so these characters can only be inside strings,
    // where `\uXXXX` means the same character.
    if !raw.chars().any(|c| c.is_control()) {
        return raw;
    }
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// One `ls -l` line: `drwxr-xr-x  12.5 KiB  2026-11-21 09:04  name/`.
pub fn long_line(entry: &Entry) -> String {
    let mut mode = mode_string(entry.kind, entry.mode);
    // A link the server followed: its target's details, shown as the link, like `ls -l`.
    let name = match &entry.link {
        Some(link) => {
            mode.replace_range(..1, "l");
            format!("{} -> {}", printable(&entry.name), printable(link))
        }
        None => display_name(entry),
    };
    format!(
        "{mode}  {:>10}  {}  {name}",
        HumanBytes(entry.size).to_string(),
        short_time(entry.mtime_secs, entry.mtime_nanos),
    )
}

/// A JSON object for scripts.
pub fn entry_json(entry: &Entry) -> serde_json::Value {
    serde_json::json!({
        "name": entry.name,
        "kind": kind_name(entry.kind),
        "size": entry.size,
        "mode": format!("{:o}", entry.mode & 0o7777),
        "mtime": rfc3339(entry.mtime_secs, entry.mtime_nanos),
        "mtime_secs": entry.mtime_secs,
        "mtime_nanos": entry.mtime_nanos,
    })
}

/// Multi-line description for `stat`.
pub fn stat_text(path: &str, entry: &Entry) -> String {
    let shown = if path.is_empty() { "/" } else { path };
    let rows = [
        ("path", printable(shown)),
        ("kind", kind_name(entry.kind)),
        (
            "size",
            format!("{} ({})", entry.size, HumanBytes(entry.size)),
        ),
        (
            "mode",
            format!(
                "{} ({:04o})",
                mode_string(entry.kind, entry.mode),
                entry.mode & 0o7777
            ),
        ),
        ("modified", rfc3339(entry.mtime_secs, entry.mtime_nanos)),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:>9} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind) -> Entry {
        Entry {
            name: "x".into(),
            kind,
            size: 2048,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 0,
            mode: 0o754,
            link: None,
        }
    }

    #[test]
    fn modes_and_lines() {
        assert_eq!(mode_string(EntryKind::DIRECTORY, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(EntryKind::FILE, 0o640), "-rw-r-----");
        assert_eq!(
            long_line(&entry(EntryKind::DIRECTORY)),
            "drwxr-xr--    2.00 KiB  2023-11-14 22:13  x/"
        );
        assert_eq!(short_time(0, 0), "1970-01-01 00:00");
        assert_eq!(rfc3339(1, 5), "1970-01-01T00:00:01.000000005Z");
        assert_eq!(entry_json(&entry(EntryKind::FILE))["mode"], "754");
        let mut evil = entry(EntryKind::FILE);
        evil.name = "a\x1b]0;pwned\x07b".into();
        assert_eq!(display_name(&evil), "a?]0;pwned?b");
        evil.name = "c1\u{9b}31m\u{85}del\u{7f}".into();
        assert_eq!(display_name(&evil), "c1?31m?del?");
        let json = json_text(&entry_json(&evil));
        assert!(json.contains("c1\\u009b31m\\u0085del\\u007f"), "{json}");
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["name"], evil.name);
        assert_eq!(printable_cut("abcdef", 3), "abc…");
        assert_eq!(printable_cut("ab", 3), "ab");
    }
}
