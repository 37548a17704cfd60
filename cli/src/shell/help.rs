//! The shell's command table: names, usage and help text.

/// One shell command's documentation.
#[derive(Debug)]
pub struct CommandHelp {
    pub name: &'static str,
    pub usage: &'static str,
    pub summary: &'static str,
    pub details: &'static str,
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[CommandHelp] = &[
    CommandHelp {
        name: "ls",
        usage: "ls [-l] [-R] [PATH]",
        summary: "list a remote directory",
        details: "-l shows kind and permissions, size, modification time; -R recurses. PATH is relative to the remote directory (see cd) or absolute with a leading /.",
    },
    CommandHelp {
        name: "cd",
        usage: "cd [PATH]",
        summary: "change the remote directory",
        details: "Without PATH, goes back to the root. `cd ..` goes up.",
    },
    CommandHelp {
        name: "pwd",
        usage: "pwd",
        summary: "print the remote directory",
        details: "",
    },
    CommandHelp {
        name: "stat",
        usage: "stat PATH",
        summary: "show a remote entry's metadata",
        details: "",
    },
    CommandHelp {
        name: "get",
        usage: "get [-r] [-f] [-j N] PATH [DEST | -o DEST] [&]",
        summary: "download a file, or a tree with -r",
        details: "Writes to DEST, given last or with -o (default: the remote name in the local directory, see lcd) via .NAME.ferry-part, renamed once the server's digest matches. An existing .NAME.ferry-part is resumed, and the whole file is then checked against the server's digest. -f overwrites an existing destination; -j N sets the files in flight for -r (default 4). A trailing & runs it in the background (see jobs). Ctrl-C cancels a foreground transfer and keeps the partial file.",
    },
    CommandHelp {
        name: "mget",
        usage: "mget [-f] GLOB...",
        summary: "download every file matching the patterns, in the background",
        details: "Patterns use * ? [..] within one directory, e.g. `mget *.log docs/*.pdf`. Files go to the local directory, 4 at a time. See jobs.",
    },
    CommandHelp {
        name: "put",
        usage: "put [-r] [-f] LOCAL [REMOTE]",
        summary: "upload a file, or a tree with -r",
        details: "Stores LOCAL (relative to the local directory, see lcd) as REMOTE, or into the remote directory under its local name when REMOTE is omitted, is a directory or ends with /. The file appears on the server only once complete and verified; an interrupted put resumes when run again. -f replaces an existing remote file; -r uploads a directory tree, creating remote directories. The server must run with --allow-upload. Ctrl-C stops the upload; the server keeps its part.",
    },
    CommandHelp {
        name: "mput",
        usage: "mput [-r] [-f] GLOB...",
        summary: "upload every local file matching the patterns into the remote directory",
        details: "Patterns are local, e.g. `mput *.log ~/notes/*.md`; directories only with -r. -f replaces existing remote files. Runs in the foreground, one file after another.",
    },
    CommandHelp {
        name: "jobs",
        usage: "jobs [-w]",
        summary: "show background transfers and their progress",
        details: "-w watches them with live progress bars (name, bytes, rate, ETA) until they end; Ctrl-C stops watching, not the transfers.",
    },
    CommandHelp {
        name: "lcd",
        usage: "lcd [DIR]",
        summary: "change the local directory",
        details: "Without DIR, goes to the home directory.",
    },
    CommandHelp {
        name: "lls",
        usage: "lls [-l] [DIR]",
        summary: "list a local directory",
        details: "",
    },
    CommandHelp {
        name: "lpwd",
        usage: "lpwd",
        summary: "print the local directory",
        details: "",
    },
    CommandHelp {
        name: "ping",
        usage: "ping [N]",
        summary: "measure round-trip times (N pings, default 3)",
        details: "",
    },
    CommandHelp {
        name: "help",
        usage: "help [COMMAND]",
        summary: "list commands, or explain one",
        details: "",
    },
    CommandHelp {
        name: "exit",
        usage: "exit",
        summary: "leave the shell (also quit, or Ctrl-D)",
        details: "Waits for background transfers first; Ctrl-C while waiting cancels them.",
    },
    CommandHelp {
        name: "quit",
        usage: "quit",
        summary: "leave the shell",
        details: "",
    },
];

/// Looks a command up by name.
pub fn find(name: &str) -> Option<&'static CommandHelp> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// The text `help` prints.
pub fn overview() -> String {
    let mut out = String::from("Commands (Tab completes commands and remote paths):\n");
    for c in COMMANDS {
        out.push_str(&format!("  {:<38} {}\n", c.usage, c.summary));
    }
    out.push_str("Lines in batch files may start with - to ignore that command's failure.\n");
    out
}

/// The text `help CMD` prints.
pub fn about(command: &CommandHelp) -> String {
    let mut out = format!("usage: {}\n{}\n", command.usage, command.summary);
    if !command.details.is_empty() {
        out.push_str(&wrap(command.details, 88));
    }
    out
}

/// Breaks `text` into lines of at most `width` columns at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line > 0 && line + 1 + len > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += len;
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_documented_once() {
        let mut names: Vec<_> = COMMANDS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len);
        assert!(overview().contains("mget"));
        assert!(about(find("get").unwrap()).starts_with("usage: get"));
        assert!(about(find("get").unwrap())
            .lines()
            .all(|l| l.chars().count() <= 88));
        assert_eq!(wrap("aa bb cc", 5), "aa bb\ncc\n");
    }
}
