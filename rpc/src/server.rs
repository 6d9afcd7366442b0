//! The HTTP side: the router ([`app`]), its protective layers, `/health`, `/metrics`, and
//! [`serve`] with graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::api::NodeApi;
use crate::jsonrpc;
use crate::ws;

/// Limits of the RPC server.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// Largest request body in bytes; larger gets HTTP 413.
    pub max_body_bytes: usize,
    /// Requests served at once; more wait.
    pub max_concurrency: usize,
    /// A request taking longer gets HTTP 408.
    pub request_timeout: Duration,
    /// Requests per second allowed per client IP (0 disables); over it, HTTP 429 with
    /// Retry-After.
    pub rate_limit_per_ip: u32,
    /// Requests a client may send in a burst above the rate.
    pub rate_limit_burst: u32,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_body_bytes: 1024 * 1024,
            max_concurrency: 512,
            request_timeout: Duration::from_secs(10),
            rate_limit_per_ip: 2_000,
            rate_limit_burst: 4_000,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// RPC metrics, registered into the node's registry.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    requests: Family<MethodLabel, Counter>,
    latency: Histogram,
    rate_limited: Counter,
}

const KNOWN_METHODS: [&str; 11] = [
    "getAccountTransactions",
    "getStatus",
    "getBalance",
    "getAccount",
    "sendTransaction",
    "getTransaction",
    "getBlock",
    "getBlockHeight",
    "getPeers",
    "getMempool",
    "getSyncStatus",
];

impl RpcMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = RpcMetrics {
            requests: Family::default(),
            latency: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            rate_limited: Counter::default(),
        };
        registry.register(
            "grapevine_rpc_requests",
            "JSON-RPC calls by method",
            m.requests.clone(),
        );
        registry.register(
            "grapevine_rpc_http_latency_seconds",
            "Time to answer an HTTP JSON-RPC request (single or batch)",
            m.latency.clone(),
        );
        registry.register(
            "grapevine_rpc_rate_limited",
            "Requests refused with HTTP 429",
            m.rate_limited.clone(),
        );
        m
    }

    /// Counts one call of `method` (unknown names are counted as "unknown").
    pub fn count(&self, method: &str) {
        let method = if KNOWN_METHODS.contains(&method) {
            method
        } else {
            "unknown"
        };
        self.requests
            .get_or_create(&MethodLabel {
                method: method.to_string(),
            })
            .inc();
    }
}

pub(crate) struct AppState<A: ?Sized> {
    pub(crate) api: Arc<A>,
    pub(crate) metrics: RpcMetrics,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// The RPC router: `POST /` (JSON-RPC), `GET /ws` (WebSocket), `GET /health`, `GET
/// /metrics`, with body-size, concurrency, timeout and per-IP rate limits. Serve it with
/// [`serve`] (which supplies client addresses for rate limiting) or call it directly in
/// tests.
pub fn app<A: NodeApi>(api: Arc<A>, cfg: &RpcConfig, metrics: RpcMetrics) -> Router {
    let limiter = NonZeroU32::new(cfg.rate_limit_per_ip).map(|rate| {
        let burst =
            NonZeroU32::new(cfg.rate_limit_burst.max(cfg.rate_limit_per_ip)).unwrap_or(rate);
        RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
    });
    let state = Arc::new(AppState {
        api,
        metrics,
        limiter,
    });
    Router::new()
        .route(
            "/",
            post(rpc_handler::<A>).get(|| async { axum::response::Redirect::to("/explorer") }),
        )
        .merge(crate::explorer::routes())
        .route("/ws", get(ws::handler::<A>))
        .route("/health", get(health::<A>))
        .route("/metrics", get(metrics_handler::<A>))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::<A>,
        ))
        // Refuses by Content-Length before reading, and caps bodies without one.
        .layer(RequestBodyLimitLayer::new(cfg.max_body_bytes))
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            cfg.request_timeout,
        ))
        .layer(ConcurrencyLimitLayer::new(cfg.max_concurrency))
        .with_state(state)
}

async fn rate_limit<A: NodeApi>(
    State(state): State<Arc<AppState<A>>>,
    req: Request,
    next: Next,
) -> Response {
    if let (Some(limiter), Some(ConnectInfo(addr))) = (
        &state.limiter,
        req.extensions().get::<ConnectInfo<SocketAddr>>().copied(),
    ) && let Err(not_until) = limiter.check_key(&addr.ip())
    {
        state.metrics.rate_limited.inc();
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"error": "rate limit exceeded; retry later"})),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    next.run(req).await
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn rpc_handler<A: NodeApi>(State(state): State<Arc<AppState<A>>>, body: Bytes) -> Response {
    let start = Instant::now();
    let st = state.clone();
    // The node's methods may read the disk: keep them off the async workers.
    let out = tokio::task::spawn_blocking(move || {
        jsonrpc::handle_body_bytes(&*st.api, &body, &|m| st.metrics.count(m))
    })
    .await;
    state.metrics.latency.observe(start.elapsed().as_secs_f64());
    match out {
        Ok(Some(v)) => json_response(StatusCode::OK, v),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "RPC handler task failed");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"jsonrpc": "2.0", "error": {"code": jsonrpc::codes::INTERNAL_ERROR, "message": "internal error"}, "id": null})
                    .to_string()
                    .into_bytes(),
            )
        }
    }
}

async fn health<A: NodeApi>(State(state): State<Arc<AppState<A>>>) -> Response {
    match state.api.not_ready_reason() {
        None => json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "reason": reason})
                .to_string()
                .into_bytes(),
        ),
    }
}

async fn metrics_handler<A: NodeApi>(State(state): State<Arc<AppState<A>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.api.metrics_text(),
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and
/// lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
