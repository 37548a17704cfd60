//! List (spec §3.5): pages produced on a blocking thread one at a time, so a slow client holds
//! no thread. The open and the first page share one trip to the blocking pool, and none is
//! spent only to learn that the listing is over, so a small directory costs one hop.

use ferry_protocol::message::{ListEnd, ListRequest};
use ferry_protocol::Message;

use super::{Context, ServiceError, Sink};
use crate::fs::{FsError, Lister, NameCache};

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
    let tree = ctx.tree.clone();
    let (path, opened) = tokio::task::spawn_blocking(move || {
        let resolver = tree.jail.resolver();
        let opened = tree.jail.open_dir(&path).and_then(|fd| {
            let mut lister = Lister::new(fd, max_depth > 0, max_depth, budget)
                .map_err(|e| FsError::from_errno(e, &path, resolver))?
                .with_links(tree.jail.link_resolver(&path), links)
                .with_cache(NameCache::shared());
            let page = lister
                .next_page(page_bytes)
                .map_err(|e| FsError::from_errno(e, &path, resolver))?;
            Ok((lister, page))
        });
        (path, opened)
    })
    .await?;
    let (mut lister, mut page) = opened?;
    while let Some(current) = page.take() {
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
