//! Splitting a shell line into words: whitespace separates, `'...'` and `"..."` quote, a
//! backslash escapes the next character, and a trailing `&` word means "in the background".

/// A parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub words: Vec<String>,
    /// The line ended with an unquoted `&`.
    pub background: bool,
}

/// Why a line did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unterminated {0} quote")]
    Unterminated(char),
    #[error("trailing backslash")]
    TrailingBackslash,
}

/// Splits `input` into words.
pub fn split(input: &str) -> Result<Line, ParseError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted_amp = false;
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                word.push(chars.next().ok_or(ParseError::TrailingBackslash)?);
                in_word = true;
                quoted_amp = true;
            }
            '\'' | '"' => {
                in_word = true;
                quoted_amp = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => {
                            word.push(chars.next().ok_or(ParseError::TrailingBackslash)?)
                        }
                        Some(other) => word.push(other),
                        None => return Err(ParseError::Unterminated(c)),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                    quoted_amp = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let mut background = false;
    if !quoted_amp {
        if let Some(last) = words.last_mut() {
            if last == "&" {
                words.pop();
                background = true;
            } else if last.len() > 1 && last.ends_with('&') {
                last.pop();
                background = true;
            }
        }
    }
    Ok(Line { words, background })
}

/// Escapes a word so that [`split`] gives it back (used by completion).
pub fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c.is_whitespace() || matches!(c, '\\' | '\'' | '"' | '&') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split(s).unwrap().words
    }

    #[test]
    fn splits_and_quotes() {
        assert_eq!(words("  get  a.txt   b "), ["get", "a.txt", "b"]);
        assert_eq!(
            words(r#"get "a b.txt" 'c d' e\ f"#),
            ["get", "a b.txt", "c d", "e f"]
        );
        assert_eq!(words(r#"ls "x\"y""#), ["ls", "x\"y"]);
        assert!(words("").is_empty());
        assert_eq!(split("get 'a"), Err(ParseError::Unterminated('\'')));
        assert_eq!(split("get a\\"), Err(ParseError::TrailingBackslash));
    }

    #[test]
    fn background_marker() {
        let line = split("get big.iso &").unwrap();
        assert_eq!(
            (line.words.as_slice(), line.background),
            (&["get".to_string(), "big.iso".into()][..], true)
        );
        assert!(split("get big.iso&").unwrap().background);
        let quoted = split("get 'a&'").unwrap();
        assert_eq!(
            (quoted.words, quoted.background),
            (vec!["get".to_string(), "a&".into()], false)
        );
        assert!(!split("get a").unwrap().background);
    }

    #[test]
    fn escape_round_trips() {
        for word in ["a b", "x'y", "&", "plain", "tab\there"] {
            assert_eq!(words(&escape(word)), [word]);
        }
    }
}
