//! The web dashboard: `GET /` (a page, its script and its style sheet, all built into the binary) and
//! `GET /v1/history` (the fleet over time, [`History`]).
//!
//! The page reads `GET /v1/summary` and `GET /v1/history` from the same collector and draws, per release
//! and wave, the counts, a status (halted also when the collector halted it by a rule), the collector's
//! own halts and alerts, the top failure reasons, the time to converge and a chart of state
//! over time (inline SVG). It fetches nothing from anywhere else, and every text that came from a device
//! (a failure reason, say) is put in the page as text (`textContent`, never markup). The
//! Content-Security-Policy says the same to the browser: scripts, styles and requests from this origin
//! only, no inline script, no frames, no forms. Every route here only reads.
//!
//! The history reads every stored report, so one computation is shared by every viewer and reused while
//! fresh: for [`MIN_FRESH`], or five times as long as it took when that is longer (a history that takes
//! 4 s is reused for 20 s), which keeps the dashboard to a small share of the machine however many browsers
//! watch it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::history::{History, DEFAULT_BUCKETS};
use crate::{Error, Store};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// What the browser may do with the dashboard's pages: load its script, style sheet and JSON from this
/// origin and nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How long a computed history is reused at least.
pub const MIN_FRESH: Duration = Duration::from_secs(5);
/// A history is reused this many times as long as it took to compute (when that is over [`MIN_FRESH`]).
const FRESH_PER_COST: u32 = 5;

#[derive(Clone)]
struct DashboardState {
    store: Arc<dyn Store>,
    /// The last history computed; the lock also makes viewers wait for one computation, not start their own.
    cached: Arc<tokio::sync::Mutex<Option<CachedHistory>>>,
}

struct CachedHistory {
    buckets: u32,
    computed: Instant,
    fresh_for: Duration,
    history: Arc<History>,
}

/// The dashboard's routes over `store`, for [`crate::http::router`] to merge (any outer state).
pub fn router<S: Clone + Send + Sync + 'static>(store: Arc<dyn Store>) -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
        .route("/v1/history", get(get_history))
        .with_state(DashboardState {
            store,
            cached: Arc::default(),
        })
}

/// One of the built-in files, with the headers that keep a browser to it.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    guarded(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `response` with the Content-Security-Policy and the headers that stop sniffing, framing and caching.
fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The page is small and the data changes with every report: always the current one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /v1/history?buckets=N`.
#[derive(Debug, Deserialize)]
struct HistoryQuery {
    /// Buckets on the time axis (bounded by [`crate::history::MAX_BUCKETS`]).
    buckets: Option<u32>,
}

async fn get_history(State(state): State<DashboardState>, Query(query): Query<HistoryQuery>) -> Response {
    let buckets = query.buckets.unwrap_or(DEFAULT_BUCKETS);
    match fresh_history(&state, buckets).await {
        Ok(h) => guarded(Json(&*h).into_response()),
        Err(e) => {
            tracing::error!("history: {}", crate::http::chain(&e));
            let body = serde_json::json!({
                "error": "internal",
                "message": "internal error (see the collector's log)",
            });
            guarded((StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response())
        }
    }
}

/// The cached history when it is fresh and has `buckets` buckets, else a new one (cached in turn).
async fn fresh_history(state: &DashboardState, buckets: u32) -> Result<Arc<History>, Error> {
    let mut cached = state.cached.lock().await;
    if let Some(c) = cached.as_ref() {
        if c.buckets == buckets && c.computed.elapsed() < c.fresh_for {
            return Ok(c.history.clone());
        }
    }
    let store = state.store.clone();
    let started = Instant::now();
    let history = tokio::task::spawn_blocking(move || store.history(buckets))
        .await
        .map_err(|e| Error::Task { why: e.to_string() })??;
    let history = Arc::new(history);
    *cached = Some(CachedHistory {
        buckets,
        computed: Instant::now(),
        fresh_for: MIN_FRESH.max(started.elapsed() * FRESH_PER_COST),
        history: history.clone(),
    });
    Ok(history)
}
