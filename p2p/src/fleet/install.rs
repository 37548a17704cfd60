//! A follower's install directory (spec/P2P.md §8.5): every version in its own directory, a
//! `current` link switched by one rename, the apply hook, rollback and pruning.
//!
//! ```text
//! DIR/current -> versions/7/app           the running version's top-level entry
//! DIR/versions/6/app/...                  an earlier version, kept for rollback
//! DIR/versions/7/app/...
//! DIR/versions/.8.partial/app/...         a download in progress; never `current`
//! DIR/.fleet/record                       the newest accepted signed record
//! DIR/.fleet/manifest-8                   its manifest
//! DIR/.fleet/state                        "applied V" and "failed V" lines
//! DIR/.fleet/members                      gossip addresses heard from, one a line
//! ```
//!
//! A version directory gets its name only after every piece is verified and synced, and
//! `current` only ever points at one, so a process killed at any point leaves either the old
//! `current` or the new one, never a half-installed version.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the apply hook may run before it is killed and counted as failed (as long as
/// Puppet gives an `exec`): long enough for a service restart, short enough that a hook that
/// hangs does not stop the follower from installing the next release.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// An install directory that cannot be used; each message names the path.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} has no version to roll back to before version {1}")]
    NothingToRollBackTo(PathBuf, u64),
    #[error("{0} has no current version")]
    NoCurrent(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the last apply did, as `.fleet/state` keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyState {
    /// The newest version whose install was attempted (hook run), 0 for none. A version at or
    /// below it is not installed again by itself.
    pub applied: u64,
    /// The version whose hook failed last, if none applied after it succeeded; 0 for none.
    pub failed: u64,
}

/// How an apply ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Ok,
    /// The hook failed; `current` is back at `restored` (None: there was no previous one).
    HookFailed {
        status: String,
        restored: Option<u64>,
    },
}

/// One follower's install directory.
#[derive(Clone, Debug)]
pub struct InstallDir {
    dir: PathBuf,
}

impl InstallDir {
    /// Creates `DIR/versions` and `DIR/.fleet` if needed and clears what a crash left half
    /// made (a temporary link); partial downloads stay, to be resumed.
    pub fn open(dir: &Path) -> Result<Self, InstallError> {
        for sub in ["versions", ".fleet"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        let tmp = dir.join(".current.new");
        let _ = std::fs::remove_file(&tmp);
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn state_file(&self, name: &str) -> PathBuf {
        self.dir.join(".fleet").join(name)
    }

    /// Where version `v` is downloaded.
    pub fn partial_dir(&self, version: u64) -> PathBuf {
        self.dir
            .join("versions")
            .join(format!(".{version}.partial"))
    }

    pub fn version_dir(&self, version: u64) -> PathBuf {
        self.dir.join("versions").join(version.to_string())
    }

    /// Whether version `v` is complete on disk.
    pub fn has_version(&self, version: u64) -> bool {
        self.version_dir(version).is_dir()
    }

    /// Complete versions on disk, oldest first.
    pub fn versions(&self) -> Result<Vec<u64>, InstallError> {
        let root = self.dir.join("versions");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&root).map_err(io(&root))? {
            let entry = entry.map_err(io(&root))?;
            if let Some(v) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                out.push(v);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The version `current` points at and the path it names, if any.
    pub fn current(&self) -> Option<(u64, PathBuf)> {
        let link = self.dir.join("current");
        let target = std::fs::read_link(&link).ok()?;
        let mut parts = target.components();
        if parts.next()?.as_os_str() != "versions" {
            return None;
        }
        let version = parts.next()?.as_os_str().to_str()?.parse().ok()?;
        Some((version, self.dir.join(target)))
    }

    /// Gives a finished download its version name (one rename, then synced).
    pub fn finish_version(&self, version: u64) -> Result<PathBuf, InstallError> {
        let from = self.partial_dir(version);
        let to = self.version_dir(version);
        sync_tree(&from)?;
        std::fs::rename(&from, &to).map_err(io(&to))?;
        sync_dir(&self.dir.join("versions"))?;
        Ok(to)
    }

    /// Points `current` at `versions/V/TOP` (or `versions/V` without a top entry) in one
    /// rename over the old link.
    pub fn switch(&self, version: u64, top: Option<&str>) -> Result<PathBuf, InstallError> {
        let mut target = PathBuf::from("versions").join(version.to_string());
        if let Some(top) = top {
            target.push(top);
        }
        let tmp = self.dir.join(".current.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
        let link = self.dir.join("current");
        std::fs::rename(&tmp, &link).map_err(io(&link))?;
        sync_dir(&self.dir)?;
        Ok(self.dir.join(target))
    }

    /// The top-level entry `current` names inside a version directory (to switch back to it).
    fn top_of(&self, version: u64) -> Option<String> {
        let dir = self.version_dir(version);
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        (names.len() == 1).then(|| names.remove(0))
    }

    /// `apply_with_timeout` with [`DEFAULT_HOOK_TIMEOUT`].
    pub fn apply(
        &self,
        version: u64,
        top: Option<&str>,
        hook: Option<&str>,
    ) -> Result<Applied, InstallError> {
        self.apply_with_timeout(version, top, hook, DEFAULT_HOOK_TIMEOUT)
    }

    /// Switches to version `v` and runs `hook` (`sh -c HOOK ferry-apply PATH`, with
    /// FERRY_VERSION and FERRY_RELEASE_PATH set); if it fails, or is still running after
    /// `timeout` (it is then killed with its whole process group), `current` goes back to what
    /// it was. The outcome is recorded in `.fleet/state`.
    pub fn apply_with_timeout(
        &self,
        version: u64,
        top: Option<&str>,
        hook: Option<&str>,
        timeout: Duration,
    ) -> Result<Applied, InstallError> {
        let previous = self.current();
        let path = self.switch(version, top)?;
        let outcome = match hook.map(|hook| self.run_hook(hook, version, &path, timeout)) {
            None | Some(Ok(())) => Applied::Ok,
            Some(Err(status)) => {
                let restored = match &previous {
                    Some((v, _)) => {
                        let top = self.top_of(*v);
                        self.switch(*v, top.as_deref())?;
                        Some(*v)
                    }
                    None => {
                        let link = self.dir.join("current");
                        std::fs::remove_file(&link).map_err(io(&link))?;
                        sync_dir(&self.dir)?;
                        None
                    }
                };
                Applied::HookFailed { status, restored }
            }
        };
        let failed = match outcome {
            Applied::Ok => 0,
            Applied::HookFailed { .. } => version,
        };
        self.save_state(ApplyState {
            applied: version,
            failed,
        })?;
        Ok(outcome)
    }

    /// Runs the hook to its end or to `timeout`; `Err` holds why it failed, for people.
    fn run_hook(
        &self,
        hook: &str,
        version: u64,
        path: &Path,
        timeout: Duration,
    ) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(hook)
            .arg("ferry-apply")
            .arg(path)
            .env("FERRY_VERSION", version.to_string())
            .env("FERRY_RELEASE_PATH", path)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            // Its own process group, so that a timeout kills what the hook started too.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(status.to_string()),
                Ok(None) => {}
                Err(e) => return Err(format!("cannot wait for the hook: {e}")),
            }
            let now = Instant::now();
            if now >= deadline {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "timed out after {}; killed",
                    humantime::format_duration(timeout)
                ));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Switches back to the newest complete version older than the current one.
    pub fn rollback(&self) -> Result<(u64, u64), InstallError> {
        let (now, _) = self
            .current()
            .ok_or_else(|| InstallError::NoCurrent(self.dir.clone()))?;
        let previous = self
            .versions()?
            .into_iter()
            .filter(|&v| v < now)
            .max()
            .ok_or_else(|| InstallError::NothingToRollBackTo(self.dir.clone(), now))?;
        let top = self.top_of(previous);
        self.switch(previous, top.as_deref())?;
        Ok((now, previous))
    }

    /// Removes complete versions beyond the newest `keep` (never the current one) and
    /// partial downloads older than `below`.
    pub fn prune(&self, keep: usize, below: u64) -> Result<Vec<u64>, InstallError> {
        let current = self.current().map(|(v, _)| v);
        let versions = self.versions()?;
        let mut removed = Vec::new();
        let cut = versions.len().saturating_sub(keep.max(1));
        for &v in &versions[..cut] {
            if Some(v) == current {
                continue;
            }
            let dir = self.version_dir(v);
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            removed.push(v);
        }
        let root = self.dir.join("versions");
        for entry in std::fs::read_dir(&root).map_err(io(&root))?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let partial = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".partial"))
                .and_then(|n| n.parse::<u64>().ok());
            if partial.is_some_and(|v| v < below) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(removed)
    }

    pub fn load_state(&self) -> ApplyState {
        let text = std::fs::read_to_string(self.state_file("state")).unwrap_or_default();
        let mut state = ApplyState::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let value = words.nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            match line.split_whitespace().next() {
                Some("applied") => state.applied = value,
                Some("failed") => state.failed = value,
                _ => {}
            }
        }
        state
    }

    pub fn save_state(&self, state: ApplyState) -> Result<(), InstallError> {
        self.write_atomic(
            "state",
            format!("applied {}\nfailed {}\n", state.applied, state.failed).as_bytes(),
        )
    }

    /// Writes `.fleet/NAME` through a temporary file, synced, then renamed.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), InstallError> {
        let path = self.state_file(name);
        let tmp = self.state_file(&format!(".{name}.new"));
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir.join(".fleet"))
    }
}

/// SIGKILL to the hook's process group: the shell and whatever it started.
fn kill_group(pgid: u32) {
    let pid = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
    }
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Syncs every file and directory under `root`: a version is named only once it is durable.
fn sync_tree(root: &Path) -> Result<(), InstallError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let kind = entry.file_type().map_err(io(&dir))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                std::fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&path))?;
            }
        }
        sync_dir(&dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A complete version `v` holding `app/version.txt` = "v".
    fn install(dir: &InstallDir, v: u64) {
        let partial = dir.partial_dir(v).join("app");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("version.txt"), v.to_string()).unwrap();
        dir.finish_version(v).unwrap();
    }

    fn running(dir: &InstallDir) -> String {
        std::fs::read_to_string(dir.path().join("current/version.txt")).unwrap()
    }

    #[test]
    fn apply_switches_current_and_rollback_goes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstallDir::open(tmp.path()).unwrap();
        assert!(dir.current().is_none());
        install(&dir, 1);
        assert_eq!(dir.apply(1, Some("app"), None).unwrap(), Applied::Ok);
        assert_eq!(running(&dir), "1");
        install(&dir, 2);
        assert_eq!(
            dir.apply(2, Some("app"), Some("true")).unwrap(),
            Applied::Ok
        );
        assert_eq!(running(&dir), "2");
        assert_eq!(dir.current().unwrap().0, 2);
        assert_eq!(dir.rollback().unwrap(), (2, 1));
        assert_eq!(running(&dir), "1");
        assert!(matches!(
            dir.rollback(),
            Err(InstallError::NothingToRollBackTo(_, 1))
        ));
        assert!(!tmp.path().join(".current.new").exists());
    }

    #[test]
    fn a_failing_hook_restores_the_previous_current_and_is_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstallDir::open(tmp.path()).unwrap();
        install(&dir, 1);
        dir.apply(1, Some("app"), None).unwrap();
        install(&dir, 2);
        // The hook sees the new version as current and its path as $1, then fails.
        let marker = tmp.path().join("hook-saw");
        let hook = format!(
            "cat current/version.txt > {m}; echo \" $1 $FERRY_VERSION\" >> {m}; exit 3",
            m = marker.display()
        );
        let outcome = dir.apply(2, Some("app"), Some(&hook)).unwrap();
        assert!(
            matches!(&outcome, Applied::HookFailed { restored: Some(1), status } if status.contains('3')),
            "{outcome:?}"
        );
        let saw = std::fs::read_to_string(&marker).unwrap();
        assert!(saw.starts_with("2 "), "{saw}");
        assert!(saw.contains("versions/2/app 2"), "{saw}");
        assert_eq!(running(&dir), "1");
        assert_eq!(
            dir.load_state(),
            ApplyState {
                applied: 2,
                failed: 2
            }
        );
    }

    #[test]
    fn a_hook_that_hangs_is_killed_with_its_children_and_counts_as_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstallDir::open(tmp.path()).unwrap();
        install(&dir, 1);
        dir.apply(1, Some("app"), None).unwrap();
        install(&dir, 2);
        // The hook starts a child that would outlive it, records its pid, then hangs.
        let pid_file = tmp.path().join("child.pid");
        let hook = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let outcome = dir
            .apply_with_timeout(2, Some("app"), Some(&hook), Duration::from_millis(300))
            .unwrap();
        // Bounds a failure only: the hook would run for 1000 s.
        assert!(started.elapsed() < Duration::from_secs(60));
        assert!(
            matches!(&outcome, Applied::HookFailed { restored: Some(1), status } if status.contains("timed out after 300ms")),
            "{outcome:?}"
        );
        assert_eq!(running(&dir), "1");
        assert_eq!(
            dir.load_state(),
            ApplyState {
                applied: 2,
                failed: 2
            }
        );
        // The child got SIGKILL with its group: gone, or a zombie awaiting its new parent.
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let gone = || {
            std::fs::read_to_string(&stat).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the hook's child {} still runs", pid.trim());
    }

    #[test]
    fn a_failing_first_hook_leaves_no_current() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstallDir::open(tmp.path()).unwrap();
        install(&dir, 1);
        let outcome = dir.apply(1, Some("app"), Some("exit 1")).unwrap();
        assert!(matches!(
            outcome,
            Applied::HookFailed { restored: None, .. }
        ));
        assert!(dir.current().is_none());
    }

    #[test]
    fn a_partial_version_is_never_listed_and_prune_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstallDir::open(tmp.path()).unwrap();
        for v in 1..=4 {
            install(&dir, v);
        }
        std::fs::create_dir_all(dir.partial_dir(5).join("app")).unwrap();
        std::fs::create_dir_all(dir.partial_dir(3).join("app")).unwrap();
        assert_eq!(dir.versions().unwrap(), vec![1, 2, 3, 4]);
        dir.apply(2, Some("app"), None).unwrap();
        // Keep 2: versions 3 and 4 stay, 1 goes, and 2 stays because it runs.
        assert_eq!(dir.prune(2, 5).unwrap(), vec![1]);
        assert_eq!(dir.versions().unwrap(), vec![2, 3, 4]);
        assert!(dir.partial_dir(5).exists());
        assert!(!dir.partial_dir(3).exists());
    }

    #[test]
    fn a_crash_between_link_and_rename_leaves_the_old_current() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstallDir::open(tmp.path()).unwrap();
        install(&dir, 1);
        dir.apply(1, Some("app"), None).unwrap();
        install(&dir, 2);
        // What a kill after the new link is made but before the rename leaves behind.
        std::os::unix::fs::symlink("versions/2/app", tmp.path().join(".current.new")).unwrap();
        let dir = InstallDir::open(tmp.path()).unwrap();
        assert_eq!(running(&dir), "1");
        assert!(!tmp.path().join(".current.new").exists());
    }
}
