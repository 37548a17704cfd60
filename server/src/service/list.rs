//! List (spec §3.5): pages produced on a blocking thread one at a time, so a slow client holds
//! no thread. The open and the first page share one trip to the blocking pool, and none is
//! spent only to learn that the listing is over, so a small directory costs one hop.
//!
//! A non-recursive listing of a small directory is answered from the [`EntryCache`] while
//! inotify reports no change in it (no `getdents`, no `fstatat` per entry), and the last page
//! and the end leave as one burst.

use std::sync::Arc;

use ferry_protocol::message::{ListEnd, ListPage, ListRequest};
use ferry_protocol::Message;

use super::{Context, ServiceError, Sink};
use crate::fs::entries::Listing;
use crate::fs::{EntryCache, FsError, Lister, NameCache};

/// What the blocking open found: a kept listing, or a walk and its first page.
enum Opened {
    Kept(Arc<Listing>),
    Walk(Lister, Option<ListPage>),
}

/// Answers one list request. Returns the number of entries.
pub(crate) async fn list(
    ctx: &Context,
    request: ListRequest,
    sink: &Sink,
) -> Result<u64, ServiceError> {
    let path = ctx.readable(&request.path)?;
    let limits = &ctx.tree.limits;
    let max_depth = if request.recursive {
        request.max_depth.min(limits.max_list_depth)
    } else {
        0
    };
    let budget = limits.list_batch_bytes;
    let links = request.links;
    let page_bytes = ctx.page_bytes;
    // A kept listing of a directory whose path is in the kernel's caches is answered on this
    // thread: an `openat2` that cannot wait for a disk, an `fstat` and an empty read of the
    // event queue, cheaper than a trip to the blocking pool.
    let mut opened_here = None;
    if max_depth == 0 {
        if let Some(fd) = ctx.tree.jail.open_dir_cached(&path)? {
            if let Ok(Some(listing)) = EntryCache::shared().lookup(&fd) {
                return send_kept(&listing, page_bytes, sink).await;
            }
            opened_here = Some(fd);
        }
    }
    let tree = ctx.tree.clone();
    let (path, opened) = tokio::task::spawn_blocking(move || {
        let resolver = tree.jail.resolver();
        let looked = opened_here.is_some();
        let fd = match opened_here {
            Some(fd) => Ok(fd),
            None => tree.jail.open_dir(&path),
        };
        let opened = fd.and_then(|fd| {
            if max_depth == 0 {
                // Errors here leave the listing to the lister, which reports them.
                let cache = EntryCache::shared();
                let kept = (!looked)
                    .then(|| cache.lookup(&fd).ok().flatten())
                    .flatten()
                    .or_else(|| cache.fill(&fd).ok().flatten());
                if let Some(listing) = kept {
                    return Ok(Opened::Kept(listing));
                }
            }
            let mut lister = Lister::new(fd, max_depth > 0, max_depth, budget)
                .map_err(|e| FsError::from_errno(e, &path, resolver))?
                .with_links(tree.jail.link_resolver(&path), links)
                .with_cache(NameCache::shared());
            let page = lister
                .next_page(page_bytes)
                .map_err(|e| FsError::from_errno(e, &path, resolver))?;
            Ok(Opened::Walk(lister, page))
        });
        (path, opened)
    })
    .await?;
    let (mut lister, mut page) = match opened? {
        Opened::Kept(listing) => return send_kept(&listing, page_bytes, sink).await,
        Opened::Walk(lister, page) => (lister, page),
    };
    while let Some(current) = page.take() {
        if lister.is_done() && lister.skipped() == 0 {
            // The last page and the end in one burst: one write.
            let entries = lister.total();
            let end = Message::ListEnd(ListEnd { entries });
            sink.send_all(vec![Message::ListPage(current), end]).await?;
            return Ok(entries);
        }
        sink.send(Message::ListPage(current)).await?;
        if lister.is_done() {
            break;
        }
        let (returned, next) = tokio::task::spawn_blocking(move || {
            let next = lister.next_page(page_bytes);
            (lister, next)
        })
        .await?;
        lister = returned;
        page = next.map_err(|errno| FsError::from_errno(errno, &path, ctx.tree.jail.resolver()))?;
    }
    if lister.skipped() > 0 {
        tracing::debug!(
            skipped = lister.skipped(),
            "names that are not utf-8 were not listed"
        );
    }
    let entries = lister.total();
    sink.send(Message::ListEnd(ListEnd { entries })).await?;
    Ok(entries)
}

/// A kept listing's pages and its end, queued as one burst.
async fn send_kept(listing: &Listing, page_bytes: usize, sink: &Sink) -> Result<u64, ServiceError> {
    if listing.skipped() > 0 {
        tracing::debug!(
            skipped = listing.skipped(),
            "names that are not utf-8 were not listed"
        );
    }
    let entries = listing.entries().len() as u64;
    let mut frames: Vec<Message> = listing
        .pages(page_bytes)
        .into_iter()
        .map(Message::ListPage)
        .collect();
    frames.push(Message::ListEnd(ListEnd { entries }));
    sink.send_all(frames).await?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use ferry_protocol::{ErrorCode, Principal};

    fn request(path: &str, recursive: bool) -> ListRequest {
        ListRequest {
            path: path.into(),
            recursive,
            max_depth: 8,
            links: false,
        }
    }

    /// Names from every page, in order, and the end frame's count.
    fn names(frames: &[Message]) -> (Vec<String>, Option<u64>) {
        let mut names = Vec::new();
        let mut end = None;
        for frame in frames {
            match frame {
                Message::ListPage(page) => {
                    assert!(end.is_none(), "a page after the end");
                    names.extend(page.entries.iter().map(|e| e.name.clone()));
                }
                Message::ListEnd(e) => end = Some(e.entries),
                other => panic!("{other:?}"),
            }
        }
        (names, end)
    }

    /// A non-recursive listing kept in the entry cache follows a file changed, replaced and
    /// removed between two listings, and a small listing is one page and the end.
    #[tokio::test]
    async fn a_kept_listing_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(name), b"1").unwrap();
        }
        let ctx = context(dir.path(), Principal::key_holder());
        let (sink, mut rx) = sink();
        let listed = |rx: &mut tokio::sync::mpsc::Receiver<super::super::Out>| {
            let frames = drain(rx);
            assert!(
                matches!(&frames[..], [Message::ListPage(_), Message::ListEnd(_)]),
                "{frames:?}"
            );
            let Message::ListPage(page) = &frames[0] else {
                unreachable!("matched above")
            };
            page.entries
                .iter()
                .map(|e| (e.name.clone(), e.size))
                .collect::<Vec<_>>()
        };
        let ones = |names: &[&str]| names.iter().map(|n| (n.to_string(), 1)).collect::<Vec<_>>();
        for _ in 0..2 {
            list(&ctx, request("", false), &sink).await.unwrap();
            assert_eq!(listed(&mut rx), ones(&["a", "b", "c"]));
        }
        std::fs::write(dir.path().join("a"), b"grown").unwrap();
        std::fs::write(dir.path().join("new"), b"replaced").unwrap();
        std::fs::rename(dir.path().join("new"), dir.path().join("b")).unwrap();
        std::fs::remove_file(dir.path().join("c")).unwrap();
        list(&ctx, request("", false), &sink).await.unwrap();
        assert_eq!(
            listed(&mut rx),
            [("a".to_string(), 5), ("b".to_string(), 8)]
        );
    }

    /// The path of a listing answered on the runtime thread resolves beneath the root like
    /// the blocking one: a link to a directory outside, warmed in every cache, is refused
    /// twice in a row (so the second answer, if any, would come from the kept listing).
    #[tokio::test]
    async fn a_kept_listing_is_reached_only_through_the_jail() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(outer.path().join("secret")).unwrap();
        std::fs::write(outer.path().join("secret/CANARY"), b"x").unwrap();
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("planted")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("absolute")).unwrap();
        let outside = context(outer.path(), Principal::key_holder());
        let ctx = context(&root, Principal::key_holder());
        let (sink, mut rx) = sink();
        for _ in 0..2 {
            // Keep the outside directory's listing, as another tree's client could.
            list(&outside, request("secret", false), &sink)
                .await
                .unwrap();
            drain(&mut rx);
            for name in ["planted", "absolute"] {
                let err = list(&ctx, request(name, false), &sink).await.unwrap_err();
                assert!(
                    matches!(&err, ServiceError::Fs(e) if e.code() == ErrorCode::INVALID_PATH),
                    "{name}: {err:?}"
                );
                assert!(drain(&mut rx).is_empty());
            }
        }
    }

    #[tokio::test]
    async fn pages_then_an_end_that_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/x"), b"1").unwrap();
        std::fs::write(dir.path().join("b"), b"2").unwrap();
        let mut ctx = context(dir.path(), Principal::key_holder());
        let (sink, mut rx) = sink();
        assert_eq!(list(&ctx, request("", false), &sink).await.unwrap(), 2);
        assert_eq!(
            names(&drain(&mut rx)),
            (vec!["b".into(), "d".into()], Some(2))
        );
        // Tiny pages: one entry each, same result.
        ctx.page_bytes = 1;
        assert_eq!(list(&ctx, request("", true), &sink).await.unwrap(), 3);
        let frames = drain(&mut rx);
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(
            names(&frames),
            (vec!["b".into(), "d".into(), "d/x".into()], Some(3))
        );
        let err = list(&ctx, request("b", false), &sink).await.unwrap_err();
        assert!(
            matches!(&err, ServiceError::Fs(e) if e.code() == ErrorCode::NOT_A_DIRECTORY),
            "{err:?}"
        );
    }
}
