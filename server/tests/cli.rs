//! The `ferry-server` binary: first start creates the default key file (owner-only) and prints
//! the connect line, the key is reused on the next start, `-v --log-format json` logs one line
//! per request, and SIGTERM/SIGINT drain and exit with 0/130.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::Client;
use ferry_protocol::message::TO_END;
use ferry_protocol::Key;
use rustix::process::{kill_process, Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

fn start(dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .arg(dir.join("share"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("HOME", dir)
        .env_remove("FERRY_KEY")
        .env_remove("FERRY_KEY_FILE")
        .env_remove("FERRY_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Reads the connect line: `ferry shell --key=<KEY> ferry://HOST:PORT/`.
async fn connect_line(child: &mut Child) -> (Key, SocketAddr) {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("connect line in time")
        .unwrap()
        .expect("a line");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{line}");
    assert!(words[0].ends_with("ferry"), "{line}");
    assert_eq!(words[1], "shell", "{line}");
    let key: Key = words[2].strip_prefix("--key=").unwrap().parse().unwrap();
    let addr = words[3]
        .strip_prefix("ferry://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap()
        .parse()
        .unwrap();
    (key, addr)
}

async fn stop(mut child: Child, signal: Signal) -> (i32, String) {
    let pid = Pid::from_raw(child.id().unwrap() as i32).unwrap();
    kill_process(pid, signal).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after the signal")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[tokio::test]
async fn first_start_creates_a_key_then_reuses_it_and_signals_drain() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("share")).unwrap();
    std::fs::write(dir.path().join("share/hello.txt"), b"hello from the cli").unwrap();

    let mut child = start(dir.path(), &["-v", "--log-format", "json"]);
    let (key, addr) = connect_line(&mut child).await;
    let key_file = dir.path().join("config/ferry/key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file is owner-only");
    assert_eq!(ferry_common::key_file::load(&key_file).unwrap(), key);

    let mut client = Client::connect(addr, key.clone(), false).await.unwrap();
    let fetched = client.fetch("hello.txt", 0, TO_END).await.unwrap();
    assert_eq!(fetched.data, b"hello from the cli");
    drop(client);

    let (code, stderr) = stop(child, Signal::Term).await;
    assert_eq!(code, 0, "SIGTERM exits 0; stderr: {stderr}");
    let request_line = stderr
        .lines()
        .find(|l| l.contains("\"service\":\"fetch\""))
        .unwrap_or_else(|| panic!("no request log line in: {stderr}"));
    for field in [
        "\"path\"",
        "\"bytes\":18",
        "\"elapsed_ms\"",
        "\"outcome\":\"ok\"",
        "\"peer\"",
    ] {
        assert!(
            request_line.contains(field),
            "{field} missing from {request_line}"
        );
    }

    // Second start: the same key, and Ctrl-C exits 130.
    let mut child = start(dir.path(), &[]);
    let (again, _) = connect_line(&mut child).await;
    assert_eq!(again, key, "the key file is reused");
    let (code, _) = stop(child, Signal::Int).await;
    assert_eq!(code, 130);
}

#[tokio::test]
async fn bad_usage_and_unreadable_keys_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("share")).unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, Key::generate().to_hex()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = start(dir.path(), &["--key-file", key_file.to_str().unwrap()])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");

    let output = start(dir.path(), &["--max-frame", "lots"])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "clap usage error");
}

#[tokio::test]
async fn listen_takes_host_names_and_missing_ports_and_says_what_it_expects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("share")).unwrap();
    std::fs::write(dir.path().join("share/f.txt"), b"x").unwrap();
    for bad in ["localhost:port", "127.0.0.1:70000", "[::1"] {
        let output = Command::new(env!("CARGO_BIN_EXE_ferry-server"))
            .arg(dir.path().join("share"))
            .args(["--listen", bad])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("expected IP, IP:PORT, [IPv6]:PORT, HOST or HOST:PORT"),
            "{bad}: {stderr}"
        );
    }
    // A host name with a port; logs to a pipe carry no colour and round their durations.
    let mut child = start(dir.path(), &["--listen", "localhost:0", "-v"]);
    let (key, addr) = connect_line(&mut child).await;
    let mut client = Client::connect(addr, key, false).await.unwrap();
    assert_eq!(client.stat("f.txt").await.unwrap().size, 1);
    drop(client);
    let (code, stderr) = stop(child, Signal::Term).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour escapes in a piped log: {stderr:?}"
    );
    let elapsed = stderr
        .split("elapsed_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no request line in {stderr}"));
    let decimals = elapsed.split('.').nth(1).map_or(0, str::len);
    assert!(decimals <= 3, "elapsed_ms={elapsed} is not rounded");
}

/// The config file carries what the flags do: the identity, the authorised-clients file, the
/// record suite and the upload limits; a wrong value is said with its key.
#[tokio::test]
async fn the_config_file_names_the_identity_suite_and_upload_limits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("share")).unwrap();
    let identity_file = dir.path().join("server-identity");
    let (identity, _) = ferry_common::identity::load_or_create(&identity_file).unwrap();
    let clients = dir.path().join("clients");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "identity = {:?}\nauthorized_clients = {:?}\nsuite = \"cbc-hmac\"\n\
             allow_upload = true\nmax_upload_size = \"4M\"\nupload_quota = \"1G\"\n",
            identity_file, clients
        ),
    )
    .unwrap();
    let mut child = start(dir.path(), &["--config", config.to_str().unwrap()]);
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("connect lines in time")
            .unwrap()
            .expect("a line");
        printed.push(line);
    }
    assert!(
        printed[1].contains(&format!("ferry://{}@127.0.0.1:", identity.id())),
        "{printed:?}"
    );
    let (code, _) = stop(child, Signal::Term).await;
    assert_eq!(code, 0);

    std::fs::write(&config, "suite = \"rot13\"\n").unwrap();
    let output = start(dir.path(), &["--config", config.to_str().unwrap()])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("suite") && stderr.contains("rot13"),
        "{stderr}"
    );

    std::fs::write(&config, "upload_quota = \"lots\"\n").unwrap();
    let output = start(dir.path(), &["--config", config.to_str().unwrap()])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("upload_quota"), "{stderr}");
}
