//! `ferry put` and the shell's `put`/`mput` end to end (spec §3.12): upload then fetch back
//! identical, a read-only server's refusal (exit 1, a clear sentence), `--force` needed to
//! overwrite, a directory destination, `-r`, and batch-mode shell uploads.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;

use common::{data, Env, TestServer};
use ferry_protocol::Key;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    server: TestServer,
    env: Env,
    key: Key,
}

fn setup(allow_upload: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let work = dir.path().join("work");
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("big.bin"), data(300_000, 9)).unwrap();
    std::fs::write(work.join("a.txt"), b"alpha\n").unwrap();
    let key = Key::generate();
    let server = TestServer::start_with(&root, &key, "127.0.0.1:0".parse().unwrap(), |c| {
        c.allow_upload = allow_upload;
    });
    Setup {
        _dir: dir,
        root,
        work,
        server,
        env: Env::new(),
        key,
    }
}

impl Setup {
    fn ferry(&self, args: &[&str]) -> common::Run {
        self.env.ferry(&self.key, &self.work, args)
    }
}

#[test]
fn put_uploads_and_get_fetches_back_identical() {
    let s = setup(true);
    // Into an existing directory under the local name, and under a name of its own.
    s.ferry(&["put", "big.bin", &s.server.url("in")]).ok();
    s.ferry(&["put", "a.txt", &s.server.url("renamed.txt")])
        .ok();
    assert!(std::fs::read(s.root.join("in/big.bin")).unwrap() == data(300_000, 9));
    assert_eq!(
        std::fs::read(s.root.join("renamed.txt")).unwrap(),
        b"alpha\n"
    );
    let back = s.work.join("back.bin");
    s.ferry(&["get", &s.server.url("in/big.bin"), back.to_str().unwrap()])
        .ok();
    assert!(std::fs::read(&back).unwrap() == data(300_000, 9));
    // Several files need a directory.
    let run = s.ferry(&["put", "a.txt", "big.bin", &s.server.url("nodir")]);
    run.code(2);
    assert!(run.stderr.contains("must be a directory"), "{run:#?}");
    s.ferry(&["put", "a.txt", "big.bin", &s.server.url("many/")])
        .ok();
    assert_eq!(
        std::fs::read(s.root.join("many/a.txt")).unwrap(),
        b"alpha\n"
    );
    assert!(s.root.join("many/big.bin").exists());
}

#[test]
fn a_read_only_server_refuses_with_exit_1_and_says_why() {
    let s = setup(false);
    let run = s.ferry(&["put", "a.txt", &s.server.url("a.txt")]);
    run.code(1);
    assert!(
        run.stderr.contains("read-only") && run.stderr.contains("may not upload"),
        "{run:#?}"
    );
    assert!(!s.root.join("a.txt").exists());
}

#[test]
fn overwriting_needs_force() {
    let s = setup(true);
    std::fs::write(s.root.join("a.txt"), b"old\n").unwrap();
    let run = s.ferry(&["put", "a.txt", &s.server.url("a.txt")]);
    run.code(1);
    assert!(
        run.stderr.contains("already exists") && run.stderr.contains("--force"),
        "{run:#?}"
    );
    assert_eq!(std::fs::read(s.root.join("a.txt")).unwrap(), b"old\n");
    s.ferry(&["put", "--force", "a.txt", &s.server.url("a.txt")])
        .ok();
    assert_eq!(std::fs::read(s.root.join("a.txt")).unwrap(), b"alpha\n");
}

#[test]
fn put_r_uploads_a_tree_and_a_directory_needs_r() {
    let s = setup(true);
    std::fs::create_dir_all(s.work.join("tree/sub")).unwrap();
    std::fs::write(s.work.join("tree/sub/x"), b"x").unwrap();
    std::fs::write(s.work.join("tree/y"), b"y").unwrap();
    // An empty directory arrives too, with its permission bits, as with scp -r and sftp put -r.
    std::fs::create_dir_all(s.work.join("tree/empty/deeper")).unwrap();
    std::fs::set_permissions(
        s.work.join("tree/empty/deeper"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let run = s.ferry(&["put", "tree", &s.server.url("in")]);
    run.code(1);
    assert!(run.stderr.contains("use put -r"), "{run:#?}");
    let run = s.ferry(&["put", "-r", "-j", "2", "tree", &s.server.url("in")]);
    run.ok();
    assert!(run.stderr.contains("1 empty directories made"), "{run:#?}");
    assert_eq!(std::fs::read(s.root.join("in/tree/sub/x")).unwrap(), b"x");
    assert_eq!(std::fs::read(s.root.join("in/tree/y")).unwrap(), b"y");
    let deeper = std::fs::metadata(s.root.join("in/tree/empty/deeper")).unwrap();
    assert!(deeper.is_dir());
    assert_eq!(deeper.permissions().mode() & 0o777, 0o750);
    // Again: existing directories are fine (mkdir -p), existing files need --force.
    let run = s.ferry(&["put", "-r", "tree", &s.server.url("in")]);
    run.code(1);
    assert!(run.stderr.contains("already exists"), "{run:#?}");
}

#[test]
fn the_shell_puts_and_mputs_in_batch_mode() {
    let s = setup(true);
    std::fs::write(s.work.join("n1.log"), b"one").unwrap();
    std::fs::write(s.work.join("n2.log"), b"two").unwrap();
    let mut cmd = s.env.command();
    cmd.current_dir(&s.work)
        .arg(format!("--key={}", s.key.to_base64()))
        .args(["shell", &s.server.url("in")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"put a.txt\nput a.txt other.txt\nmput *.log\nls\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:#?}");
    for name in ["a.txt", "other.txt", "n1.log", "n2.log"] {
        assert!(stdout.lines().any(|l| l == name), "{name} in {stdout}");
    }
    assert_eq!(std::fs::read(s.root.join("in/n2.log")).unwrap(), b"two");
}

/// A tmpfs mounted as a test's served root, unmounted however the test ends.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "ferry-test"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Self(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk on the server is its own error with the numbers in it, the half upload never
/// appears under the final name, and once there is room the same command resumes and ends
/// byte-identical. Run by `.ci/run` where it runs as root:
/// `cargo test -p ferry-cli --test put -- --ignored a_full_disk`.
#[test]
#[ignore = "needs root: mounts a 256 KiB tmpfs as the served root"]
fn a_full_disk_says_so_keeps_nothing_half_and_resumes_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let work = dir.path().join("work");
    let disk = SmallDisk::mount(&root, "256k");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("big.bin"), data(1_000_000, 5)).unwrap();
    let key = Key::generate();
    let server = TestServer::start_with(&root, &key, "127.0.0.1:0".parse().unwrap(), |c| {
        c.allow_upload = true;
    });
    let env = Env::new();

    let run = env.ferry(&key, &work, &["put", "big.bin", &server.url("big.bin")]);
    run.code(1);
    assert!(
        run.stderr.contains("no space left") && run.stderr.contains("of 1000000 bytes"),
        "{run:#?}"
    );
    assert!(!root.join("big.bin").exists());

    disk.resize("4m");
    env.ferry(&key, &work, &["put", "big.bin", &server.url("big.bin")])
        .ok();
    assert!(std::fs::read(root.join("big.bin")).unwrap() == data(1_000_000, 5));
    drop(server);
}
