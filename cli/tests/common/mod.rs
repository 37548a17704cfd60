//! Test support for the `ferry` binary: a runner with an isolated HOME, plus the shared test kit
//! (servers, proxy, data) from `ferry-testkit`.

// Test support: a failed setup step should fail the test loudly.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use ferry_protocol::Key;
pub use ferry_testkit::{data, tree, wait_for, Proxy, TestServer};

/// An isolated environment for the `ferry` binary: HOME, config and data dirs in a temp dir,
/// no FERRY_KEY.
pub struct Env {
    pub home: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("XDG_DATA_HOME", self.home.path().join("data"))
            .env_remove("FERRY_KEY")
            .env_remove("RUST_LOG")
            .current_dir(self.home.path());
        cmd
    }

    /// Runs `ferry ARGS` with `--key` for `key`, in `dir`.
    pub fn ferry(&self, key: &Key, dir: &Path, args: &[&str]) -> Run {
        // Joined with `=`: a base64 key may start with `-` (see key::connect_line).
        let key = format!("--key={}", key.to_base64());
        let mut cmd = self.command();
        cmd.current_dir(dir).arg(&key).args(args);
        Run::from(cmd.output().unwrap())
    }
}

impl Env {
    /// Runs `ferry ARGS` with no key at all (an address with an id, or trust on first use,
    /// must not need one).
    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = self.command();
        cmd.args(args);
        Run::from(cmd.output().unwrap())
    }
}

/// A server for `root` that also serves the identity handshake as `identity`.
pub fn server_with_identity(
    root: &Path,
    identity: &ferry_protocol::identity::Identity,
) -> TestServer {
    let identity = identity.clone();
    TestServer::start_with(
        root,
        &Key::generate(),
        "127.0.0.1:0".parse().unwrap(),
        move |config| config.identity = Some(identity),
    )
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "expected exit code {code}: {self:#?}");
        self
    }
}
