//! The `ferry` binary end to end against a real server started in the test: every one-shot
//! command, overwrite refusal, resume after the server dies mid-transfer, integrity failure
//! when the file changed under a resume, error messages and exit codes, and batch mode.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{data, tree, wait_for, Env, Proxy, TestServer};
use ferry_client::transfer::{meta_path, part_path};
use ferry_protocol::Key;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    server: TestServer,
    env: Env,
    key: Key,
}

fn setup(big: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    tree(&root, big);
    let key = Key::generate();
    let server = TestServer::start(&root, &key);
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

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn ls_lists_names_details_trees_and_json() {
    let s = setup(1000);
    let run = s.ferry(&["ls", &s.server.url("")]);
    run.ok();
    assert_eq!(lines(&run.stdout), ["a.txt", "big.bin", "docs/"]);

    let run = s.ferry(&["ls", "-l", &s.server.url("docs")]);
    run.ok();
    let out = lines(&run.stdout);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out[0].starts_with("drwx") && out[0].ends_with(" deep/"),
        "{out:?}"
    );
    assert!(out[1].starts_with("-rw") && out[1].contains("7 B") && out[1].ends_with(" readme.md"));

    let run = s.ferry(&["ls", "-R", &s.server.url("")]);
    run.ok();
    assert!(
        lines(&run.stdout).contains(&"docs/deep/x.bin"),
        "{}",
        run.stdout
    );

    let run = s.ferry(&["ls", "--json", &s.server.url("docs/deep")]);
    run.ok();
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json[0]["name"], "x.bin");
    assert_eq!(json[0]["size"], 3000);
    assert_eq!(json[0]["kind"], "file");

    // A file lists as itself, like ls FILE.
    let run = s.ferry(&["ls", &s.server.url("a.txt")]);
    assert_eq!(lines(&run.ok().stdout), ["a.txt"]);
}

#[test]
fn stat_describes_one_entry() {
    let s = setup(1000);
    let run = s.ferry(&["stat", &s.server.url("a.txt")]);
    run.ok();
    assert!(run.stdout.contains("kind: file"), "{}", run.stdout);
    assert!(run.stdout.contains("size: 6 (6 B)"), "{}", run.stdout);
    let run = s.ferry(&["stat", "--json", &s.server.url("docs")]);
    let json: serde_json::Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(json["kind"], "directory");
    assert_eq!(json["path"], "docs");
}

#[test]
fn ping_reports_round_trips() {
    let s = setup(1000);
    let run = s.ferry(&["ping", "-c", "3", "-i", "10ms", &s.server.url("")]);
    run.ok();
    let pongs = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("pong from"))
        .count();
    assert_eq!(pongs, 3, "{}", run.stdout);
    assert!(run.stdout.contains("3 pings, 3 pongs"), "{}", run.stdout);
}

#[test]
fn get_fetches_a_file_and_a_tree() {
    let s = setup(300_000);
    let run = s.ferry(&["get", &s.server.url("big.bin")]);
    run.ok();
    assert_eq!(
        std::fs::read(s.work.join("big.bin")).unwrap(),
        std::fs::read(s.root.join("big.bin")).unwrap()
    );
    assert!(
        run.stderr.contains("big.bin: 292.97 KiB in"),
        "{}",
        run.stderr
    );
    assert!(!part_path(&s.work.join("big.bin")).exists());
    assert!(!meta_path(&s.work.join("big.bin")).exists());

    // Into an existing directory, under the remote name.
    std::fs::create_dir(s.work.join("into")).unwrap();
    s.ferry(&["get", &s.server.url("docs/readme.md"), "into"])
        .ok();
    assert_eq!(
        std::fs::read(s.work.join("into/readme.md")).unwrap(),
        b"# docs\n"
    );

    // A tree, two files at a time.
    let run = s.ferry(&["get", "-r", "-j", "2", &s.server.url("docs"), "mirror"]);
    run.ok();
    assert_eq!(
        std::fs::read(s.work.join("mirror/readme.md")).unwrap(),
        b"# docs\n"
    );
    assert_eq!(
        std::fs::read(s.work.join("mirror/deep/x.bin")).unwrap(),
        data(3000, 7)
    );
    assert!(run.stderr.contains("2 files fetched"), "{}", run.stderr);
    // Again: everything is up to date, nothing is refused.
    let run = s.ferry(&["get", "-r", &s.server.url("docs"), "mirror"]);
    assert!(
        run.ok().stderr.contains("2 already up to date"),
        "{}",
        run.stderr
    );

    // A directory without -r is refused with a hint.
    let run = s.ferry(&["get", &s.server.url("docs")]);
    assert!(run.code(1).stderr.contains("use get -r"), "{}", run.stderr);
}

#[test]
fn get_refuses_to_overwrite_without_force() {
    let s = setup(1000);
    std::fs::write(s.work.join("a.txt"), b"mine").unwrap();
    let run = s.ferry(&["get", &s.server.url("a.txt")]);
    run.code(1);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(std::fs::read(s.work.join("a.txt")).unwrap(), b"mine");
    s.ferry(&["get", "--force", &s.server.url("a.txt")]).ok();
    assert_eq!(std::fs::read(s.work.join("a.txt")).unwrap(), b"alpha\n");
}

#[test]
fn get_resumes_after_the_server_dies_mid_transfer() {
    let size = 4 << 20;
    let s = setup(size);
    // Pace the transfer through a proxy that also cuts it half-way: killing the server alone is
    // not enough, because a quiet machine's loopback buffers can already hold the whole file
    // when the kill lands, and the server's close then delivers it all.
    let proxy = Proxy::start(s.server.addr, 2 << 20, (size / 2) as u64);
    let dest = s.work.join("big.bin");
    let part = part_path(&dest);
    let mut child = s
        .env
        .command()
        .current_dir(&s.work)
        .args([
            &format!("--key={}", s.key.to_base64()),
            "get",
            &proxy.url("big.bin"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = wait_for(Duration::from_secs(20), || {
        std::fs::metadata(&part).is_ok_and(|m| m.len() >= 512 * 1024)
    });
    assert!(started, "the transfer never got going");
    let root = s.server.root.clone();
    s.server.kill();
    let out = wait_child(&mut child, Duration::from_secs(20));
    assert_eq!(out.code, 3, "a lost connection is exit code 3: {out:#?}");
    assert!(
        out.stderr.contains("partial download kept"),
        "{}",
        out.stderr
    );
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < size as u64, "kept {kept} bytes");
    assert!(meta_path(&dest).exists());

    // Restart on the same root (a new port, as after a real restart) and resume.
    let server = TestServer::start(&root, &s.key);
    let run = s.env.ferry(
        &s.key,
        &s.work,
        &["get", "--resume", &server.url("big.bin")],
    );
    run.ok();
    assert!(run.stderr.contains("resumed at"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        data(size, 42),
        "byte-identical"
    );
    assert!(!part.exists() && !meta_path(&dest).exists());
}

#[test]
fn ctrl_c_keeps_the_partial_file_and_exits_130() {
    let size = 4 << 20;
    let s = setup(size);
    let proxy = Proxy::start(s.server.addr, 1 << 20, u64::MAX);
    let dest = s.work.join("big.bin");
    let part = part_path(&dest);
    let mut child = s
        .env
        .command()
        .current_dir(&s.work)
        .args([
            &format!("--key={}", s.key.to_base64()),
            "get",
            &proxy.url("big.bin"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(20), || {
        std::fs::metadata(&part).is_ok_and(|m| m.len() >= 128 * 1024)
    }));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_child(&mut child, Duration::from_secs(20));
    assert_eq!(out.code, 130, "{out:#?}");
    assert!(
        out.stderr.contains("partial download kept"),
        "{}",
        out.stderr
    );
    assert!(!dest.exists());
    // The checkpoint recorded on the way out matches the part, so the resume is accepted.
    let meta = std::fs::read_to_string(meta_path(&dest)).unwrap();
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(meta.contains(&format!("checkpoint {kept} ")), "{meta}");
    s.ferry(&["get", &s.server.url("big.bin")]).ok();
    assert_eq!(std::fs::read(&dest).unwrap(), data(size, 42));
}

#[test]
fn resume_refuses_a_file_that_changed_on_the_server() {
    let size = 1 << 20;
    let s = setup(size);
    // The proxy cuts the connection after 300 KB: a dropped network, not a dead server.
    let proxy = Proxy::start(s.server.addr, 64 << 20, 300_000);
    let run = s.ferry(&["get", &proxy.url("big.bin")]);
    run.code(3);
    let dest = s.work.join("big.bin");
    assert!(part_path(&dest).exists());

    // The file changes: a resume would splice two versions, so it is an integrity failure.
    std::fs::write(s.root.join("big.bin"), data(size + 10, 99)).unwrap();
    let run = s.ferry(&["get", &s.server.url("big.bin")]);
    run.code(4);
    assert!(
        run.stderr.contains("changed on the server"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(part_path(&dest).exists(), "the partial file is kept");
    assert!(!dest.exists());

    // --force starts over and gets the new content.
    s.ferry(&["get", "--force", &s.server.url("big.bin")]).ok();
    assert_eq!(std::fs::read(&dest).unwrap(), data(size + 10, 99));
}

#[test]
fn errors_are_one_clear_sentence_with_their_exit_code() {
    let s = setup(1000);
    let check = |run: &common::Run, code: i32, needle: &str| {
        run.code(code);
        assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{needle:?} in {}", run.stderr);
        assert!(!run.stderr.contains("panicked") && !run.stderr.contains("backtrace"));
    };
    // Wrong key.
    let other = Key::generate();
    let run = s.env.ferry(&other, &s.work, &["ls", &s.server.url("")]);
    check(&run, 3, "authentication failed");
    // Nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let run = s.ferry(&["ls", &format!("ferry://{free}/")]);
    check(&run, 3, "connection refused");
    // Unknown host.
    let run = s.ferry(&[
        "ls",
        "--connect-timeout",
        "5s",
        "ferry://no-such-host.invalid/",
    ]);
    check(&run, 3, "could not resolve host no-such-host.invalid");
    // Remote refusal.
    let run = s.ferry(&["stat", &s.server.url("nope.txt")]);
    check(&run, 1, "not found");
    // No key at all.
    let out = s
        .env
        .command()
        .args(["ls", &s.server.url("")])
        .output()
        .unwrap();
    check(&common::Run::from(out), 2, "no key given");
    // A bad address is a usage error from clap.
    let run = s.ferry(&["ls", "http://x/"]);
    run.code(2);
    assert!(run.stderr.contains("unsupported scheme"), "{}", run.stderr);
}

#[test]
fn key_comes_from_env_and_key_file() {
    let s = setup(1000);
    let out = s
        .env
        .command()
        .env("FERRY_KEY", s.key.to_hex())
        .args(["ls", &s.server.url("")])
        .output()
        .unwrap();
    common::Run::from(out).ok();
    let file = s.work.join("k");
    ferry_common::key_file::save_new(&s.key, &file).unwrap();
    let out = s
        .env
        .command()
        .args([
            "--key-file",
            file.to_str().unwrap(),
            "stat",
            &s.server.url("a.txt"),
        ])
        .output()
        .unwrap();
    common::Run::from(out).ok();
}

#[test]
fn batch_mode_runs_a_script_and_stops_at_the_first_failure() {
    let s = setup(1000);
    std::fs::create_dir(s.work.join("sub")).unwrap();
    let script = s.work.join("script.txt");
    std::fs::write(
        &script,
        "# comment\nls\ncd docs\nget readme.md\n-get missing.txt\nlcd sub\nget deep/x.bin\npwd\nget missing-too.txt\nls\n",
    )
    .unwrap();
    let run = s.ferry(&["shell", &s.server.url(""), "-b", script.to_str().unwrap()]);
    run.code(1);
    assert_eq!(
        std::fs::read(s.work.join("readme.md")).unwrap(),
        b"# docs\n"
    );
    assert_eq!(
        std::fs::read(s.work.join("sub/x.bin")).unwrap(),
        data(3000, 7)
    );
    assert!(
        run.stdout.contains("big.bin") && run.stdout.contains("/docs\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("ferry> -get missing.txt"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ferry> get missing-too.txt"),
        "{}",
        run.stderr
    );
    // The last ls came after the failure and did not run.
    assert_eq!(run.stderr.matches("ferry> ls").count(), 1, "{}", run.stderr);
    // Each error is said once: the failing line's, not again as the exit reason.
    assert_eq!(run.stderr.matches("ferry: ").count(), 2, "{}", run.stderr);

    // mget runs in the foreground in batch mode, so the next line sees its files.
    std::fs::create_dir(s.work.join("m")).unwrap();
    let script = s.work.join("mget.txt");
    std::fs::write(&script, "lcd m\nmget *.txt docs/*.md\nlls\n").unwrap();
    let run = s.ferry(&["shell", &s.server.url(""), "-b", script.to_str().unwrap()]);
    run.ok();
    assert_eq!(lines(&run.stdout), ["a.txt", "readme.md"], "{}", run.stderr);
    assert_eq!(
        std::fs::read(s.work.join("m/readme.md")).unwrap(),
        b"# docs\n"
    );

    // Without a terminal on stdin, the shell reads its batch from stdin.
    use std::io::Write;
    let mut child = s
        .env
        .command()
        .current_dir(&s.work)
        .args([
            &format!("--key={}", s.key.to_base64()),
            "shell",
            &s.server.url("docs"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"pwd\nls -l\n")
        .unwrap();
    let out = common::Run::from(child.wait_with_output().unwrap());
    out.ok();
    assert!(out.stdout.starts_with("/docs\n"), "{}", out.stdout);
    assert!(out.stdout.contains("readme.md"), "{}", out.stdout);
}

/// The demo serves the current directory (its default) and downloads into a fresh directory
/// the banner names, so `get` cannot collide with the served file itself; the connect line it
/// prints runs as printed, although no `ferry` is on PATH.
#[test]
fn demo_serves_a_directory_with_a_fresh_key() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("served");
    tree(&root, 5000);
    let tmp = dir.path().join("tmp");
    let empty_path = dir.path().join("bin");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&empty_path).unwrap();
    let env = Env::new();
    let mut child = env
        .command()
        .current_dir(&root)
        .env("TMPDIR", &tmp)
        .env("PATH", &empty_path)
        .arg("demo")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut banner = Vec::new();
    while !banner.iter().any(|l: &String| l.contains(" shell ")) {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the banner ended early: {banner:?}"
        );
        banner.push(line.trim_end().to_string());
    }
    let downloads = banner
        .iter()
        .find_map(|l| l.strip_prefix("Downloads go to "))
        .and_then(|l| l.rsplit_once(" (").map(|(path, _)| PathBuf::from(path)))
        .unwrap_or_else(|| panic!("no download directory in {banner:?}"));
    assert!(downloads.starts_with(&tmp), "{banner:?}");

    // The connect line, run exactly as printed, from another directory.
    let connect = banner.last().unwrap().trim();
    let words = ferry_cli::shell::parse::split(connect).unwrap().words;
    assert!(
        words[2].starts_with("--key="),
        "the key is joined to its flag: {connect}"
    );
    let out = std::process::Command::new(&words[0])
        .args(&words[1..])
        .env("HOME", env.home.path())
        .env_remove("FERRY_KEY")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{connect}: {e}"));
    let run = common::Run::from(out);
    assert!(run.ok().stdout.is_empty(), "{run:#?}");

    stdin.write_all(b"ls\nget big.bin\nlpwd\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{rest}\n{stderr}");
    assert!(rest.contains("docs/"), "{rest}");
    assert!(
        rest.contains(&downloads.display().to_string()),
        "lpwd shows the download directory: {rest}"
    );
    assert_eq!(
        std::fs::read(downloads.join("big.bin")).unwrap(),
        data(5000, 42)
    );
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), data(5000, 42));
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        3,
        "nothing new in the served directory"
    );
}

/// `ls -l` shows a symlink inside the root as `name -> target`, like `ls -l` and sftp, in the
/// one-shot command and in the shell; a link that leaves the root says nothing of its target.
#[cfg(unix)]
#[test]
fn ls_l_shows_links_as_name_arrow_target() {
    let s = setup(10);
    std::os::unix::fs::symlink("a.txt", s.root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("docs", s.root.join("dlink")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", s.root.join("away")).unwrap();
    let run = s.ferry(&["ls", "-l", &s.server.url("")]);
    let out = run.ok().stdout.clone();
    let line = |name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    assert!(line("link.txt").ends_with(" link.txt -> a.txt"), "{out}");
    assert!(line("link.txt").starts_with('l'), "{out}");
    assert!(line("dlink").ends_with(" dlink -> docs"), "{out}");
    assert!(
        !out.contains("/etc"),
        "a link out of the root is not revealed: {out}"
    );
    // Names alone stay names.
    let run = s.ferry(&["ls", &s.server.url("")]);
    assert!(!run.ok().stdout.contains("->"), "{}", run.stdout);

    let script = s.work.join("ls.txt");
    std::fs::write(&script, "ls -l\n").unwrap();
    let run = s.ferry(&["shell", &s.server.url(""), "-b", script.to_str().unwrap()]);
    let out = run.ok().stdout.clone();
    assert!(out.contains(" link.txt -> a.txt\n"), "{out}");
    assert!(out.contains(" dlink -> docs\n"), "{out}");
    assert!(!out.contains("/etc"), "{out}");
}

/// About one key in 64 starts with `-` in base64; such a key works pasted as `--key=KEY` and,
/// for lines printed before the fix, as `--key KEY`.
#[test]
fn a_key_that_starts_with_a_dash_works() {
    let mut bytes = [0x42; 32];
    bytes[0] = 0xf8; // top six bits 62: '-'
    let key = Key::from_bytes(bytes);
    let text = key.to_base64();
    assert!(text.starts_with('-'), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root, 10);
    let server = TestServer::start(&root, &key);
    let env = Env::new();
    for args in [
        vec![format!("--key={text}"), "ls".into(), server.url("")],
        vec!["--key".into(), text.clone(), "ls".into(), server.url("")],
        vec!["ls".into(), server.url(""), "--key".into(), text.clone()],
    ] {
        let out = env.command().args(&args).output().unwrap();
        let run = common::Run::from(out);
        assert_eq!(
            lines(&run.ok().stdout),
            ["a.txt", "big.bin", "docs/"],
            "{args:?}"
        );
    }
}

/// Logs to a file or pipe carry no colour escapes.
#[test]
fn logs_to_a_pipe_have_no_colour() {
    let s = setup(10);
    let run = s.ferry(&["-vv", "ls", &s.server.url("")]);
    run.ok();
    assert!(run.stderr.contains("connected"), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
}

/// `get -r` with a failing file: each failure is said once, and the exit code is the worst.
#[test]
fn get_r_says_each_failure_once() {
    let s = setup(10);
    std::fs::create_dir_all(s.work.join("mirror")).unwrap();
    std::fs::write(s.work.join("mirror/readme.md"), b"mine").unwrap();
    let run = s.ferry(&["get", "-r", &s.server.url("docs"), "mirror"]);
    run.code(1);
    assert_eq!(
        run.stderr.matches("already exists").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("docs/readme.md: "), "{}", run.stderr);
    assert!(run.stderr.contains("1 files fetched"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(s.work.join("mirror/deep/x.bin")).unwrap(),
        data(3000, 7)
    );
}

/// `get -o DEST` is the same as the positional destination, as in ferry-peer.
#[test]
fn get_takes_out_as_well_as_a_positional_destination() {
    let s = setup(10);
    s.ferry(&["get", &s.server.url("a.txt"), "-o", "x.txt"])
        .ok();
    assert_eq!(std::fs::read(s.work.join("x.txt")).unwrap(), b"alpha\n");
    s.ferry(&["get", "-r", "--out", "m", &s.server.url("docs")])
        .ok();
    assert_eq!(
        std::fs::read(s.work.join("m/readme.md")).unwrap(),
        b"# docs\n"
    );
    let run = s.ferry(&["get", &s.server.url("a.txt"), "y.txt", "-o", "z.txt"]);
    run.code(2);
    // The shell's get too.
    let script = s.work.join("o.txt");
    std::fs::write(&script, "get -o s.txt a.txt\n").unwrap();
    s.ferry(&["shell", &s.server.url(""), "-b", script.to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read(s.work.join("s.txt")).unwrap(), b"alpha\n");
}

fn wait_child(child: &mut std::process::Child, timeout: Duration) -> common::Run {
    let ok = wait_for(timeout, || child.try_wait().unwrap().is_some());
    if !ok {
        let _ = child.kill();
    }
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    common::Run {
        code: child.wait().unwrap().code().unwrap_or(-1),
        stdout: String::new(),
        stderr,
    }
}

#[test]
fn shell_reconnects_after_the_server_restarts() {
    use std::io::{BufRead, Write};
    let s = setup(1000);
    let addr = s.server.addr;
    let mut child = s
        .env
        .command()
        .current_dir(&s.work)
        .args([
            &format!("--key={}", s.key.to_base64()),
            "shell",
            &s.server.url(""),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let expect_line = |want: &str| loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line == want => break,
            Ok(_) => continue,
            Err(e) => panic!("no line {want:?}: {e}"),
        }
    };
    stdin.write_all(b"ls\n").unwrap();
    expect_line("big.bin");

    // The server dies and comes back on the same port; the next command reconnects.
    let root = s.server.root.clone();
    s.server.kill();
    let _server = TestServer::start_on(&root, &s.key, addr);
    stdin.write_all(b"cd docs\npwd\n").unwrap();
    expect_line("/docs");
    drop(stdin);
    let out = common::Run::from(child.wait_with_output().unwrap());
    out.ok();
    assert!(out.stderr.contains("reconnected to"), "{}", out.stderr);
}

/// Issue 9 item 4: `get -r` fetches a file link inside the root as the file it names, does
/// not descend through a directory link (a loop or a second copy of a subtree), says so once,
/// and a link that leaves the root is neither fetched nor revealed.
#[test]
fn get_r_fetches_file_links_and_does_not_follow_directory_links() {
    let s = setup(10);
    let docs = s.root.join("docs");
    std::os::unix::fs::symlink("readme.md", docs.join("readme-link.md")).unwrap();
    std::os::unix::fs::symlink(".", docs.join("loop")).unwrap();
    std::os::unix::fs::symlink("/etc", docs.join("outside")).unwrap();
    let run = s.ferry(&["get", "-r", &s.server.url("docs"), "mirror"]);
    run.ok();
    let mirror = s.work.join("mirror");
    assert_eq!(
        std::fs::read(mirror.join("readme-link.md")).unwrap(),
        b"# docs\n"
    );
    assert!(!mirror.join("loop").exists());
    assert!(!mirror.join("outside").exists());
    assert_eq!(run.stderr.matches("docs/loop").count(), 1, "{}", run.stderr);
    assert!(!run.stderr.contains("/etc"), "{}", run.stderr);
}
