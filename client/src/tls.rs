//! TLS for every listener and every connection of a process (DESIGN.md
//! section 12). A process is given its certificate and key
//! (`--tls-cert`/`--tls-key`) and the CA that signs the cluster's
//! certificates (`--tls-ca`) once, at start ([`install`]); from then on:
//!
//! - every gRPC listener (control plane, worker) and HTTP listener (API,
//!   console, worker `--http`) serves TLS with the certificate;
//! - every gRPC connection to another component dials `https` and checks
//!   the peer's certificate against the CA, presenting the certificate as
//!   the client's;
//! - with the CA given, gRPC listeners also demand a client certificate the
//!   CA signed (mTLS between roles). The API and console do not: tenants'
//!   browsers and SDKs have no client certificates, and a tenant is
//!   authenticated by its key.
//!
//! Without [`install`], everything is plain TCP, as before.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Where a process's TLS material is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.ca.is_none()
    }
}

/// The material, read and checked.
struct Tls {
    cert_pem: Option<Vec<u8>>,
    key_pem: Option<Vec<u8>>,
    ca_pem: Option<Vec<u8>>,
    /// For the HTTP listeners.
    http: Option<Arc<rustls::ServerConfig>>,
}

static TLS: OnceLock<Tls> = OnceLock::new();

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading the TLS {what} {}: {e}", path.display()))
}

/// Reads and checks the files and makes them this process's TLS settings.
/// A second call with other files is refused (a process has one identity).
pub fn install(files: &TlsFiles) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    if files.cert.is_some() != files.key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    let cert_pem = files
        .cert
        .as_deref()
        .map(|p| read(p, "certificate"))
        .transpose()?;
    let key_pem = files.key.as_deref().map(|p| read(p, "key")).transpose()?;
    let ca_pem = files.ca.as_deref().map(|p| read(p, "CA")).transpose()?;
    let http = match (&cert_pem, &key_pem) {
        (Some(cert), Some(key)) => Some(Arc::new(http_config(cert, key)?)),
        _ => None,
    };
    if let Some(ca) = &ca_pem
        && CertificateDer::pem_slice_iter(ca).next().is_none()
    {
        return Err("the TLS CA file holds no PEM certificate".into());
    }
    let tls = Tls {
        cert_pem,
        key_pem,
        ca_pem,
        http,
    };
    let installed = TLS.get_or_init(|| tls);
    if installed.cert_pem.is_some() != files.cert.is_some()
        || installed.ca_pem.is_some() != files.ca.is_some()
    {
        return Err("TLS is already set up differently in this process".into());
    }
    Ok(())
}

fn http_config(cert: &[u8], key: &[u8]) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the TLS certificate is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the TLS certificate file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("the TLS key is not a PEM private key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the TLS certificate and key do not make a server identity: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// `https` when this process dials with TLS, else `http`.
pub fn scheme() -> &'static str {
    if client_config().is_some() {
        "https"
    } else {
        "http"
    }
}

/// How this process's gRPC connections check their peers (with the CA)
/// and present themselves (with the certificate); `None` without a CA.
pub fn client_config() -> Option<ClientTlsConfig> {
    let tls = TLS.get()?;
    let ca = tls.ca_pem.as_ref()?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let (Some(cert), Some(key)) = (&tls.cert_pem, &tls.key_pem) {
        config = config.identity(Identity::from_pem(cert, key));
    }
    Some(config)
}

/// How this process's gRPC listeners serve TLS (demanding a client
/// certificate signed by the CA when one is given); `None` without a
/// certificate.
pub fn server_config() -> Option<ServerTlsConfig> {
    let tls = TLS.get()?;
    let (cert, key) = (tls.cert_pem.as_ref()?, tls.key_pem.as_ref()?);
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &tls.ca_pem {
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Some(config)
}

/// A gRPC server builder that serves TLS when this process has a
/// certificate (and demands client certificates with a CA).
pub fn grpc_server() -> Result<tonic::transport::Server, String> {
    let server = tonic::transport::Server::builder();
    match server_config() {
        Some(tls) => server.tls_config(tls).map_err(|e| format!("TLS: {e}")),
        None => Ok(server),
    }
}

/// The acceptor of this process's HTTP listeners; `None` without a
/// certificate.
pub fn http_acceptor() -> Option<tokio_rustls::TlsAcceptor> {
    TLS.get()?.http.clone().map(tokio_rustls::TlsAcceptor::from)
}

/// An HTTP listener that serves TLS when this process has a certificate:
/// each connection's handshake runs on its own task, so a slow client does
/// not hold up the others.
pub enum HttpListener {
    /// No certificate: connections are accepted as they come.
    Plain(tokio::net::TcpListener),
    /// TLS: a task accepts and hands over connections whose handshake ended.
    Tls {
        accepted: tokio::sync::mpsc::Receiver<(Io, std::net::SocketAddr)>,
        local: std::net::SocketAddr,
    },
}

/// Tokens are small writes: without TCP_NODELAY, Nagle holds them back.
fn accepted(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
}

impl HttpListener {
    pub fn new(listener: tokio::net::TcpListener) -> std::io::Result<Self> {
        let Some(acceptor) = http_acceptor() else {
            return Ok(Self::Plain(listener));
        };
        let local = listener.local_addr()?;
        let (tx, accepted_rx) = tokio::sync::mpsc::channel(64);
        let mut listener = listener;
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (tcp, addr) = axum::serve::Listener::accept(&mut listener).await;
                accepted(&tcp);
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await;
                    if let Ok(Ok(tls)) = handshake {
                        let _ = tx.send((Io::Tls(Box::new(tls)), addr)).await;
                    }
                });
            }
        });
        Ok(Self::Tls {
            accepted: accepted_rx,
            local,
        })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Io;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            // axum's own accept loop (it backs off on errors such as running
            // out of descriptors).
            Self::Plain(listener) => {
                let (tcp, addr) = axum::serve::Listener::accept(listener).await;
                accepted(&tcp);
                (Io::Plain(tcp), addr)
            }
            Self::Tls { accepted, .. } => match accepted.recv().await {
                Some(conn) => conn,
                // The accept task ended: nothing more will come.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match self {
            Self::Plain(listener) => listener.local_addr(),
            Self::Tls { local, .. } => Ok(*local),
        }
    }
}

/// A connection of an [`HttpListener`]: plain or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
