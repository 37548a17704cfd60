//! The shell's uploads, as sftp has them: `put [-r] [-f] LOCAL [REMOTE]` and
//! `mput [-r] [-f] GLOB...` (into the remote directory). Both run in the foreground; Ctrl-C
//! stops them and the server keeps its partial file, which the same command resumes.

use std::path::PathBuf;

use super::local::expand_home;
use super::{help, split_flags, Shell};
use crate::commands;
use crate::progress::Progress;
use ferry_client::error::ClientError;
use ferry_client::transfer::PutOptions;

impl Shell {
    pub(super) fn put(&mut self, args: &[&str]) -> Result<(), ClientError> {
        let (flags, positional) = split_flags(args, "rRf")?;
        let usage = || {
            ClientError::Usage(format!(
                "usage: {}",
                help::find("put").map_or("", |c| c.usage)
            ))
        };
        let (local, dest) = match positional.as_slice() {
            [local] => (*local, self.remote("")),
            [local, remote] => (*local, self.remote(remote)),
            _ => return Err(usage()),
        };
        // A remote argument that names a directory keeps its slash, so the file goes into it.
        let dest = match positional.get(1) {
            Some(remote) if remote.ends_with('/') && !dest.is_empty() => format!("{dest}/"),
            _ => dest,
        };
        self.upload(vec![PathBuf::from(expand_home(local))], dest, &flags)
    }

    pub(super) fn mput(&mut self, args: &[&str]) -> Result<(), ClientError> {
        let (flags, patterns) = split_flags(args, "rRf")?;
        if patterns.is_empty() {
            return Err(ClientError::Usage(format!(
                "usage: {}",
                help::find("mput").map_or("", |c| c.usage)
            )));
        }
        let recursive = flags.contains(['r', 'R']);
        let mut locals = Vec::new();
        for pattern in &patterns {
            let expanded = expand_home(pattern);
            let matches =
                glob::glob(&expanded).map_err(|e| ClientError::Usage(format!("{pattern}: {e}")))?;
            let before = locals.len();
            for path in matches.flatten() {
                // Directories only with -r, as sftp's mput.
                if path.is_file() || (recursive && path.is_dir()) {
                    locals.push(path);
                }
            }
            if locals.len() == before {
                return Err(ClientError::Local(format!("{pattern}: no matching files")));
            }
        }
        locals.sort();
        locals.dedup();
        // The remote directory itself, so every file keeps its local name.
        let dir = self.remote("");
        let dest = if dir.is_empty() {
            dir
        } else {
            format!("{dir}/")
        };
        self.upload(locals, dest, &flags)
    }

    fn upload(
        &mut self,
        locals: Vec<PathBuf>,
        dest: String,
        flags: &str,
    ) -> Result<(), ClientError> {
        let options = PutOptions {
            force: flags.contains('f'),
            ..PutOptions::default()
        };
        let recursive = flags.contains(['r', 'R']);
        let client = self.client();
        let progress = if self.batch {
            Progress::hidden()
        } else {
            self.ctx.progress()
        };
        let ctx = self.ctx.clone();
        let shown = progress.clone();
        let result = self.transfer(|cancel| async move {
            let note = |line: &str| ctx.note(line);
            commands::put::put_paths(
                &client, &locals, &dest, recursive, &options, &shown, &cancel, &note,
            )
            .await
        });
        progress.clear();
        // New remote files: listings cached for completion are stale.
        self.cache.clear();
        result
    }
}
