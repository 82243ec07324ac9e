//! Where the client's files come from ([`Source`]): a repository over HTTP, with every body capped
//! (endless data), every request given a deadline and every read a stall timeout (slow retrieval); or an
//! offline bundle ([`BundleSource`]), whose members are bounded the same way. The client asks either
//! for the same relative names, so one verification path serves both.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::bundle::{BundleSource, METADATA_DIR, TARGETS_DIR};
use crate::{Error, Http, MinRate, Result};

/// Where metadata and targets come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A repository served over HTTP(S): base URLs ending in `/`.
    Http {
        fetcher: Fetcher,
        metadata_base: String,
        targets_base: String,
    },
    /// An offline bundle: `metadata/<name>` and `targets/<path>` members.
    Bundle(BundleSource),
}

impl Source {
    /// The metadata file `name` (`timestamp.json`, `3.root.json`, ...), at most `limit` bytes.
    pub(crate) async fn metadata(&self, name: &str, limit: u64) -> Result<Fetched> {
        match self {
            Source::Http {
                fetcher,
                metadata_base,
                ..
            } => {
                fetcher
                    .fetch_metadata(&format!("{metadata_base}{name}"), limit)
                    .await
            }
            Source::Bundle(b) => Ok(match b.read(&format!("{METADATA_DIR}/{name}"), limit)? {
                Some(bytes) => Fetched::Body(bytes),
                None => Fetched::NotFound,
            }),
        }
    }

    /// The metadata file `name`, which must exist.
    pub(crate) async fn required_metadata(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        match self.metadata(name, limit).await? {
            Fetched::Body(b) => Ok(b),
            Fetched::NotFound => Err(match self {
                Source::Http { metadata_base, .. } => Error::HttpStatus {
                    url: format!("{metadata_base}{name}"),
                    status: 404,
                },
                Source::Bundle(b) => Error::NotInBundle {
                    bundle: b.path().to_owned(),
                    member: format!("{METADATA_DIR}/{name}"),
                },
            }),
        }
    }

    /// Where the target file at `path` (relative, consistent-snapshot name) is read from.
    pub(crate) fn target_location(&self, path: &str) -> String {
        match self {
            Source::Http { targets_base, .. } => format!("{targets_base}{path}"),
            Source::Bundle(b) => b.location(&format!("{TARGETS_DIR}/{path}")),
        }
    }

    /// Streams the target file at `path` into `sink` (see [`Fetcher::stream`]); returns the byte count.
    pub(crate) async fn target<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        target: &str,
        limit: u64,
        min_bytes_per_sec: u64,
        sink: W,
        inspect: impl FnMut(&[u8]),
    ) -> Result<u64> {
        match self {
            Source::Http {
                fetcher,
                targets_base,
                ..
            } => {
                let url = format!("{targets_base}{path}");
                fetcher
                    .stream(&url, target, limit, min_bytes_per_sec, sink, inspect)
                    .await
            }
            Source::Bundle(b) => {
                let member = format!("{TARGETS_DIR}/{path}");
                b.stream(&member, target, limit, sink, inspect)
                    .await?
                    .ok_or_else(|| Error::NotInBundle {
                        bundle: b.path().to_owned(),
                        member,
                    })
            }
        }
    }
}

/// The HTTP side of the client.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    http: reqwest::Client,
    timeout: Duration,
    min_rate: MinRate,
}

/// What a metadata GET produced.
pub(crate) enum Fetched {
    Body(Vec<u8>),
    /// 403 or 404: the file does not exist (the end of root rotation, TUF 5.3.3).
    NotFound,
}

impl Fetcher {
    pub(crate) fn new(timeout: Duration, http: &Http) -> Result<Fetcher> {
        let http = match http {
            Http::Client(client) => client.clone(),
            Http::Default => builder(timeout).build().map_err(cannot_build)?,
            Http::PinnedCa(pem) => pinned(builder(timeout), pem)?.build().map_err(cannot_build)?,
        };
        Ok(Fetcher {
            http,
            timeout,
            min_rate: MinRate::default(),
        })
    }

    /// The same fetcher, cutting transfers slower than `min_rate`.
    pub(crate) fn with_min_rate(self, min_rate: MinRate) -> Fetcher {
        Fetcher { min_rate, ..self }
    }

    /// The next body chunk (`None` at the end), within `deadline`, cutting a transfer whose rate over
    /// the window falls below the minimum (checked at every chunk and at least every second between).
    async fn next_chunk(
        &self,
        url: &str,
        resp: &mut reqwest::Response,
        deadline: Instant,
        rate: &mut RateWindow,
        after: Duration,
    ) -> Result<Option<impl std::ops::Deref<Target = [u8]>>> {
        loop {
            let tick = (Instant::now() + RATE_TICK).min(deadline);
            match tokio::time::timeout_at(tick, resp.chunk()).await {
                Err(_) if Instant::now() >= deadline => {
                    return Err(Error::Timeout {
                        url: url.to_string(),
                        after,
                    })
                }
                Err(_) => rate.check(url, Instant::now(), 0)?,
                Ok(Err(e)) => return Err(transport(url, &e, self.timeout)),
                Ok(Ok(chunk)) => {
                    let n = chunk.as_ref().map_or(0, |c| c.len() as u64);
                    if chunk.is_some() {
                        rate.check(url, Instant::now(), n)?;
                    }
                    return Ok(chunk);
                }
            }
        }
    }

    async fn get(&self, url: &str, deadline: Instant) -> Result<reqwest::Response> {
        let send = self.http.get(url).send();
        let resp = match tokio::time::timeout_at(deadline, send).await {
            Err(_) => {
                return Err(Error::Timeout {
                    url: url.to_string(),
                    after: self.timeout,
                })
            }
            Ok(Err(e)) => return Err(transport(url, &e, self.timeout)),
            Ok(Ok(r)) => r,
        };
        Ok(resp)
    }

    /// GETs at most `limit` bytes, within the request timeout as a whole.
    pub(crate) async fn fetch_metadata(&self, url: &str, limit: u64) -> Result<Fetched> {
        let deadline = Instant::now() + self.timeout;
        let mut resp = self.get(url, deadline).await?;
        let status = resp.status().as_u16();
        if status == 403 || status == 404 {
            return Ok(Fetched::NotFound);
        }
        if !resp.status().is_success() {
            return Err(Error::HttpStatus {
                url: url.to_string(),
                status,
            });
        }
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(Error::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        // Sized once from the announced length (already bounded by `limit`) instead of doubling.
        let announced = resp.content_length().unwrap_or(0).min(limit);
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        let mut rate = RateWindow::new(self.min_rate, Instant::now());
        while let Some(chunk) = self
            .next_chunk(url, &mut resp, deadline, &mut rate, self.timeout)
            .await?
        {
            if (body.len() as u64).saturating_add(chunk.len() as u64) > limit {
                return Err(Error::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body(body))
    }

    /// Streams at most `limit` bytes into `sink`, calling `inspect` on every chunk before it is written.
    /// Each read may stall at most the request timeout; the whole transfer must keep at least
    /// `min_bytes_per_sec` on average (after the first timeout's grace), so a drip-feed cannot hold the
    /// device forever. Returns the byte count.
    pub(crate) async fn stream<W: AsyncWrite + Unpin>(
        &self,
        url: &str,
        target: &str,
        limit: u64,
        min_bytes_per_sec: u64,
        mut sink: W,
        mut inspect: impl FnMut(&[u8]),
    ) -> Result<u64> {
        let budget = self.timeout + Duration::from_secs(limit / min_bytes_per_sec.max(1));
        let deadline = Instant::now() + budget;
        let mut resp = self.get(url, deadline).await?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err(Error::HttpStatus {
                url: url.to_string(),
                status,
            });
        }
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(Error::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        let mut written: u64 = 0;
        let mut rate = RateWindow::new(self.min_rate, Instant::now());
        while let Some(chunk) = self
            .next_chunk(url, &mut resp, deadline, &mut rate, budget)
            .await?
        {
            written = written.saturating_add(chunk.len() as u64);
            if written > limit {
                return Err(Error::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
            inspect(&chunk);
            sink.write_all(&chunk).await.map_err(|source| Error::Sink {
                target: target.to_string(),
                source,
            })?;
        }
        sink.flush().await.map_err(|source| Error::Sink {
            target: target.to_string(),
            source,
        })?;
        Ok(written)
    }
}

/// How often a silent transfer's rate is checked between chunks.
const RATE_TICK: Duration = Duration::from_secs(1);

/// The bytes a transfer received, sampled at each chunk, to average its rate over a sliding window.
#[derive(Debug)]
struct RateWindow {
    min: MinRate,
    start: Instant,
    total: u64,
    /// `(when, total bytes by then)`, oldest first; the first is at or before the window's start.
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    fn new(min: MinRate, start: Instant) -> RateWindow {
        RateWindow {
            min,
            start,
            total: 0,
            samples: VecDeque::from([(start, 0)]),
        }
    }

    /// Adds `n` bytes received at `now`, then refuses the transfer when, past the first window, the
    /// bytes of the last window fall below the minimum rate times the window.
    fn check(&mut self, url: &str, now: Instant, n: u64) -> Result<()> {
        self.total = self.total.saturating_add(n);
        if n > 0 {
            self.samples.push_back((now, self.total));
        }
        let window = self.min.window;
        if self.min.bytes_per_sec == 0 || now.duration_since(self.start) < window {
            return Ok(());
        }
        let cutoff = now - window;
        while self.samples.get(1).is_some_and(|(t, _)| *t <= cutoff) {
            self.samples.pop_front();
        }
        let before = self.samples.front().map_or(0, |(_, total)| *total);
        let got = self.total.saturating_sub(before);
        let needed = self.min.bytes_per_sec.saturating_mul(window.as_secs().max(1));
        if got < needed {
            return Err(Error::SlowRetrieval {
                url: url.to_string(),
                got,
                window,
                min_bytes_per_sec: self.min.bytes_per_sec,
            });
        }
        Ok(())
    }
}

fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
}

/// Trusts only the certificates of `pem` (at least one), none of the built-in roots.
fn pinned(builder: reqwest::ClientBuilder, pem: &[u8]) -> Result<reqwest::ClientBuilder> {
    let refused = |reason: String| Error::Misuse(format!("the pinned CA: {reason}"));
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| refused(e.to_string()))?;
    if certs.is_empty() {
        return Err(refused("no PEM certificate in it".into()));
    }
    Ok(certs
        .into_iter()
        .fold(builder.tls_built_in_root_certs(false), |b, ca| {
            b.add_root_certificate(ca)
        }))
}

fn cannot_build(e: reqwest::Error) -> Error {
    Error::Misuse(format!("cannot build the HTTP client: {e}"))
}

fn transport(url: &str, e: &reqwest::Error, timeout: Duration) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            url: url.to_string(),
            after: timeout,
        };
    }
    // The chain carries the useful part ("connection refused", ...).
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    Error::Transport {
        url: url.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn min(bytes_per_sec: u64, secs: u64) -> MinRate {
        MinRate {
            bytes_per_sec,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn the_rate_is_judged_over_the_last_window_after_a_grace_of_one_window() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = RateWindow::new(min(100, 10), t0);
        // A fast start, then a drip: cut once the last 10 s carried less than 1000 bytes.
        w.check("u", at(1), 5000).unwrap();
        for s in 2..=10 {
            w.check("u", at(s), 10).unwrap();
        }
        w.check("u", at(11), 10).unwrap_err();
        let err = w.check("u", at(12), 10).unwrap_err().to_string();
        assert!(
            err.contains("minimum rate of 100 bytes/s") && err.contains("10s"),
            "{err}"
        );
        // A steady 200 B/s passes forever; silence is judged at the ticks (5 s of it halves the rate).
        let mut w = RateWindow::new(min(100, 10), t0);
        for s in 1..=60 {
            w.check("u", at(s), 200).unwrap();
        }
        w.check("u", at(65), 0).unwrap();
        w.check("u", at(75), 0).unwrap_err();
        // 0 turns it off.
        let mut w = RateWindow::new(min(0, 10), t0);
        w.check("u", at(100), 0).unwrap();
    }
}
