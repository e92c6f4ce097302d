//! Health checks: one loop per target group checks every registered, non-draining target
//! each interval, all targets concurrently, and feeds the outcomes to the pool.
//!
//! An HTTP check opens a fresh connection and sends `GET <path> HTTP/1.1` with
//! `Connection: close`; the target passes when the status line's code is one the matcher
//! accepts within the timeout. A TCP check passes when a connection is accepted within
//! the timeout. The loop holds only a weak reference to its pool, so it ends by itself
//! when the group is deleted.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthCheck, Protocol};
use crate::pool::{CheckOutcome, TargetPool, TargetReason};
use crate::Background;

/// The longest status line (and headers before it) a health check reads.
const MAX_STATUS_LINE: usize = 1024;

/// Starts the health check loop of `pool`.
pub(crate) fn spawn(pool: Weak<TargetPool>) -> Background {
    Background::spawn(async move {
        loop {
            let interval = {
                let Some(pool) = pool.upgrade() else { return };
                match pool.to_check() {
                    Some((check, targets)) => {
                        let checks = targets.into_iter().map(|(target, addr)| {
                            let check = check.clone();
                            async move { (target, check_once(&check, addr).await) }
                        });
                        let results = futures::future::join_all(checks).await;
                        pool.record(results);
                        check.interval
                    }
                    None => pool.settings().health_check.interval,
                }
            };
            tokio::time::sleep(interval).await;
        }
    })
}

/// One health check of one target.
pub(crate) async fn check_once(check: &HealthCheck, target: SocketAddr) -> CheckOutcome {
    let addr = SocketAddr::new(target.ip(), check.port.unwrap_or(target.port()));
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| failed(TargetReason::FailedHealthChecks, format!("connect: {e}")))?;
        match check.protocol {
            Protocol::Tcp => Ok(()),
            Protocol::Http => http_check(&mut stream, check, addr).await,
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(Ok(())) => CheckOutcome::Passed,
        Ok(Err(outcome)) => outcome,
        Err(_) => failed(
            TargetReason::Timeout,
            format!("no answer within {}", seconds(check.timeout)),
        ),
    }
}

async fn http_check(
    stream: &mut TcpStream,
    check: &HealthCheck,
    addr: SocketAddr,
) -> Result<(), CheckOutcome> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ELB-HealthChecker/2.0\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| failed(TargetReason::FailedHealthChecks, format!("send: {e}")))?;
    let mut buffer = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            break end;
        }
        if buffer.len() >= MAX_STATUS_LINE {
            return Err(failed(
                TargetReason::FailedHealthChecks,
                "the response has no HTTP status line".into(),
            ));
        }
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| failed(TargetReason::FailedHealthChecks, format!("receive: {e}")))?;
        if read == 0 {
            return Err(failed(
                TargetReason::FailedHealthChecks,
                "the connection closed before a response".into(),
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let line = String::from_utf8_lossy(&buffer[..line_end]);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| {
            failed(
                TargetReason::FailedHealthChecks,
                format!("not an HTTP status line: {:?}", line.trim_end()),
            )
        })?;
    if check.matcher.matches(status) {
        Ok(())
    } else {
        Err(failed(
            TargetReason::ResponseCodeMismatch,
            format!("Health checks failed with these codes: [{status}]"),
        ))
    }
}

fn failed(reason: TargetReason, detail: String) -> CheckOutcome {
    CheckOutcome::Failed { reason, detail }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Matcher;

    fn check(protocol: Protocol, matcher: &str) -> HealthCheck {
        HealthCheck {
            protocol,
            port: None,
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            matcher: Matcher::parse(matcher).unwrap(),
        }
    }

    /// A server answering each connection with `response` once.
    async fn answering(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_checks_match_status_codes() {
        let ok = answering("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(
            check_once(&check(Protocol::Http, "200-299"), ok).await,
            CheckOutcome::Passed
        );
        let outcome = check_once(&check(Protocol::Http, "200"), ok).await;
        assert!(matches!(
            outcome,
            CheckOutcome::Failed {
                reason: TargetReason::ResponseCodeMismatch,
                ..
            }
        ));
        let garbage = answering("SSH-2.0-OpenSSH\r\n").await;
        assert!(matches!(
            check_once(&check(Protocol::Http, "200"), garbage).await,
            CheckOutcome::Failed { .. }
        ));
    }

    #[tokio::test]
    async fn tcp_checks_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            check_once(&check(Protocol::Tcp, "200"), addr).await,
            CheckOutcome::Passed
        );
        drop(listener);
        assert!(matches!(
            check_once(&check(Protocol::Tcp, "200"), addr).await,
            CheckOutcome::Failed { .. }
        ));
    }

    #[tokio::test]
    async fn a_silent_target_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut hc = check(Protocol::Http, "200");
        hc.timeout = Duration::from_millis(200);
        let outcome = check_once(&hc, addr).await;
        assert!(matches!(
            outcome,
            CheckOutcome::Failed {
                reason: TargetReason::Timeout,
                ..
            }
        ));
        drop(listener);
    }
}
