//! `ferry demo [DIR]`: the newcomer's first command. Serves DIR (default: the current
//! directory) with an in-process server on 127.0.0.1, a free port and a fresh key, prints the
//! line another terminal could use to connect, and opens the shell on it. Leaving the shell
//! stops the server.
//!
//! Downloads go to a new directory under the system's temporary directory, never into the
//! served one: `get` of a served file would otherwise collide with the file itself. The banner
//! names it, and it is kept after the demo ends.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ferry_protocol::Key;
use tokio::runtime::Runtime;

use super::{print_lines, Context};
use crate::cli::DemoArgs;
use crate::shell::Shell;
use ferry_client::client::Client;
use ferry_client::error::ClientError;
use ferry_common::keys::connect_line;
use ferry_common::url::FerryUrl;

pub fn run(ctx: &Context, args: DemoArgs, runtime: &Runtime) -> Result<(), ClientError> {
    let dir = match args.dir {
        Some(dir) => dir,
        None => std::env::current_dir().map_err(|e| ClientError::io(".", e))?,
    };
    let root = std::fs::canonicalize(&dir).map_err(|e| ClientError::io(&dir, e))?;
    if !root.is_dir() {
        return Err(ClientError::Usage(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    // Relative paths on the command line mean the directory the user started in.
    let batch = args.batch.map(|b| root_relative(&b)).transpose()?;
    let key = Key::generate();
    let (addr, stop, server) = runtime.block_on(start_server(root.clone(), key.clone()))?;
    let url = FerryUrl::from_socket_addr(addr);
    let downloads = downloads_dir()?;
    std::env::set_current_dir(&downloads).map_err(|e| ClientError::io(&downloads, e))?;
    print_lines([
        format!(
            "Serving {} on {addr} (read-only, until you leave the shell).",
            root.display()
        ),
        format!(
            "Downloads go to {} (a new directory, kept afterwards; lcd changes it).",
            downloads.display()
        ),
        "Connect from another terminal with:".into(),
        format!("  {}", connect_line(&program(), &key, &url)),
    ]);

    let config = ctx.client_config_with_key(key);
    let result = runtime
        .block_on(Client::connect(addr, config.clone()))
        .and_then(|client| {
            Shell::new(ctx.clone(), runtime.handle().clone(), client, &url)
                .reconnect_with(config)
                .run(batch.as_deref())
        });
    let _ = stop.send(());
    let _ = runtime
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), server).await });
    result
}

/// `path` made absolute against the current directory.
fn root_relative(path: &Path) -> Result<PathBuf, ClientError> {
    let cwd = std::env::current_dir().map_err(|e| ClientError::io(".", e))?;
    Ok(cwd.join(path))
}

/// A new, owner-only directory `ferry-demo-N` under the temporary directory. Creating it is
/// the test that no one else has it, so two demos never share one.
fn downloads_dir() -> Result<PathBuf, ClientError> {
    let base = std::env::temp_dir();
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let start = std::process::id();
    for n in 0..1000u32 {
        let dir = base.join(format!("ferry-demo-{}", start.wrapping_add(n)));
        match builder.create(&dir) {
            Ok(()) => return std::fs::canonicalize(&dir).map_err(|e| ClientError::io(&dir, e)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClientError::io(&dir, e)),
        }
    }
    Err(ClientError::Local(format!(
        "no free ferry-demo-N name in {} after 1000 tries",
        base.display()
    )))
}

/// How another terminal runs this `ferry`: its name when `ferry` on PATH is this very
/// program, else its full path (after `cargo run` it is in target/, not on PATH), so the
/// printed line runs as printed.
fn program() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "ferry".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::canonicalize(dir.join("ferry")).is_ok_and(|found| found == exe))
    });
    if on_path {
        "ferry".into()
    } else {
        exe.display().to_string()
    }
}

type Started = (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

async fn start_server(root: PathBuf, key: Key) -> Result<Started, ClientError> {
    let mut config = ferry_server::Config::new(root.clone(), key);
    config.listen = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
    config.allow_plaintext = true;
    let server = ferry_server::Server::bind(config)
        .await
        .map_err(|e| ClientError::Local(format!("cannot start the demo server: {e}")))?;
    let addr = server
        .local_addrs()
        .first()
        .copied()
        .ok_or_else(|| ClientError::Local("the demo server has no address".into()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok((addr, stop, task))
}
