//! A loopback HTTP/1.1 mirror of the repository directory that misbehaves on purpose.
//!
//! [`FaultyMirror`] serves a directory (the repository repo-tool built: `metadata/`, `targets/`) on
//! `127.0.0.1:<ephemeral>`, as a real HTTP/1.1 server (hyper), and for every request draws at most one
//! fault from [`NetworkFaults`]: drop the connection, stall, truncate the body, corrupt it, or (metadata
//! only) serve a stale or tampered copy. It counts requests, bytes and faults, per device, so the report
//! can say how much each release cost and how hard the mirror was hit.
//!
//! Each device talks to its own URL prefix, `/d/<device>/...`, which maps onto the same directory. The
//! prefix lets the mirror draw faults as a pure function of (seed, device, the device's request number),
//! so a drill replays the same faults for the same sequence of requests however the tasks interleave.
//! Requests without the prefix are served too (and drawn against a shared counter).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::rng::unit_interval;
use crate::scenario::NetworkFaults;
use crate::{Error, Result};

/// What the mirror did to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Served as is.
    None,
    /// Connection closed without an answer.
    Drop,
    /// Answer delayed.
    Stall,
    /// First half of the body only.
    Truncate,
    /// Some body bytes flipped.
    Corrupt,
    /// The previously published metadata served instead of the current one.
    StaleMetadata,
    /// Metadata with a byte of its signed part changed.
    TamperedMetadata,
}

impl Fault {
    /// Every fault, in report order.
    pub const ALL: [Fault; 7] = [
        Fault::None,
        Fault::Drop,
        Fault::Stall,
        Fault::Truncate,
        Fault::Corrupt,
        Fault::StaleMetadata,
        Fault::TamperedMetadata,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Drop => "drop",
            Fault::Stall => "stall",
            Fault::Truncate => "truncate",
            Fault::Corrupt => "corrupt",
            Fault::StaleMetadata => "stale_metadata",
            Fault::TamperedMetadata => "tampered_metadata",
        }
    }

    fn index(self) -> usize {
        match self {
            Fault::None => 0,
            Fault::Drop => 1,
            Fault::Stall => 2,
            Fault::Truncate => 3,
            Fault::Corrupt => 4,
            Fault::StaleMetadata => 5,
            Fault::TamperedMetadata => 6,
        }
    }
}

/// Counters of everything the mirror served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MirrorStats {
    /// HTTP requests received.
    pub requests: u64,
    /// Body bytes sent.
    pub bytes: u64,
    /// Requests answered 404 (a missing file: normal for a root version that does not exist yet).
    pub not_found: u64,
    /// Requests by what was done to them (fault name -> count).
    pub faults: std::collections::BTreeMap<String, u64>,
}

#[derive(Default)]
struct DeviceCounters {
    requests: u64,
    bytes: u64,
}

struct Shared {
    root: PathBuf,
    faults: NetworkFaults,
    seed: u64,
    requests: AtomicU64,
    bytes: AtomicU64,
    not_found: AtomicU64,
    by_fault: [AtomicU64; 7],
    devices: Mutex<HashMap<String, DeviceCounters>>,
    /// The timestamp.json published before the current one, for the stale-mirror fault.
    stale_timestamp: Mutex<Option<Bytes>>,
    /// Files served, by path, with the modification time and length they were read at: a fleet polling
    /// in waves asks for the same few files thousands of times a round, and a stat is cheaper than a
    /// read. A republished file (replaced atomically: a new modification time) is read again.
    cache: Mutex<HashMap<PathBuf, CachedFile>>,
}

struct CachedFile {
    modified: std::time::SystemTime,
    len: u64,
    body: Bytes,
}

/// A running loopback mirror. Stops when dropped (or with [`FaultyMirror::stop`]).
pub struct FaultyMirror {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultyMirror {
    /// Binds `127.0.0.1:0` and serves `root` with these faults, drawn from `seed`.
    pub async fn start(root: &Path, faults: NetworkFaults, seed: u64) -> Result<FaultyMirror> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| Error::Mirror {
                what: "bind 127.0.0.1:0".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Mirror {
            what: "read the bound address".into(),
            source,
        })?;
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            faults,
            seed,
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            not_found: AtomicU64::new(0),
            by_fault: Default::default(),
            devices: Mutex::new(HashMap::new()),
            stale_timestamp: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(FaultyMirror { addr, shared, accept })
    }

    /// `http://127.0.0.1:<port>`: the repository root, without a device prefix.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/d/<device>`: the repository root as one device sees it.
    pub fn device_base_url(&self, device: &str) -> String {
        format!("http://{}/d/{device}", self.addr)
    }

    /// Remembers the current `metadata/timestamp.json` as the stale copy a stale mirror serves; call it
    /// just before publishing a new version.
    pub fn remember_stale_timestamp(&self) -> Result<()> {
        let path = self.shared.root.join("metadata").join("timestamp.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => Some(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(Error::Io { path, source }),
        };
        if let Ok(mut slot) = self.shared.stale_timestamp.lock() {
            *slot = bytes;
        }
        Ok(())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MirrorStats {
        let s = &self.shared;
        let mut faults = std::collections::BTreeMap::new();
        for f in Fault::ALL {
            let n = s.by_fault.get(f.index()).map_or(0, |c| c.load(Ordering::Relaxed));
            faults.insert(f.name().to_owned(), n);
        }
        MirrorStats {
            requests: s.requests.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            not_found: s.not_found.load(Ordering::Relaxed),
            faults,
        }
    }

    /// Body bytes served so far to one device (through its `/d/<device>` prefix).
    pub fn device_bytes(&self, device: &str) -> u64 {
        self.shared
            .devices
            .lock()
            .ok()
            .and_then(|m| m.get(device).map(|c| c.bytes))
            .unwrap_or(0)
    }

    /// Stops accepting and drops every open connection.
    pub fn stop(self) {
        // Drop does the work.
    }
}

impl Drop for FaultyMirror {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // The JoinSet owns every connection task, so aborting this loop (dropping the set) ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { handle(&shared, req).await }
                    });
                    // A dropped connection (our fault or the client's) ends here; nothing to report.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The error a service returns to make hyper close the connection without answering.
#[derive(Debug)]
struct DroppedOnPurpose;

impl std::fmt::Display for DroppedOnPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the drill")
    }
}

impl std::error::Error for DroppedOnPurpose {}

async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, DroppedOnPurpose> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let (device, rel) = split_device(req.uri().path());
    let n = {
        let mut devices = shared.devices.lock().map_err(|_| DroppedOnPurpose)?;
        let counters = devices.entry(device.unwrap_or("").to_owned()).or_default();
        counters.requests += 1;
        counters.requests
    };
    let is_metadata = rel.starts_with("metadata/");
    let fault = draw_fault(&shared.faults, shared.seed, device.unwrap_or(""), n, is_metadata);
    if let Some(c) = shared.by_fault.get(fault.index()) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"));
    }
    match fault {
        Fault::Drop => return Err(DroppedOnPurpose),
        Fault::Stall => tokio::time::sleep(Duration::from_millis(shared.faults.stall_ms)).await,
        _ => {}
    }
    let Some(path) = resolve(&shared.root, &rel) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "bad path\n"));
    };
    let body = match fault {
        Fault::StaleMetadata => match stale_copy(shared, &rel, &path).await {
            Some(b) => Some(b),
            None => read_cached(shared, &path).await,
        },
        _ => read_cached(shared, &path).await,
    };
    let Some(mut body) = body else {
        shared.not_found.fetch_add(1, Ordering::Relaxed);
        return Ok(plain(StatusCode::NOT_FOUND, "not found\n"));
    };
    match fault {
        Fault::Truncate => body = body.slice(..body.len() / 2),
        Fault::Corrupt => body = corrupt(&body, shared.seed ^ n),
        Fault::TamperedMetadata => body = tamper(&body),
        _ => {}
    }
    let len = u64::try_from(body.len()).unwrap_or(u64::MAX);
    shared.bytes.fetch_add(len, Ordering::Relaxed);
    if let Ok(mut devices) = shared.devices.lock() {
        devices.entry(device.unwrap_or("").to_owned()).or_default().bytes += len;
    }
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// `/d/<device>/<rest>` -> (Some(device), rest); anything else -> (None, path without the leading '/').
fn split_device(path: &str) -> (Option<&str>, String) {
    let trimmed = path.trim_start_matches('/');
    if let Some(rest) = trimmed.strip_prefix("d/") {
        if let Some((device, rel)) = rest.split_once('/') {
            return (Some(device), percent_decode(rel));
        }
    }
    (None, percent_decode(trimmed))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file under `root` for a relative request path; None when it tries to leave `root`.
fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

/// The file at `path`, from the cache when it is unchanged since it was read.
async fn read_cached(shared: &Shared, path: &Path) -> Option<Bytes> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?;
    if let Ok(cache) = shared.cache.lock() {
        if let Some(c) = cache
            .get(path)
            .filter(|c| c.modified == modified && c.len == meta.len())
        {
            return Some(c.body.clone());
        }
    }
    let body = read(path).await?;
    let len = u64::try_from(body.len()).unwrap_or(u64::MAX);
    if let Ok(mut cache) = shared.cache.lock() {
        cache.insert(
            path.to_owned(),
            CachedFile {
                modified,
                len,
                body: body.clone(),
            },
        );
    }
    Some(body)
}

async fn read(path: &Path) -> Option<Bytes> {
    tokio::fs::read(path).await.ok().map(Bytes::from)
}

/// The stale version of a metadata file: the previously published timestamp.json, or for a versioned
/// `N.<role>.json` the file `N-1.<role>.json`. None when there is nothing older to serve.
async fn stale_copy(shared: &Shared, rel: &str, path: &Path) -> Option<Bytes> {
    let name = Path::new(rel).file_name()?.to_str()?;
    if name == "timestamp.json" {
        return shared.stale_timestamp.lock().ok()?.clone();
    }
    let (version, role) = name.split_once('.')?;
    let version: u64 = version.parse().ok()?;
    let older = path.with_file_name(format!("{}.{role}", version.checked_sub(1)?));
    read(&older).await
}

/// Flips a few bytes spread over the body.
fn corrupt(body: &Bytes, seed: u64) -> Bytes {
    let mut v = body.to_vec();
    let len = v.len();
    if len == 0 {
        return Bytes::from(v);
    }
    for k in 0..4u64 {
        let at = crate::rng::below(seed.wrapping_add(k), u64::try_from(len).unwrap_or(u64::MAX));
        if let Some(b) = usize::try_from(at).ok().and_then(|i| v.get_mut(i)) {
            *b ^= 0x5a;
        }
    }
    Bytes::from(v)
}

/// Changes one digit of the `expires` date in the signed part (a mirror extending metadata's life),
/// keeping the JSON valid, so only the signature check can catch it. Falls back to corrupting.
fn tamper(body: &Bytes) -> Bytes {
    let mut v = body.to_vec();
    let needle = b"\"expires\"";
    if let Some(at) = v.windows(needle.len()).position(|w| w == needle) {
        if let Some(digit) = v.iter_mut().skip(at + needle.len()).find(|b| b.is_ascii_digit()) {
            *digit = if *digit == b'9' { b'8' } else { *digit + 1 };
            return Bytes::from(v);
        }
    }
    corrupt(body, 0x7a3)
}

/// At most one fault per request, as a pure function of (seed, device, request number). Stale and
/// tampered copies only make sense for metadata; drawn for a target, they serve it untouched.
fn draw_fault(f: &NetworkFaults, seed: u64, device: &str, n: u64, is_metadata: bool) -> Fault {
    let u = unit_interval(seed, &[crate::rng::hash_str(device), n, 0x6d69_7272]);
    let mut edge = 0.0;
    for (fault, p) in [
        (Fault::Drop, f.drop),
        (Fault::Stall, f.stall),
        (Fault::Truncate, f.truncate),
        (Fault::Corrupt, f.corrupt),
        (Fault::StaleMetadata, f.stale_metadata),
        (Fault::TamperedMetadata, f.tampered_metadata),
    ] {
        edge += p;
        if u < edge {
            let metadata_only = matches!(fault, Fault::StaleMetadata | Fault::TamperedMetadata);
            return if metadata_only && !is_metadata {
                Fault::None
            } else {
                fault
            };
        }
    }
    Fault::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_prefix_is_split_and_decoded() {
        assert_eq!(
            split_device("/d/dev-7/targets/a%2Fb.img"),
            (Some("dev-7"), "targets/a/b.img".to_owned())
        );
        assert_eq!(
            split_device("/metadata/1.root.json"),
            (None, "metadata/1.root.json".to_owned())
        );
    }

    #[test]
    fn paths_cannot_leave_the_root() {
        let root = Path::new("/srv/repo");
        assert!(resolve(root, "../etc/passwd").is_none());
        assert!(resolve(root, "metadata/../../x").is_none());
        assert_eq!(
            resolve(root, "metadata/x.json"),
            Some(root.join("metadata/x.json"))
        );
    }

    #[test]
    fn tamper_keeps_json_valid_but_changes_signed_bytes() {
        let body = Bytes::from_static(br#"{"signed":{"expires":"2030-01-01T00:00:00Z"},"signatures":[]}"#);
        let t = tamper(&body);
        assert_ne!(t, body);
        let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
        assert_eq!(v["signed"]["expires"], "3030-01-01T00:00:00Z");
    }

    #[test]
    fn fault_draws_are_reproducible_and_near_their_rates() {
        let f = NetworkFaults {
            drop: 0.1,
            truncate: 0.1,
            ..NetworkFaults::none()
        };
        let draws: Vec<Fault> = (0..10_000).map(|n| draw_fault(&f, 1, "dev-1", n, true)).collect();
        let again: Vec<Fault> = (0..10_000).map(|n| draw_fault(&f, 1, "dev-1", n, true)).collect();
        assert_eq!(draws, again);
        let drops = draws.iter().filter(|d| **d == Fault::Drop).count();
        assert!((800..1200).contains(&drops), "{drops} drops in 10000 at 10 %");
        assert!(!draws.contains(&Fault::Corrupt));
    }
}
