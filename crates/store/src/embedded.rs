//! An S3-compatible endpoint inside the process, for the demo and the tests: `s3s` speaks the
//! protocol (SigV4 header and query-string auth included), `s3s-fs` keeps buckets as
//! directories under a data directory, and hyper serves it on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Result, StoreError};

/// How long a graceful shutdown waits for requests in progress.
const DRAIN: Duration = Duration::from_secs(10);

/// A running embedded S3 endpoint. Stop it with [`EmbeddedS3::shutdown`]; dropping it also
/// stops it (without waiting).
#[derive(Debug)]
pub struct EmbeddedS3 {
    addr: SocketAddr,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl EmbeddedS3 {
    /// Serves the data directory `dir` (created if missing) on `127.0.0.1:port` (`0` picks a
    /// free port), accepting only requests signed with this access key and secret key.
    pub async fn start(dir: impl AsRef<Path>, port: u16, access_key: &str, secret_key: &SecretString) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let fail = |what: &str, e: &dyn std::fmt::Display| StoreError::Embedded(format!("{what}: {e}"));
        std::fs::create_dir_all(&dir).map_err(|e| fail(&format!("creating {}", dir.display()), &e))?;
        let fs = s3s_fs::FileSystem::new(&dir)
            .map_err(|e| fail(&format!("opening {}", dir.display()), &format!("{e:?}")))?;
        let service = {
            let mut builder = S3ServiceBuilder::new(fs);
            builder.set_auth(SimpleAuth::from_single(access_key, secret_key.expose_secret()));
            builder.build()
        };

        let socket = TcpSocket::new_v4().map_err(|e| fail("creating a socket", &e))?;
        // A restarted endpoint must get its port back at once, without waiting out TIME_WAIT.
        socket.set_reuseaddr(true).map_err(|e| fail("SO_REUSEADDR", &e))?;
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .map_err(|e| fail(&format!("binding 127.0.0.1:{port}"), &e))?;
        let listener = socket.listen(1024).map_err(|e| fail("listening", &e))?;
        let addr = listener.local_addr().map_err(|e| fail("local address", &e))?;

        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, service, stopped));
        tracing::info!(%addr, dir = %dir.display(), "embedded S3 endpoint started");
        Ok(Self { addr, dir, stop: Some(stop), task: Some(task) })
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops accepting connections and waits (up to 10 s) for requests in progress to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(listener: TcpListener, service: s3s::service::S3Service, mut stopped: oneshot::Receiver<()>) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(err) => {
                    tracing::warn!(error = %err, "embedded S3: accept failed");
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let conn = http.serve_connection(TokioIo::new(socket), service.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "embedded S3: connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("embedded S3 endpoint stopped"),
        () = tokio::time::sleep(DRAIN) => tracing::warn!("embedded S3 endpoint stopped with requests still in progress"),
    }
}
