//! Misbehaving peers on loopback, each in its own thread and runtime (like another process):
//! a listener that accepts TCP and never speaks, a TCP proxy that can be paused (a stopped
//! process or a blackholed path: sockets stay open, no bytes move), and a raw HTTP/2 server that
//! resets every stream after sending response headers.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bind() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// Accepts connections and holds them open without sending a byte.
pub struct Blackhole {
    pub addr: SocketAddr,
    _rt: Background,
}

/// A runtime that may be dropped from async code (tests run inside another runtime).
struct Background(Option<tokio::runtime::Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Blackhole {
    pub fn start() -> Self {
        let rt = runtime();
        let (l, addr) = bind();
        rt.spawn(async move {
            let l = TcpListener::from_std(l).expect("listener");
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        Self {
            addr,
            _rt: Background(Some(rt)),
        }
    }
}

/// A TCP proxy to `target` whose traffic can be paused in both directions.
pub struct PausableProxy {
    pub addr: SocketAddr,
    paused: Arc<AtomicBool>,
    rt: Option<tokio::runtime::Runtime>,
}

impl PausableProxy {
    pub fn start(target: SocketAddr, paused: bool) -> Self {
        let rt = runtime();
        let (l, addr) = bind();
        let flag = Arc::new(AtomicBool::new(paused));
        let p = flag.clone();
        rt.spawn(async move {
            let l = TcpListener::from_std(l).expect("listener");
            while let Ok((client, _)) = l.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, p.clone()));
                tokio::spawn(pipe(sr, cw, p.clone()));
            }
        });
        Self {
            addr,
            paused: flag,
            rt: Some(rt),
        }
    }

    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Bounded reads so a pause takes effect between chunks.
        let n = match tokio::time::timeout(Duration::from_millis(20), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        while paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// An HTTP/2 server that answers every request with gRPC response headers, then resets the
/// stream with `CANCEL`.
pub struct ResetAfterHeaders {
    pub addr: SocketAddr,
    _rt: Background,
}

impl ResetAfterHeaders {
    pub fn start() -> Self {
        let rt = runtime();
        let (l, addr) = bind();
        rt.spawn(async move {
            let l = TcpListener::from_std(l).expect("listener");
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        let resp = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("response");
                        if let Ok(mut stream) = respond.send_response(resp, false) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            stream.send_reset(h2::Reason::CANCEL);
                        }
                    }
                });
            }
        });
        Self {
            addr,
            _rt: Background(Some(rt)),
        }
    }
}

/// A server that greets every connection with a non-HTTP/2 banner (an SSH server on the port
/// the client was told, say) and keeps the socket open.
pub struct Banner {
    pub addr: SocketAddr,
    _rt: Background,
}

impl Banner {
    pub fn start(banner: &'static [u8]) -> Self {
        let rt = runtime();
        let (l, addr) = bind();
        rt.spawn(async move {
            let l = TcpListener::from_std(l).expect("listener");
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(banner).await;
                held.push(s);
            }
        });
        Self {
            addr,
            _rt: Background(Some(rt)),
        }
    }
}
