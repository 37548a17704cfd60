//! The shell's commands that only touch this machine (`lcd`, `lls`, `lpwd`), and the local
//! path helpers the transfer commands share with them.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use ferry_protocol::message::{Entry, EntryKind};

use super::split_flags;
use crate::commands::print_lines;
use crate::format;
use ferry_client::error::ClientError;

/// `path` made absolute against the current local directory.
pub(super) fn absolute(path: &Path) -> Result<PathBuf, ClientError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| ClientError::io(".", e))?;
    Ok(cwd.join(path))
}

pub(super) fn expand_home(path: &str) -> String {
    match (path.strip_prefix('~'), dirs::home_dir()) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", home.display())
        }
        _ => path.to_string(),
    }
}

pub(super) fn lcd(args: &[&str]) -> Result<(), ClientError> {
    let target = match args.first() {
        Some(dir) => PathBuf::from(expand_home(dir)),
        None => dirs::home_dir().ok_or_else(|| ClientError::Local("no home directory".into()))?,
    };
    std::env::set_current_dir(&target).map_err(|e| ClientError::io(&target, e))
}

pub(super) fn lls(args: &[&str]) -> Result<(), ClientError> {
    let (flags, paths) = split_flags(args, "l")?;
    let dir = PathBuf::from(expand_home(paths.first().copied().unwrap_or(".")));
    let read = std::fs::read_dir(&dir).map_err(|e| ClientError::io(&dir, e))?;
    let mut entries: Vec<Entry> = read
        .filter_map(Result::ok)
        .filter_map(|d| {
            let meta = d.metadata().ok()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .unwrap_or_default();
            #[cfg(unix)]
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            #[cfg(not(unix))]
            let mode = 0o644;
            Some(Entry {
                name: d.file_name().to_string_lossy().into_owned(),
                kind: if meta.is_dir() {
                    EntryKind::DIRECTORY
                } else if meta.is_file() {
                    EntryKind::FILE
                } else {
                    EntryKind::OTHER
                },
                size: meta.len(),
                mtime_secs: mtime.as_secs() as i64,
                mtime_nanos: mtime.subsec_nanos(),
                mode,
                link: None,
            })
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    if flags.contains('l') {
        print_lines(entries.iter().map(format::long_line));
    } else {
        print_lines(entries.iter().map(format::display_name));
    }
    Ok(())
}

pub(super) fn lpwd() -> Result<(), ClientError> {
    let dir = std::env::current_dir().map_err(|e| ClientError::io(".", e))?;
    print_lines([dir.display().to_string()]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_expands() {
        if let Some(home) = dirs::home_dir() {
            assert_eq!(expand_home("~/x"), format!("{}/x", home.display()));
        }
        assert_eq!(expand_home("a~b"), "a~b");
    }
}
