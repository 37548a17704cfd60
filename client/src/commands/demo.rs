//! `ferry demo [DIR]`: the newcomer's first command. Serves DIR (default: the current
//! directory) with an in-process server on 127.0.0.1, a free port and a fresh key, prints the
//! line another terminal could use to connect, and opens the shell on it. Leaving the shell
//! stops the server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ferry_protocol::Key;
use tokio::runtime::Runtime;

use super::{print_lines, Context};
use crate::cli::DemoArgs;
use crate::client::Client;
use crate::error::ClientError;
use crate::shell::Shell;
use crate::url::FerryUrl;

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
    let key = Key::generate();
    let (addr, stop, server) = runtime.block_on(start_server(root.clone(), key.clone()))?;
    let url = FerryUrl::from_socket_addr(addr);
    print_lines([format!(
        "Serving {} on {addr} (read-only, until you leave the shell).",
        root.display()
    )]);
    print_lines(["Connect from another terminal with:"]);
    print_lines([format!("  ferry shell --key {} {url}", key.to_base64())]);

    let config = ctx.client_config_with_key(key);
    let result = runtime
        .block_on(Client::connect(addr, config.clone()))
        .and_then(|client| {
            Shell::new(ctx.clone(), runtime.handle().clone(), client, &url)
                .reconnect_with(config)
                .run(args.batch.as_deref())
        });
    let _ = stop.send(());
    let _ = runtime
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), server).await });
    result
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
