//! The connection under a subchannel: a TCP connector (optionally doing TLS itself) whose
//! socket reports the moment the connection closes (EOF, error or drop), the moment the
//! server's HTTP/2 preface arrives, and the moment the server sends GOAWAY, so a dead backend
//! leaves the picker at once, READY means the server really speaks HTTP/2, and a draining
//! connection (a server recycling it: gRPC's `max_connection_age`) is replaced at once while it
//! finishes its streams.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tonic::transport::Uri;

use crate::BoxError;

/// Closed-connection signal shared by a connector and the IO it made.
#[derive(Debug, Default)]
pub(crate) struct ConnWatch {
    closed: AtomicBool,
    notify: Notify,
    /// The server's HTTP/2 preface (a SETTINGS frame) arrived: the connection really works.
    heard: AtomicBool,
    heard_notify: Notify,
    /// The server sent GOAWAY: the connection takes no new streams (it finishes the others).
    away: AtomicBool,
    away_notify: Notify,
    /// The connector has made its connection: it makes no other (see [`WatchConnector`]).
    used: AtomicBool,
}

impl ConnWatch {
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    pub(crate) async fn closed(&self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.notify.notified().await;
    }

    fn hear(&self) {
        if !self.heard.swap(true, Ordering::AcqRel) {
            self.heard_notify.notify_one();
        }
    }

    fn go_away(&self) {
        if !self.away.swap(true, Ordering::AcqRel) {
            self.away_notify.notify_one();
        }
    }

    /// Whether the server has sent GOAWAY.
    pub(crate) fn went_away(&self) -> bool {
        self.away.load(Ordering::Acquire)
    }

    /// Completes when the server has sent GOAWAY (a draining connection). Only seen on
    /// plain-text HTTP/2 or TLS done by the balancer's connector, not through TLS configured on
    /// the endpoint template (the bytes are encrypted there); a request then meets the GOAWAY
    /// instead.
    pub(crate) async fn going_away(&self) {
        if self.away.load(Ordering::Acquire) {
            return;
        }
        self.away_notify.notified().await;
    }

    /// Waits for the server's first bytes; fails if the connection closes first.
    pub(crate) async fn server_preface(&self) -> Result<(), &'static str> {
        if self.heard.load(Ordering::Acquire) {
            return Ok(());
        }
        tokio::select! {
            _ = self.heard_notify.notified() => Ok(()),
            _ = self.closed() => {
                if self.heard.load(Ordering::Acquire) { Ok(()) } else { Err("connection closed before the server's HTTP/2 preface") }
            }
        }
    }
}

/// TLS done by the connector itself (feature `tls`), below the HTTP/2 preface check: READY then
/// means the handshake completed *and* the server's SETTINGS arrived through it.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// Name to verify instead of the address's host.
    pub(crate) server_name: Option<String>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// TCP connector (nodelay) whose sockets report closing to a [`ConnWatch`].
///
/// It connects once. tonic's `Channel` would otherwise re-establish a lost or drained
/// connection in place on the next request, unseen by the subchannel (a second connection to
/// the endpoint, outside its state and generation); refused, the request fails with a
/// `ConnectError` before it is sent, and is retried transparently on the subchannel's
/// replacement connection.
#[derive(Clone, Debug)]
pub(crate) struct WatchConnector {
    pub(crate) watch: Arc<ConnWatch>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Tls>,
}

impl tower_service::Service<Uri> for WatchConnector {
    type Response = TokioIo<WatchedIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if self.watch.used.swap(true, Ordering::AcqRel) {
            return Box::pin(async {
                Err("pickwise: the subchannel replaces its connection; not reconnecting in place".into())
            });
        }
        let watch = self.watch.clone();
        #[cfg(feature = "tls")]
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("URI has no host")?
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            #[cfg(feature = "tls")]
            let stream = match tls {
                Some(tls) => {
                    use tokio_rustls::rustls::pki_types::ServerName;
                    let name = tls.server_name.as_deref().unwrap_or(host);
                    let name = ServerName::try_from(name.to_string())?;
                    Io::Tls(Box::new(tls.connector.connect(name, tcp).await?))
                }
                None => Io::Tcp(tcp),
            };
            #[cfg(not(feature = "tls"))]
            let stream = Io::Tcp(tcp);
            Ok(TokioIo::new(WatchedIo {
                stream,
                watch,
                preface: Preface::default(),
                frames: Some(Frames::default()),
            }))
        })
    }
}

/// A TCP stream that tells its [`ConnWatch`] when it reads EOF, fails, or is dropped.
#[derive(Debug)]
pub(crate) struct WatchedIo {
    stream: Io,
    watch: Arc<ConnWatch>,
    preface: Preface,
    /// Frame boundaries of what the server sends, to see its GOAWAY; `None` when the bytes are
    /// not plain HTTP/2 (TLS on the endpoint template, or not HTTP/2 at all).
    frames: Option<Frames>,
}

/// The socket: plain TCP, or TLS done by the connector.
#[derive(Debug)]
enum Io {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Io::Tcp($s) => $e,
            #[cfg(feature = "tls")]
            Io::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self.get_mut(), s => Pin::new(s).poll_write(cx, data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        delegate!(self, s => s.is_write_vectored())
    }
}

/// The first 9 bytes the server sends: an HTTP/2 server's connection preface starts with a
/// SETTINGS frame header (type 0x4, stream 0, no ACK) (RFC 9113 §3.4). grpc-go marks a
/// connection READY only once it has received it.
#[derive(Debug, Default)]
struct Preface {
    head: [u8; 9],
    len: usize,
    done: bool,
}

/// What the first bytes of a connection said.
#[derive(Debug, PartialEq, Eq)]
enum PrefaceSeen {
    /// Not enough bytes yet.
    Pending,
    /// An HTTP/2 SETTINGS frame.
    Settings,
    /// A TLS record: TLS is configured on the endpoint template, so the HTTP/2 preface is
    /// encrypted; the handshake has completed (tonic's connector finishes it before the channel
    /// exists) and the server is talking.
    Tls,
    /// Anything else: not an HTTP/2 server.
    Garbage,
}

impl Preface {
    fn feed(&mut self, bytes: &[u8]) -> PrefaceSeen {
        if self.done {
            return PrefaceSeen::Pending;
        }
        if self.len == 0 && bytes.first().is_some_and(|&b| (0x14..=0x17).contains(&b)) {
            self.done = true;
            return PrefaceSeen::Tls;
        }
        let take = (9 - self.len).min(bytes.len());
        self.head[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
        if self.len < 9 {
            return PrefaceSeen::Pending;
        }
        self.done = true;
        let h = &self.head;
        let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
        if h[3] == 0x4 && h[4] & 0x1 == 0 && stream == 0 {
            PrefaceSeen::Settings
        } else {
            PrefaceSeen::Garbage
        }
    }
}

/// Follows the frames of the server's side of an HTTP/2 connection (RFC 9113 §4.1: a 9-byte
/// header with a 24-bit length and a type, then the payload) to notice GOAWAY (type 0x7) without
/// decoding anything else. Costs a few comparisons per frame.
#[derive(Debug, Default)]
struct Frames {
    head: [u8; 9],
    len: usize,
    /// Payload bytes of the current frame still to pass over.
    skip: usize,
}

impl Frames {
    /// Feeds bytes read from the server; true if a GOAWAY frame header was among them.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut away = false;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let take = (9 - self.len).min(bytes.len());
            self.head[self.len..self.len + take].copy_from_slice(&bytes[..take]);
            self.len += take;
            bytes = &bytes[take..];
            if self.len == 9 {
                let h = self.head;
                self.len = 0;
                self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                away |= h[3] == 0x7;
            }
        }
        away
    }
}

impl Drop for WatchedIo {
    fn drop(&mut self) {
        self.watch.close();
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.stream).poll_read(cx, buf);
        match &res {
            Poll::Ready(Err(_)) => self.watch.close(),
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => self.watch.close(),
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let this = &mut *self;
                let read = &buf.filled()[before..];
                match this.preface.feed(read) {
                    PrefaceSeen::Settings => this.watch.hear(),
                    PrefaceSeen::Tls => {
                        this.frames = None;
                        this.watch.hear();
                    }
                    PrefaceSeen::Garbage => {
                        this.frames = None;
                        this.watch.close();
                    }
                    PrefaceSeen::Pending => {}
                }
                if this.frames.as_mut().is_some_and(|f| f.feed(read)) {
                    this.watch.go_away();
                }
            }
            _ => {}
        }
        res
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.stream).poll_write(cx, data);
        if let Poll::Ready(Err(_)) = &res {
            self.watch.close();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preface_is_a_settings_frame() {
        // A real server preface: SETTINGS, 6 bytes of payload, stream 0.
        let settings = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(Preface::default().feed(&settings), PrefaceSeen::Settings);
        // Split across reads.
        let mut p = Preface::default();
        assert_eq!(p.feed(&settings[..1]), PrefaceSeen::Pending);
        assert_eq!(p.feed(&settings[1..5]), PrefaceSeen::Pending);
        assert_eq!(p.feed(&settings[5..]), PrefaceSeen::Settings);
        // A SETTINGS ACK, another frame type, or plain text is not a preface.
        assert_eq!(
            Preface::default().feed(&[0, 0, 0, 0x4, 1, 0, 0, 0, 0]),
            PrefaceSeen::Garbage
        );
        assert_eq!(
            Preface::default().feed(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0]),
            PrefaceSeen::Garbage
        );
        assert_eq!(
            Preface::default().feed(b"HTTP/1.1 400 Bad Request\r\n"),
            PrefaceSeen::Garbage
        );
        // A TLS handshake record.
        assert_eq!(Preface::default().feed(&[0x16, 3, 3, 0, 90]), PrefaceSeen::Tls);
    }

    #[test]
    fn frames_find_a_goaway_across_reads() {
        let settings = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        // A DATA frame whose payload holds a byte 0x7 where a type would be.
        let data = [0, 0, 4, 0x0, 0, 0, 0, 0, 1, 0, 0, 0, 0x7];
        let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        let mut f = Frames::default();
        assert!(!f.feed(&settings));
        assert!(!f.feed(&data));
        let stream: Vec<u8> = [&settings[..], &data[..], &goaway[..]].concat();
        let mut f = Frames::default();
        let mut seen = false;
        for chunk in stream.chunks(5) {
            seen |= f.feed(chunk);
        }
        assert!(seen);
        let mut f = Frames::default();
        assert!(!f.feed(&stream[..settings.len() + data.len()]));
        assert!(f.feed(&goaway));
    }
}
