//! Stat (spec §3.6): one entry; a final symlink inside the root is followed.

use ferry_protocol::message::StatRequest;
use ferry_protocol::Message;

use super::{Context, ServiceError, Sink};

/// Answers one stat request. Returns 0 data bytes.
pub(crate) async fn stat(
    ctx: &Context,
    request: StatRequest,
    sink: &Sink,
) -> Result<u64, ServiceError> {
    let path = ctx.readable(&request.path)?;
    let tree = ctx.tree.clone();
    let (path, meta) = tokio::task::spawn_blocking(move || {
        let meta = tree.jail.stat(&path);
        (path, meta)
    })
    .await?;
    let entry = meta?.entry(path.file_name().to_owned());
    sink.send(Message::StatResponse(entry)).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use ferry_protocol::message::EntryKind;
    use ferry_protocol::{ErrorCode, Principal};

    #[tokio::test]
    async fn one_entry_named_by_its_last_component() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a"), b"hello").unwrap();
        let ctx = context(dir.path(), Principal::key_holder());
        let (sink, mut rx) = sink();
        let bytes = stat(&ctx, StatRequest { path: "d/a".into() }, &sink)
            .await
            .unwrap();
        assert_eq!(bytes, 0);
        match &drain(&mut rx)[..] {
            [Message::StatResponse(entry)] => {
                assert_eq!(
                    (entry.name.as_str(), entry.kind, entry.size),
                    ("a", EntryKind::FILE, 5)
                );
            }
            other => panic!("{other:?}"),
        }
        let missing = stat(&ctx, StatRequest { path: "d/b".into() }, &sink)
            .await
            .unwrap_err();
        assert!(
            matches!(&missing, ServiceError::Fs(e) if e.code() == ErrorCode::NOT_FOUND),
            "{missing:?}"
        );
        assert!(
            drain(&mut rx).is_empty(),
            "the error frame is run's to send"
        );
    }
}
