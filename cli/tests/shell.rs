//! The interactive shell driven through a pseudo-terminal (rexpect): tab completion of commands
//! and remote paths, persistent history, Ctrl-C cancelling a foreground transfer while the
//! shell goes on, and background jobs.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{tree, wait_for, Env, Proxy, TestServer};
use ferry_client::transfer::part_path;
use ferry_protocol::Key;
use rexpect::session::{spawn_command, PtySession};

fn shell(env: &Env, key: &Key, dir: &std::path::Path, url: &str) -> PtySession {
    let mut cmd = env.command();
    cmd.current_dir(dir)
        .args([&format!("--key={}", key.to_base64()), "shell", url]);
    let mut p = spawn_command(cmd, Some(15_000)).unwrap();
    p.exp_string("Connected to").unwrap();
    p.exp_string("ferry:/> ").unwrap();
    p
}

#[test]
fn tab_completes_commands_and_remote_paths_and_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    tree(&root, 1000);
    let key = Key::generate();
    let server = TestServer::start(&root, &key);
    let env = Env::new();
    let mut p = shell(&env, &key, &work, &server.url(""));

    // A command name.
    p.send("pw").unwrap();
    p.send("\t").unwrap();
    p.flush().unwrap();
    p.exp_string("pwd").unwrap();
    p.send_line("").unwrap();
    p.exp_string("/\r\n").unwrap();

    // A remote directory: completes to `docs/`.
    p.send("cd do\t").unwrap();
    p.flush().unwrap();
    p.exp_string("cd docs/").unwrap();
    p.send_line("").unwrap();
    p.exp_string("ferry:/docs> ").unwrap();

    // A remote file relative to the new directory, then fetch it.
    p.send("get rea\t").unwrap();
    p.flush().unwrap();
    p.exp_string("get readme.md").unwrap();
    p.send_line("").unwrap();
    p.exp_string("readme.md: 7 B in").unwrap();
    p.exp_string("ferry:/docs> ").unwrap();
    assert_eq!(std::fs::read(work.join("readme.md")).unwrap(), b"# docs\n");

    // Several candidates are listed.
    std::fs::write(root.join("docs/reader.txt"), b"r").unwrap();
    p.send_line("ls").unwrap();
    p.exp_string("reader.txt").unwrap();
    p.exp_string("ferry:/docs> ").unwrap();
    p.send("stat rea\t\t").unwrap();
    p.flush().unwrap();
    p.exp_string("reader.txt").unwrap();
    p.send_control('u').unwrap();

    // Errors print one line and the shell goes on.
    p.send_line("stat nope").unwrap();
    p.exp_string("ferry: server:").unwrap();
    p.exp_string("ferry:/docs> ").unwrap();
    p.send_line("frobnicate").unwrap();
    p.exp_string("unknown command frobnicate").unwrap();
    p.exp_string("ferry:/docs> ").unwrap();

    p.send_line("exit").unwrap();
    p.exp_eof().unwrap();
    let history = std::fs::read_to_string(env.home.path().join("data/ferry/history")).unwrap();
    assert!(history.contains("cd docs/"), "{history}");
    assert!(history.contains("get readme.md"), "{history}");
}

#[test]
fn ctrl_c_cancels_a_transfer_and_the_shell_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let size = 4 << 20;
    tree(&root, size);
    let key = Key::generate();
    let server = TestServer::start(&root, &key);
    // Slow enough that the transfer is still running when Ctrl-C arrives.
    let proxy = Proxy::start(server.addr, 512 << 10, u64::MAX);
    let env = Env::new();
    let mut p = shell(&env, &key, &work, &proxy.url(""));

    let dest = work.join("big.bin");
    p.send_line("get big.bin").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::metadata(part_path(
            &dest
        ))
        .is_ok_and(|m| m.len() > 64 * 1024)),
        "the transfer never got going"
    );
    p.send_control('c').unwrap();
    p.exp_string("ferry: interrupted").unwrap();
    p.exp_string("ferry:/> ").unwrap();
    let kept = std::fs::metadata(part_path(&dest)).unwrap().len();
    assert!(kept > 0 && kept < size as u64);
    assert!(!dest.exists());

    // Same connection, still usable.
    p.send_line("ls").unwrap();
    p.exp_string("big.bin").unwrap();
    p.exp_string("ferry:/> ").unwrap();

    // In the background: the prompt comes straight back and jobs shows progress.
    p.send_line("get big.bin &").unwrap();
    p.exp_string("[1] started: get big.bin").unwrap();
    p.exp_string("ferry:/> ").unwrap();
    p.send_line("jobs").unwrap();
    p.exp_string("[1] running  get big.bin:").unwrap();
    p.exp_string("ferry:/> ").unwrap();

    // Leaving waits for the job; Ctrl-C cancels it and keeps the partial file.
    p.send_line("exit").unwrap();
    p.exp_string("waiting for 1 background job(s)").unwrap();
    p.send_control('c').unwrap();
    p.exp_eof().unwrap();
    assert!(part_path(&dest).exists());
    assert!(!dest.exists());
}
