//! Nothing outside the root, ever: every path-escape case of the issue, through stat, list and
//! fetch, in both resolver-relevant shapes (direct and via symlinks). A canary file outside the
//! root must never appear in any reply, and no reply may name the server's absolute paths.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use common::{Client, ServerFixture};
use ferry_protocol::message::{EntryKind, TO_END};
use ferry_protocol::ErrorCode;

fn tree(root: &std::path::Path) {
    let outer = root.parent().unwrap();
    std::fs::create_dir_all(root.join("pub/inner")).unwrap();
    std::fs::write(root.join("pub/ok.txt"), b"fine").unwrap();
    // Symlinks whose targets leave the root: relative, absolute, to a directory, to the sibling
    // whose name shares the root's prefix, and a chain.
    std::os::unix::fs::symlink("../canary.txt", root.join("escape-rel")).unwrap();
    std::os::unix::fs::symlink(outer.join("canary.txt"), root.join("escape-abs")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("linkdir")).unwrap();
    std::os::unix::fs::symlink("../../../root-private", root.join("pub/inner/sibling")).unwrap();
    std::os::unix::fs::symlink("escape-rel", root.join("chain")).unwrap();
    std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
    // Links that stay inside.
    std::os::unix::fs::symlink("pub/ok.txt", root.join("inner-link")).unwrap();
    std::os::unix::fs::symlink("pub", root.join("pubdir-link")).unwrap();
}

async fn expect_refused(client: &mut Client, path: &str, codes: &[ErrorCode]) {
    let stat = client.stat(path).await;
    let list = client.list(path, true, 4).await;
    let fetch = client.fetch(path, 0, TO_END).await;
    for (what, result) in [
        ("stat", stat.map(|e| format!("{e:?}"))),
        ("list", list.map(|e| format!("{e:?}"))),
        ("fetch", fetch.map(|f| format!("{} bytes", f.data.len()))),
    ] {
        match result {
            Err(body) => assert!(
                codes.contains(&body.code),
                "{what} {path:?}: got {body}, expected one of {codes:?}"
            ),
            // Stat follows links like fetch does, so an escaping link is refused by both.
            Ok(desc) => panic!("{what} {path:?} succeeded: {desc}"),
        }
    }
}

async fn run(plaintext: bool, follow_symlinks: bool) {
    let server = ServerFixture::start_with(tree, |c| c.follow_symlinks(follow_symlinks)).await;
    let mut client = Client::connect(server.addr, server.key.clone(), plaintext)
        .await
        .unwrap();
    let invalid = [ErrorCode::INVALID_PATH];
    let too_long = [ErrorCode::NAME_TOO_LONG];
    let cases: Vec<(String, &[ErrorCode])> = vec![
        ("..".into(), &invalid),
        ("../canary.txt".into(), &invalid),
        ("pub/../../canary.txt".into(), &invalid),
        ("pub/..".into(), &invalid),
        ("../root-private/secret.txt".into(), &invalid),
        ("/etc/passwd".into(), &invalid),
        (
            server.dir.path().join("canary.txt").display().to_string(),
            &invalid,
        ),
        ("C:/Windows/win.ini".into(), &invalid),
        ("c:canary.txt".into(), &invalid),
        ("//server/share/canary.txt".into(), &invalid),
        ("\\\\server\\share\\canary.txt".into(), &invalid),
        ("..\\canary.txt".into(), &invalid),
        ("pub\\ok.txt".into(), &invalid),
        ("pub/ok.txt\0".into(), &invalid),
        ("\0".into(), &invalid),
        ("pub//ok.txt".into(), &invalid),
        (format!("pub/{}", "n".repeat(256)), &too_long),
        (
            (0..900).map(|_| "abcd").collect::<Vec<_>>().join("/"),
            &too_long,
        ),
        (vec!["d"; 65].join("/"), &invalid),
        // Symlinks leaving the root: the final component, an intermediate directory, a
        // chain, the prefix-sharing sibling, and `/` itself.
        ("escape-rel".into(), &invalid),
        ("escape-abs".into(), &invalid),
        ("chain".into(), &invalid),
        ("linkdir/secret.txt".into(), &invalid),
        ("linkdir".into(), &invalid),
        ("pub/inner/sibling/secret.txt".into(), &invalid),
        ("slash/etc/passwd".into(), &invalid),
    ];
    for (path, codes) in &cases {
        expect_refused(&mut client, path, codes).await;
    }

    // Listing the whole root recursively shows escaping links as bare links (size 0) and
    // never enters them; links inside the root are described by their targets when followed.
    let entries = client.list("", true, 32).await.unwrap();
    let links: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::SYMLINK)
        .map(|e| e.name.as_str())
        .collect();
    let mut expected = vec![
        "chain",
        "escape-abs",
        "escape-rel",
        "inner-link",
        "linkdir",
        "pub/inner/sibling",
        "pubdir-link",
        "slash",
    ];
    if follow_symlinks {
        expected.retain(|name| !["inner-link", "pubdir-link"].contains(name));
    }
    assert_eq!(links, expected);
    assert!(entries
        .iter()
        .filter(|e| e.kind == EntryKind::SYMLINK)
        .all(|e| e.size == 0));
    assert!(entries
        .iter()
        .all(|e| !e.name.starts_with("linkdir/") && !e.name.contains("secret")));
    // Legitimate access still works on the same connection; a link inside the root is
    // followed unless following is off (then it is refused like any other link).
    assert_eq!(
        client.fetch("pub/ok.txt", 0, TO_END).await.unwrap().data,
        b"fine"
    );
    let inner = client.fetch("inner-link", 0, TO_END).await;
    let inner_dir = client.list("pubdir-link", false, 0).await;
    if follow_symlinks {
        assert_eq!(inner.unwrap().data, b"fine");
        assert_eq!(inner_dir.unwrap().len(), 2);
    } else {
        assert_eq!(inner.unwrap_err().code, ErrorCode::INVALID_PATH);
        assert_eq!(inner_dir.unwrap_err().code, ErrorCode::INVALID_PATH);
    }

    assert!(!client.saw_canary(), "canary content leaked");
    let root = server.dir.path().to_string_lossy().into_owned();
    let transcript = String::from_utf8_lossy(&client.transcript);
    assert!(
        !transcript.contains(&root),
        "a reply revealed the server path {root}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn confinement_encrypted() {
    run(false, true).await;
}

#[tokio::test]
async fn confinement_plaintext() {
    run(true, true).await;
}

/// The per-component `O_NOFOLLOW` resolver (the fallback without `openat2`, or `--no-symlinks`).
#[tokio::test]
async fn confinement_without_following_symlinks() {
    run(false, false).await;
}
