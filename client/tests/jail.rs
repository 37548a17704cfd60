//! Downloads write only beneath their destination (issue 15 item 4): a symbolic link planted in
//! the destination, to a directory or file outside it, or in the place of a partial file, never
//! carries a write out of it, and the download says why it stopped.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use ferry_client::transfer::{download_file, download_tree, part_path, Cancel, GetOptions};
use ferry_client::{Client, ClientConfig, NoProgress};
use ferry_protocol::Key;
use ferry_testkit::{block_on, tree, TestServer};
use std::os::unix::fs::symlink;

/// A served tree, an empty destination, and outside both a canary file and a directory.
struct Setup {
    dir: tempfile::TempDir,
    server: TestServer,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        tree(&served, 1024);
        std::fs::create_dir(dir.path().join("dest")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("canary.txt"), b"CANARY").unwrap();
        let server = TestServer::start(&served, &Key::generate());
        Self { dir, server }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    async fn client(&self) -> Client {
        Client::connect(self.server.addr, ClientConfig::new(self.server.key.clone()))
            .await
            .unwrap()
    }

    /// Nothing outside the destination was written.
    fn outside_untouched(&self) {
        assert_eq!(std::fs::read(self.path("canary.txt")).unwrap(), b"CANARY");
        let names: Vec<_> = std::fs::read_dir(self.path("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "written outside: {names:?}");
    }
}

#[test]
fn a_tree_does_not_follow_a_planted_directory_link_out() {
    let s = Setup::new();
    let dest = s.path("dest");
    symlink("../outside", dest.join("docs")).unwrap();
    block_on(async {
        let client = s.client().await;
        let report = download_tree(
            &client,
            "",
            &dest,
            &GetOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        let failed: Vec<String> = report
            .failed
            .iter()
            .map(|(path, e)| format!("{path}: {e}"))
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].starts_with("docs: ") && failed[0].contains("symbolic link"),
            "{failed:?}"
        );
        // The rest of the tree arrived.
        assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"alpha\n");
    });
    s.outside_untouched();
}

#[test]
fn a_planted_partial_file_link_is_refused_not_written_through() {
    let s = Setup::new();
    let dest = s.path("dest");
    // A tree file and a single file, each with its partial-file name pointing at the canary.
    symlink("../canary.txt", part_path(&dest.join("a.txt"))).unwrap();
    std::fs::create_dir(dest.join("single")).unwrap();
    symlink("../../canary.txt", part_path(&dest.join("single/big.bin"))).unwrap();
    block_on(async {
        let client = s.client().await;
        let report = download_tree(
            &client,
            "",
            &dest,
            &GetOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        let failed: Vec<String> = report
            .failed
            .iter()
            .map(|(path, e)| format!("{path}: {e}"))
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].starts_with("a.txt: ") && failed[0].contains("symbolic link"),
            "{failed:?}"
        );
        let err = download_file(
            &client,
            "big.bin",
            &dest.join("single/big.bin"),
            &GetOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    });
    s.outside_untouched();
}
