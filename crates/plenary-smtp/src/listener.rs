//! The accept loop: connection caps, per-IP caps, STARTTLS hand-over and shutdown.

use crate::conn::Conn;
use crate::reply::Reply;
use crate::session::{self, Context, End, Session};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Lmtp,
}

/// Counts connections per client IP; the guard gives the slot back on drop.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

struct PerIpGuard {
    map: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpGuard> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpGuard { map: self.clone(), ip })
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut m = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serve `listener` until the shutdown signal; then stop accepting and wait (up to 30 s)
/// for sessions to reach a safe point and close.
pub async fn serve(listener: TcpListener, proto: Protocol, ctx: Arc<Context>) {
    let slots = Arc::new(Semaphore::new(ctx.settings.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let mut shutdown = ctx.shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (mut stream, peer) = match accepted {
            Ok(v) => {
                backoff = Duration::from_millis(10);
                v
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (SECURITY.md F-18).
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        while tasks.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tasks.spawn(async move {
                let _ = stream
                    .write_all(&Reply::new(421, "4.7.0 Too many connections, try again later").to_wire())
                    .await;
            });
            continue;
        };
        let Some(ip_guard) = per_ip.try_take(peer.ip(), ctx.settings.max_connections_per_ip) else {
            tasks.spawn(async move {
                let _ = stream
                    .write_all(&Reply::new(421, "4.7.0 Too many connections from your address").to_wire())
                    .await;
            });
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _ip = ip_guard;
            if let Err(e) = connection(ctx, proto, peer, stream).await {
                tracing::debug!(%peer, error = %e, "session ended with an i/o error");
            }
        });
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
        tracing::warn!("sessions still open after 30 s at shutdown");
    }
}

async fn connection(ctx: Arc<Context>, proto: Protocol, peer: SocketAddr, stream: TcpStream) -> std::io::Result<()> {
    match session::drive(&ctx, proto, peer, stream).await? {
        End::Closed => Ok(()),
        End::StartTls(conn) => {
            let Some(tls) = ctx.settings.tls.clone() else {
                return Ok(());
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            let deadline = ctx.settings.command_timeout;
            let tcp = conn.into_stream();
            let tls_stream = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return Ok(());
                }
                Err(_) => return Ok(()),
            };
            // RFC 3207 §4.2: all state is reset; the client must send EHLO again.
            let conn = Conn::new(tls_stream, ctx.settings.session_timeout);
            Session::new(&ctx, proto, peer, true).run(conn, false).await?;
            Ok(())
        }
    }
}
