//! The transport seam end to end: the real server and the real client talk over in-memory pipes,
//! no socket between them, through `Server::run_with` (an `Acceptor`) and
//! `ClientConfig::connector` (a `Connector`). A relay or QUIC stream plugs in the same way.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_client::{Client, ClientConfig};
use ferry_protocol::message::TO_END;
use ferry_protocol::transport::{Acceptor, BoxedStream, Connecting, Connector};
use ferry_protocol::Key;
use ferry_testkit::{data, test_config, tree};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Hands each dialled pipe's far end to the server.
#[derive(Debug)]
struct PipeConnector(mpsc::Sender<DuplexStream>);

impl Connector for PipeConnector {
    fn connect(&self, _addr: SocketAddr) -> Connecting<'_> {
        Box::pin(async move {
            let (near, far) = tokio::io::duplex(256 * 1024);
            self.0
                .send(far)
                .await
                .map_err(|_| std::io::Error::other("the server is gone"))?;
            Ok(Box::new(near) as BoxedStream)
        })
    }
}

/// The server's side: pipes as they are dialled.
struct PipeAcceptor(mpsc::Receiver<DuplexStream>);

impl Acceptor for PipeAcceptor {
    type Stream = DuplexStream;

    async fn accept(&mut self) -> std::io::Result<(DuplexStream, SocketAddr)> {
        match self.0.recv().await {
            Some(pipe) => Ok((pipe, SocketAddr::from(([127, 0, 0, 1], 1)))),
            // No more dialers: nothing will ever arrive.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
    }
}

#[tokio::test]
async fn a_client_and_a_server_work_over_pipes_without_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), 3 << 20);
    let key = Key::generate();
    let server = ferry_server::Server::bind(test_config(dir.path(), &key))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_with(vec![PipeAcceptor(rx)], async move {
        let _ = stop_rx.await;
    }));

    // Nothing listens at this address; only the pipe can carry the connection.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = ClientConfig::new(key).connector(Arc::new(PipeConnector(tx)));
    let client = Client::connect(nowhere, config).await.unwrap();
    assert_eq!(client.stat("a.txt").await.unwrap().size, 6);
    let names: Vec<String> = client
        .list("docs", false, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["deep", "readme.md"]);
    let mut stream = client.fetch("big.bin", 0, TO_END).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(got == data(3 << 20, 42), "the fetched bytes differ");

    drop(client);
    let _ = stop_tx.send(());
    running.await.unwrap().unwrap();
}
