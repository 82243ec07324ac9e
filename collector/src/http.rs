//! The HTTP face: `POST /v1/reports` and `GET /v1/summary`, with every refusal a status and a JSON
//! `{"error": code, "message": why}`, and a server loop that bounds slow clients.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt as _, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ota_report::PublicKey;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::{Error, Ingest, Result};

/// The largest body `POST /v1/reports` reads: the report contract's envelope bound.
pub const MAX_BODY_BYTES: usize = ota_report::MAX_ENVELOPE_BYTES;

/// How long the server waits for a client.
#[derive(Debug, Clone, Copy)]
pub struct ReadTimeouts {
    /// For a request's headers (also an idle kept-alive connection's next request).
    pub headers: Duration,
    /// For a request's whole body.
    pub body: Duration,
}

impl Default for ReadTimeouts {
    fn default() -> ReadTimeouts {
        ReadTimeouts {
            headers: Duration::from_secs(10),
            body: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
struct AppState {
    ingest: Ingest,
    body_timeout: Duration,
    /// Bounds the blocking work (verification, storage) in flight: a thousand devices at once would
    /// otherwise mean hundreds of blocking threads, each with its own read connection, queued on the one
    /// writer.
    blocking: Arc<Semaphore>,
    /// Bounds the reports verified and queued for a store's writer thread but not answered yet (see
    /// [`receive_queued`]).
    queued: Arc<Semaphore>,
}

/// Reports in flight towards a store's writer thread: a batch's worth, so the writer's batches can
/// grow while the memory they hold stays bounded (at most this many envelopes of 16 KiB).
const MAX_QUEUED_REPORTS: usize = 1024;

/// Blocking tasks in flight per core: enough waiting reports for the store's group commit to batch,
/// few enough that a thousand devices at once do not mean a thousand threads.
const BLOCKING_PER_CORE: usize = 16;

/// The collector's routes over `ingest`.
pub fn router(ingest: Ingest, timeouts: ReadTimeouts) -> Router {
    Router::new()
        .route("/v1/reports", post(post_report))
        .route("/v1/summary", get(get_summary))
        .merge(crate::dashboard::router(ingest.store().clone()))
        // Our handler reads the body itself under its own bound; this keeps any other extractor bounded.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState {
            ingest,
            body_timeout: timeouts.body,
            blocking: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from) * BLOCKING_PER_CORE,
            )),
            queued: Arc::new(Semaphore::new(MAX_QUEUED_REPORTS)),
        })
}

/// The device on the other end of a mutual-TLS connection (a request extension set by [`serve_tls`]).
#[derive(Debug, Clone)]
struct TlsPeer(PublicKey);

/// Serves `app` on `listener` until `shutdown` completes: HTTP/1.1, a header read timeout on every
/// connection (slow-loris), one task per connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: ReadTimeouts,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve_on(listener, app, timeouts, None, shutdown).await
}

/// [`serve`] over TLS with `tls` (see [`crate::tls::server_config`]): a connection whose handshake
/// fails (no client certificate, an unknown or revoked device) is closed before a byte of HTTP is read;
/// the handshake has the header timeout. Each request carries its connection's device, and a report
/// signed by another device is refused (403 `wrong_peer`).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: ReadTimeouts,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_on(listener, app, timeouts, Some(acceptor), shutdown).await
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: ReadTimeouts,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        match tls.clone() {
            None => {
                tokio::spawn(serve_connection(stream, app, timeouts));
            }
            Some(acceptor) => {
                tokio::spawn(serve_tls_connection(acceptor, stream, app, timeouts));
            }
        }
    }
}

/// One HTTP/1.1 connection, plain or TLS, with the header read timeout.
async fn serve_connection<S>(stream: S, app: Router, timeouts: ReadTimeouts)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.headers)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    if let Err(e) = connection.await {
        tracing::debug!("connection ended: {e}");
    }
}

/// The TLS handshake (the client's certificate checked against the enrolment), then HTTP with the
/// device's key on every request.
async fn serve_tls_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    app: Router,
    timeouts: ReadTimeouts,
) {
    let stream = match tokio::time::timeout(timeouts.headers, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::info!("TLS handshake failed: {e}"),
        Err(_) => return tracing::info!("TLS handshake not done within {:?}", timeouts.headers),
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(crate::tls::certificate_key);
    let Some(peer) = peer else {
        // The verifier accepted no certificate without a key it knows; this is only a safety net.
        return tracing::warn!("TLS connection without a device key: closed");
    };
    serve_connection(stream, app.layer(axum::Extension(TlsPeer(peer))), timeouts).await;
}

async fn post_report(
    State(state): State<AppState>,
    peer: Option<axum::Extension<TlsPeer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|axum::Extension(TlsPeer(key))| key);
    match receive_report(&state, peer, &headers, body).await {
        Ok(accepted) => (StatusCode::CREATED, Json(accepted)).into_response(),
        Err(e) => refusal(&e),
    }
}

async fn receive_report(
    state: &AppState,
    peer: Option<PublicKey>,
    headers: &HeaderMap,
    body: Body,
) -> Result<crate::Accepted> {
    let body = read_body(headers, body, state.body_timeout).await?;
    let ingest = state.ingest.clone();
    let received_at = chrono::Utc::now();
    if ingest.store().queues_reports() {
        return receive_queued(state, peer, body, received_at).await;
    }
    let permit = state
        .blocking
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| Error::Task { why: e.to_string() })?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        ingest.accept_from(&body, received_at, peer.as_ref())
    })
    .await
    .map_err(|e| Error::Task { why: e.to_string() })?
}

/// For a store with a writer thread of its own ([`crate::Store::queues_reports`]): the signature is
/// verified right here on the async worker when the device's key is in memory (a few tens of
/// microseconds, no I/O), on the blocking pool otherwise (the key is read from the store), then the
/// report is queued for the writer and this task waits for the answer without holding a thread. Both
/// cores verify and serve HTTP; no thread hand-off per report but the writer's answer.
async fn receive_queued(
    state: &AppState,
    peer: Option<PublicKey>,
    body: Bytes,
    received_at: chrono::DateTime<chrono::Utc>,
) -> Result<crate::Accepted> {
    let task_failed = |e: &dyn std::fmt::Display| Error::Task { why: e.to_string() };
    let _permit = state
        .queued
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| task_failed(&e))?;
    let ingest = state.ingest.clone();
    let stored = match ingest.verify_cached(&body, received_at, peer.as_ref()) {
        Some(stored) => stored?,
        None => {
            let ingest = ingest.clone();
            tokio::task::spawn_blocking(move || ingest.verify(&body, received_at, peer.as_ref()))
                .await
                .map_err(|e| task_failed(&e))??
        }
    };
    let accepted = crate::Accepted::of(&stored);
    let (answer, outcome) = tokio::sync::oneshot::channel();
    ingest.store().queue_report(
        stored,
        Box::new(move |done| {
            // Nobody to tell when the client went away: the report is stored all the same.
            let _ = answer.send(done);
        }),
    );
    outcome.await.map_err(|e| task_failed(&e))??;
    Ok(accepted)
}

/// The body, refused before reading when its declared length is over the bound, and cut off when more
/// arrives than allowed or it takes longer than `timeout`.
async fn read_body(headers: &HeaderMap, body: Body, timeout: Duration) -> Result<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > MAX_BODY_BYTES as u64) {
        return Err(Error::BodyTooLarge {
            got: len,
            limit: MAX_BODY_BYTES,
        });
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY_BYTES).collect())
        .await
        .map_err(|_| Error::BodyTimeout {
            seconds: timeout.as_secs(),
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::BodyTooLarge {
            got: MAX_BODY_BYTES as u64 + 1,
            limit: MAX_BODY_BYTES,
        }),
        Err(e) => Err(Error::BodyIncomplete { why: e.to_string() }),
    }
}

async fn get_summary(State(state): State<AppState>) -> Response {
    let store = state.ingest.store().clone();
    let summary = tokio::task::spawn_blocking(move || store.summary())
        .await
        .map_err(|e| Error::Task { why: e.to_string() })
        .and_then(|s| s);
    match summary {
        Ok(s) => Json(s).into_response(),
        Err(e) => refusal(&e),
    }
}

/// The JSON body of every refusal.
#[derive(Debug, Serialize)]
struct Refusal {
    /// A stable code a device or a script can match on.
    error: &'static str,
    /// Why, in words.
    message: String,
}

/// The status and code for an error; internal failures are logged and not detailed to the client.
fn refusal(e: &Error) -> Response {
    let (status, code) = classify(e);
    let message = if status.is_server_error() {
        tracing::error!("{}", chain(e));
        "internal error (see the collector's log)".to_string()
    } else {
        tracing::info!("refused: {}", chain(e));
        chain(e)
    };
    (status, Json(Refusal { error: code, message })).into_response()
}

fn classify(e: &Error) -> (StatusCode, &'static str) {
    use ota_report::Error as R;
    match e {
        Error::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        Error::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "timeout"),
        Error::BodyIncomplete { .. } => (StatusCode::BAD_REQUEST, "incomplete"),
        Error::Report { source } => match source {
            R::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            R::Invalid {
                field: "signatures", ..
            } => (StatusCode::UNAUTHORIZED, "unsigned"),
            R::BadSignature { .. } => (StatusCode::UNAUTHORIZED, "bad_signature"),
            R::WrongDevice { .. } => (StatusCode::FORBIDDEN, "wrong_device"),
            _ => (StatusCode::BAD_REQUEST, "malformed"),
        },
        Error::UnknownDevice { .. } => (StatusCode::FORBIDDEN, "unknown_device"),
        Error::Revoked { .. } => (StatusCode::FORBIDDEN, "revoked"),
        Error::Replay { .. } => (StatusCode::CONFLICT, "replay"),
        Error::WrongPeer { .. } => (StatusCode::FORBIDDEN, "wrong_peer"),
        Error::OutOfRange { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "out_of_range"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// The error and its sources on one line, as anyhow's `{:#}` prints them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
