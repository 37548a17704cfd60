//! Symbolic links inside the root (issue 9 item 4, spec §3.4): a link that resolves inside
//! the root is followed by stat, list and fetch alike, so they agree on its size; list marks
//! it and gives its text when asked. A link that leaves the root or dangles is refused by stat
//! and fetch, listed as a bare symlink, and its text never reaches the client. The no-follow
//! resolver (`--no-symlinks`) refuses every link.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::{Client, ServerFixture};
use ferry_protocol::message::{Entry, EntryKind, ListRequest, TO_END};
use ferry_protocol::{ErrorCode, Message};

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("pub/sub")).unwrap();
    std::fs::write(root.join("pub/ok.txt"), b"fine").unwrap();
    std::fs::write(root.join("top.txt"), b"top level").unwrap();
    std::fs::write(root.join("pub/sub/deep.txt"), b"deep").unwrap();
    symlink("pub/ok.txt", root.join("file-link")).unwrap();
    symlink("pub", root.join("dir-link")).unwrap();
    // Climbs out of its own directory but stays inside the root.
    symlink("../top.txt", root.join("pub/up-link")).unwrap();
    symlink("file-link", root.join("chain-link")).unwrap();
    symlink("../canary.txt", root.join("escape")).unwrap();
    symlink("/etc/passwd", root.join("absolute")).unwrap();
    symlink("missing-target.txt", root.join("dangling")).unwrap();
}

async fn list_links(client: &mut Client, path: &str) -> Vec<Entry> {
    let id = client.id();
    let request = ListRequest::new(path, true, 8).unwrap().with_links(true);
    client.send(id, Message::ListRequest(request)).await;
    client.list_replies(id).await.unwrap()
}

fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} not listed in {entries:?}"))
}

async fn code(result: Result<impl std::fmt::Debug, ferry_protocol::ErrorBody>) -> ErrorCode {
    result.expect_err("refused").code
}

/// Refused links: stat and fetch fail with `code`, list shows a bare symlink of size 0.
async fn assert_refused(client: &mut Client, entries: &[Entry], name: &str, code_: ErrorCode) {
    assert_eq!(code(client.stat(name).await).await, code_, "stat {name}");
    assert_eq!(
        code(client.fetch(name, 0, TO_END).await).await,
        code_,
        "fetch {name}"
    );
    let entry = find(entries, name);
    assert_eq!(
        (entry.kind, entry.size, entry.link.as_deref()),
        (EntryKind::SYMLINK, 0, None),
        "list {name}"
    );
}

async fn run(follow: bool) {
    let server = ServerFixture::start_with(tree, |c| c.follow_symlinks(follow)).await;
    let mut client = server.client().await;
    let with_links = list_links(&mut client, "").await;
    let plain = client.list("", true, 8).await.unwrap();

    if follow {
        // Stat describes the target, with the size fetch will send.
        for (name, data) in [
            ("file-link", &b"fine"[..]),
            ("chain-link", b"fine"),
            ("pub/up-link", b"top level"),
        ] {
            let stat = client.stat(name).await.unwrap();
            assert_eq!((stat.kind, stat.size), (EntryKind::FILE, data.len() as u64));
            let fetched = client.fetch(name, 0, TO_END).await.unwrap();
            assert_eq!(fetched.data, data, "fetch {name}");
            assert_eq!(fetched.response.size, stat.size);
            let listed = find(&plain, name);
            assert_eq!((listed.kind, listed.size), (stat.kind, stat.size));
            assert_eq!(listed.link, None, "no link text unless asked for");
        }
        assert_eq!(
            client.stat("dir-link").await.unwrap().kind,
            EntryKind::DIRECTORY
        );
        assert_eq!(
            client.list("dir-link", false, 0).await.unwrap().len(),
            3,
            "a directory link lists its target"
        );
        // Asked for, list marks in-root links and gives their text.
        for (name, kind, text) in [
            ("file-link", EntryKind::FILE, "pub/ok.txt"),
            ("chain-link", EntryKind::FILE, "file-link"),
            ("dir-link", EntryKind::DIRECTORY, "pub"),
            ("pub/up-link", EntryKind::FILE, "../top.txt"),
        ] {
            let entry = find(&with_links, name);
            assert_eq!((entry.kind, entry.link.as_deref()), (kind, Some(text)));
        }
        // A recursive walk lists a directory link but does not descend through it.
        assert!(with_links.iter().all(|e| !e.name.starts_with("dir-link/")));
    } else {
        for name in ["file-link", "chain-link", "dir-link", "pub/up-link"] {
            assert_refused(&mut client, &with_links, name, ErrorCode::INVALID_PATH).await;
        }
    }
    assert_refused(&mut client, &with_links, "escape", ErrorCode::INVALID_PATH).await;
    assert_refused(
        &mut client,
        &with_links,
        "absolute",
        ErrorCode::INVALID_PATH,
    )
    .await;
    let dangling = if follow {
        ErrorCode::NOT_FOUND
    } else {
        ErrorCode::INVALID_PATH
    };
    assert_refused(&mut client, &with_links, "dangling", dangling).await;
    for entries in [&plain, &with_links] {
        for name in ["escape", "absolute", "dangling"] {
            assert_eq!(find(entries, name).kind, EntryKind::SYMLINK);
        }
    }

    // Nothing said where a refused link points.
    let transcript = String::from_utf8_lossy(&client.transcript).into_owned();
    for secret in ["canary", "/etc/passwd", "missing-target"] {
        assert!(
            !transcript.contains(secret),
            "{secret:?} reached the client"
        );
    }
    assert!(!client.saw_canary());
    server.shutdown().await;
}

#[tokio::test]
async fn links_inside_the_root_are_followed_and_links_leaving_it_refused() {
    run(true).await;
}

#[tokio::test]
async fn no_symlinks_refuses_every_link() {
    run(false).await;
}
