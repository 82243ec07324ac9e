//! Delivers the queued reports to the collector: oldest first, one at a time, each exchange bounded
//! (connect timeout, total timeout, at most [`MAX_RESPONSE_BYTES`] of any answer read), so a collector
//! that is down, stalls, or answers without end costs the device nothing but the queue.
//!
//! What the collector's answer means for the report (the collector's rules, `collector/src/http.rs`):
//! 2xx it is stored; 400 (malformed), 409 (replay: its sequence number is not above the last one
//! taken, as when an earlier send was stored but its answer lost), 413 and 422 it never will be, so it
//! is dropped; anything else (5xx, 401/403 for a device not enrolled yet, 408, 429, a redirect, the
//! network) may pass later, so it stays and the queue stops there, keeping the order.
//!
//! The HTTP client is built in one place, [`http_client`]. For an `https://` collector whose CA was
//! pinned at provisioning (`provision --collector-ca`), it speaks mutual TLS
//! ([`crate::channels::CollectorTls`]): only the pinned CA's server is talked to, and the device
//! presents its client certificate, the handshake signed by the identity key (in its token when it is
//! in one), so the collector knows which device speaks before it reads a byte.

use std::time::Duration;

use crate::channels::{CollectorTls, COLLECTOR_CA_FILE};
use crate::clock::now_unix;
use crate::config::{AgentConfig, ReportConfig};
use crate::error::{error_chain, Error, Result};
use crate::report_queue::{Delivery, ReportQueue};

/// The most bytes of a collector's answer read (its JSON refusal is well under this); the rest is
/// never read, and the connection is dropped.
pub const MAX_RESPONSE_BYTES: usize = 4096;
/// The most of an answer kept in a message.
const MAX_EXCERPT: usize = 300;

/// The collector's TLS: mutual TLS with the identity's client certificate when the collector is
/// `https://` and its CA is pinned in the state directory; `None` otherwise (plain loopback HTTP, or
/// HTTPS through the built-in web roots as before a CA is pinned).
pub fn collector_tls(config: &AgentConfig, report: &ReportConfig) -> Result<Option<CollectorTls>> {
    if !report.collector_url.starts_with("https://") || !config.state_dir.join(COLLECTOR_CA_FILE).exists() {
        return Ok(None);
    }
    let identity = crate::identity::open_configured(config)?;
    CollectorTls::load(&config.state_dir, identity).map(Some)
}

/// The HTTP client for the collector: connect and total timeouts, no redirects (a report goes where it
/// was configured to go or nowhere), HTTP/1.1, and `tls` when given (mutual TLS).
pub fn http_client(report: &ReportConfig, tls: Option<&CollectorTls>) -> Result<reqwest::Client> {
    let builder = match tls {
        Some(tls) => reqwest::Client::builder().use_preconfigured_tls((*tls.rustls_config()).clone()),
        None => reqwest::Client::builder(),
    };
    builder
        .connect_timeout(report.connect_timeout)
        .timeout(report.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("device-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::ReportClient { why: error_chain(&e) })
}

/// How a delivery pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The queue is empty (every report delivered, or refused for good).
    Emptied,
    /// A report could not be delivered now; it and those after it wait.
    Stopped,
}

/// Sends the queued reports, oldest first, until the queue is empty or one must wait.
pub async fn deliver_queued(
    queue: &ReportQueue,
    config: &AgentConfig,
    report: &ReportConfig,
) -> Result<Pass> {
    if queue.oldest()?.is_none() {
        // Nothing to send: no client, no token session.
        return Ok(Pass::Emptied);
    }
    let tls = collector_tls(config, report)?;
    let client = http_client(report, tls.as_ref())?;
    deliver_queued_with(&client, queue, report).await
}

/// [`deliver_queued`] over a client built once by [`http_client`] (a simulated fleet sharing one).
pub async fn deliver_queued_with(
    client: &reqwest::Client,
    queue: &ReportQueue,
    report: &ReportConfig,
) -> Result<Pass> {
    let url = format!("{}/v1/reports", report.collector_url.trim_end_matches('/'));
    loop {
        let Some(queued) = queue.oldest()? else {
            return Ok(Pass::Emptied);
        };
        let delivery = post(client, &url, queued.body, report.timeout).await;
        queue.settle(queued.sequence, &delivery, now_unix())?;
        match delivery {
            Delivery::Delivered => tracing::info!(sequence = queued.sequence, "report delivered"),
            Delivery::Refused(why) => {
                tracing::warn!(sequence = queued.sequence, %why, "report refused by the collector; dropped")
            }
            Delivery::RetryLater(why) => {
                tracing::warn!(sequence = queued.sequence, %why, "report not delivered; kept for later");
                return Ok(Pass::Stopped);
            }
        }
    }
}

/// One report's exchange, bounded by `timeout` as a whole (whatever the server does).
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>, timeout: Duration) -> Delivery {
    let exchange = async {
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok((status, String::new()));
        }
        Ok::<_, reqwest::Error>((status, excerpt(response).await))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Delivery::RetryLater(format!("no answer from {url} within {} s", timeout.as_secs())),
        Ok(Err(e)) => Delivery::RetryLater(format!("sending to {url}: {}", error_chain(&e))),
        Ok(Ok((status, text))) => verdict(status, &text),
    }
}

/// What the collector's status means for the report.
fn verdict(status: reqwest::StatusCode, text: &str) -> Delivery {
    use reqwest::StatusCode as S;
    if status.is_success() {
        return Delivery::Delivered;
    }
    let why = format!("collector answered {status}: {text}");
    match status {
        S::BAD_REQUEST | S::CONFLICT | S::PAYLOAD_TOO_LARGE | S::UNPROCESSABLE_ENTITY => {
            Delivery::Refused(why)
        }
        _ => Delivery::RetryLater(why),
    }
}

/// The start of an answer's body (at most [`MAX_RESPONSE_BYTES`] read), as one printable line.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES - bytes.len();
                bytes.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            }
            Ok(None) | Err(_) => break,
        }
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut line = text.trim().to_owned();
    if line.len() > MAX_EXCERPT {
        let mut end = MAX_EXCERPT;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str("...");
    }
    line
}

/// The daemon's sender: a pass whenever `wake` says a report was queued, and after a failed pass again
/// after `retry_secs`, doubling (with jitter) up to `retry_max_secs`. Never returns; the daemon drops
/// it when it reboots.
pub async fn send_forever(
    config: &AgentConfig,
    report: &ReportConfig,
    wake: &tokio::sync::Notify,
) -> std::convert::Infallible {
    let queue = ReportQueue::open(&config.state_dir, report.limits());
    let mut failures: u32 = 0;
    loop {
        let wait = match deliver_queued(&queue, config, report).await {
            Ok(Pass::Emptied) => None,
            Ok(Pass::Stopped) => Some(()),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "report queue");
                Some(())
            }
        };
        match wait {
            None => {
                failures = 0;
                wake.notified().await;
            }
            Some(()) => {
                failures = failures.saturating_add(1);
                let wait = backoff(report, failures);
                tracing::info!(seconds = wait.as_secs(), "next report delivery attempt");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The wait after `failures` failed passes: `retry`, doubling, at most `retry_max`, each randomly
/// shortened by up to a fifth so a fleet does not retry in lockstep when its collector comes back.
fn backoff(report: &ReportConfig, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    let wait = report.retry.saturating_mul(factor).min(report.retry_max);
    let cut = rand::random::<f64>() * 0.2;
    wait.mul_f64(1.0 - cut)
}

/// One pass, bounded as a whole by a few request timeouts: for `run --once`, which exits after it.
pub async fn deliver_once(config: &AgentConfig, report: &ReportConfig) {
    let queue = ReportQueue::open(&config.state_dir, report.limits());
    let bound = report.timeout.saturating_mul(3);
    match tokio::time::timeout(bound, deliver_queued(&queue, config, report)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %error_chain(&e), "report queue"),
        Err(_) => tracing::warn!(
            seconds = bound.as_secs(),
            "report delivery cut short; the rest waits"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_collectors_answers_decide_drop_or_retry() {
        use reqwest::StatusCode as S;
        assert_eq!(verdict(S::CREATED, ""), Delivery::Delivered);
        for s in [
            S::BAD_REQUEST,
            S::CONFLICT,
            S::PAYLOAD_TOO_LARGE,
            S::UNPROCESSABLE_ENTITY,
        ] {
            assert!(matches!(verdict(s, "x"), Delivery::Refused(_)), "{s}");
        }
        for s in [
            S::INTERNAL_SERVER_ERROR,
            S::SERVICE_UNAVAILABLE,
            S::FORBIDDEN,
            S::UNAUTHORIZED,
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
            S::MOVED_PERMANENTLY,
        ] {
            assert!(matches!(verdict(s, "x"), Delivery::RetryLater(_)), "{s}");
        }
    }
}
