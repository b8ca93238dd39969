//! The sockets: accept a connection, finish TLS if configured, read one request, hand it to
//! [`Api::handle`] on a blocking thread (the store is synchronous), write the answer, close.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::Api;
use crate::http::{self, Parsed};

/// How long a client has to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once; more are closed at once, so that a flood of idle
/// connections cannot exhaust the server's memory or file descriptors.
const MAX_CONNECTIONS: usize = 256;

/// Serves until `shutdown` completes. Takes its listener, so tests bind `127.0.0.1:0`.
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    api: Arc<Mutex<Api>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        log::warn!("accept: {e}");
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    log::warn!("{peer}: too many connections; closed");
                    continue;
                };
                let api = Arc::clone(&api);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let done = match tls {
                        Some(acceptor) => match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve(s, peer, api).await,
                            Ok(Err(e)) => Err(e),
                            Err(_) => Ok(()),
                        },
                        None => serve(stream, peer, api).await,
                    };
                    if let Err(e) = done {
                        log::debug!("{peer}: {e}");
                    }
                });
            }
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    api: Arc<Mutex<Api>>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let parsed = loop {
        match http::parse(&buf) {
            Parsed::Incomplete => {}
            done => break done,
        }
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (status, body) = match parsed {
        Parsed::Done(req) => {
            let ip: IpAddr = peer.ip();
            let reply = tokio::task::spawn_blocking(move || {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                // A panic in an earlier call rolled its transaction back; the API holds
                // nothing else that it could have left half-changed.
                let mut api = api
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                Some(api.handle(&req, ip, now))
            })
            .await
            .ok()
            .flatten();
            match reply {
                Some(r) => (r.status, r.body.to_string()),
                None => (500, failure(50001, "Internal server error")),
            }
        }
        Parsed::Bad(status, why) => (status, failure(u32::from(status) * 100 + 1, why)),
        Parsed::Incomplete => return Ok(()),
    };
    stream
        .write_all(&http::response(status, body.as_bytes()))
        .await?;
    stream.shutdown().await
}

fn failure(code: u32, message: &str) -> String {
    serde_json::json!({ "stat": "FAIL", "code": code, "message": message }).to_string()
}

/// A TLS acceptor from PEM files: the certificate chain and its private key.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("tls_cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls_cert {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("tls_key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("tls_cert and tls_key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
