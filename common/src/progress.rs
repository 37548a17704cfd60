//! Progress-bar styling shared by the binaries: a bar is drawn only when wanted and stderr is a
//! terminal, so piped output and logs never carry escape sequences.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` units on stderr with `template` (indicatif's syntax), or a hidden bar that
/// still counts when `hidden` is set or stderr is not a terminal.
pub fn stderr_bar(len: u64, hidden: bool, template: &str) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(style(template));
    bar
}

/// `template` as a style; a template that does not parse falls back to the default bar rather
/// than failing a transfer over its display.
pub fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bars_still_count() {
        let bar = stderr_bar(10, true, "{bar:40} {pos}/{len} pieces");
        assert!(bar.is_hidden());
        bar.inc(3);
        assert_eq!(bar.position(), 3);
    }

    #[test]
    fn the_binaries_templates_parse() {
        for template in [
            "{bar:40} {pos}/{len} pieces {msg}",
            "verifying {bar:40} {pos}/{len} pieces",
        ] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
