//! The one sanitiser for remote strings (names, paths, server and peer messages) printed to a
//! terminal or a log: a hostile server or peer must not be able to rewrite the screen.

/// `s` with control characters replaced by `?`: C0, DEL and C1 (so ESC, CSI U+009B, OSC and
/// BEL cannot rewrite a terminal), and the bidirectional overrides that reorder what is shown.
///
/// This is the one sanitiser for every remote string (names, paths, server messages) printed to
/// a terminal or a log.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if is_unsafe_char(c) { '?' } else { c })
        .collect()
}

/// Characters a remote string may not carry to a terminal.
fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Longest server error message shown, in characters; the spec lets senders use 1024 bytes,
/// and a hostile one up to 65 535.
pub const MAX_REMOTE_MESSAGE: usize = 512;

/// [`printable`], cut to `max` characters with `…` when longer.
pub fn printable_cut(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if is_unsafe_char(c) { '?' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// `bytes` with a binary prefix and two decimals, as the progress bars print it:
/// `512 B`, `1.50 KiB`, `3.00 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_become_question_marks() {
        assert_eq!(printable("a\x1b]0;pwned\x07b"), "a?]0;pwned?b");
        assert_eq!(printable("c1\u{9b}31m\u{85}del\u{7f}"), "c1?31m?del?");
        assert_eq!(printable("abc\u{202e}fdp.exe"), "abc?fdp.exe");
        assert_eq!(printable("ünïcode ok"), "ünïcode ok");
        assert_eq!(printable_cut("abcdef", 3), "abc…");
        assert_eq!(printable_cut("ab", 3), "ab");
        assert_eq!(printable_cut("a\x1bbcd", 3), "a?b…");
    }

    #[test]
    fn byte_counts_read_like_the_progress_bars() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.00 EiB");
    }
}
