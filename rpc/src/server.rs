//! The HTTP side: the router ([`app`]), its protective layers, `/health`, `/metrics`, and
//! [`serve`] with graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::api::NodeApi;
use crate::guard::{self, ClientLimiter, RateRefusal, WsSlots};
use crate::jsonrpc;
use crate::ws;

/// Limits of the RPC server (docs/RPC.md, "Limits", lists each with its config key).
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// Largest request body in bytes; larger gets HTTP 413.
    pub max_body_bytes: usize,
    /// Requests served at once, HTTP requests and WebSocket calls together; more wait.
    /// A call into the node that outlives its request's timeout keeps its place until
    /// it ends.
    pub max_concurrency: usize,
    /// A request taking longer gets HTTP 408 (a WebSocket call, error -32032).
    pub request_timeout: Duration,
    /// JSON-RPC calls per second allowed per client (an IPv4 address or an IPv6 /64;
    /// 0 disables). A batch costs one per call, a WebSocket frame one per call, any
    /// other request one. Over it, HTTP 429 with Retry-After, or error -32005 on a
    /// WebSocket.
    pub rate_limit_per_ip: u32,
    /// Calls a client may make in a burst above the rate (at least the rate); also the
    /// largest batch that can ever pass the rate limit.
    pub rate_limit_burst: u32,
    /// Most calls in one batch; a larger batch is refused whole with -32600.
    pub max_batch_calls: usize,
    /// Most bytes of one response. Past it a call gets -32031 instead of its result, and
    /// the rest of its batch is not run; the answer stops growing there rather than
    /// being built in full first.
    pub max_response_bytes: usize,
    /// Most WebSocket connections open at once; more get HTTP 503 before the upgrade.
    pub max_ws_connections: usize,
    /// Most WebSocket connections open at once from one client; more get HTTP 429
    /// before the upgrade.
    pub max_ws_per_ip: usize,
    /// Most subscriptions one WebSocket connection may hold (heads and transactions
    /// together); more get -32022.
    pub max_subscriptions_per_connection: usize,
    /// Web origins (`https://app.example`) whose pages may call this node from a
    /// browser: they get CORS headers on HTTP and may open `/ws`. `*` means any origin.
    /// Empty (the default): no CORS headers, and `/ws` takes only handshakes without an
    /// `Origin` or from a page this node served itself.
    pub cors_allowed_origins: Vec<String>,
    /// Host names (the `Host` header without its port) that JSON-RPC calls and `/ws`
    /// handshakes may be addressed to; `*` means any. A page whose own domain resolves to
    /// 127.0.0.1 (DNS rebinding) is same-origin with a node there, so only the name it
    /// used tells it apart. Default: `localhost`, `127.0.0.1` and `::1` (as geth's
    /// `--http.vhosts`); a node serving other machines lists the names they use.
    pub allowed_hosts: Vec<String>,
}

/// The default [`RpcConfig::allowed_hosts`]: the loopback names.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_body_bytes: 1024 * 1024,
            max_concurrency: 512,
            request_timeout: Duration::from_secs(10),
            rate_limit_per_ip: 2_000,
            rate_limit_burst: 4_000,
            max_batch_calls: jsonrpc::MAX_BATCH,
            max_response_bytes: jsonrpc::MAX_RESPONSE_BYTES,
            max_ws_connections: 256,
            max_ws_per_ip: 8,
            max_subscriptions_per_connection: 16,
            cors_allowed_origins: Vec::new(),
            allowed_hosts: DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// RPC metrics, registered into the node's registry.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    requests: Family<MethodLabel, Counter>,
    latency: Histogram,
    rate_limited: Counter,
    refused: Family<LimitLabel, Counter>,
}

/// A limit other than the rate limit, as the `limit` label of
/// `grapevine_rpc_refused` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    ContentType,
    Origin,
    Host,
    WsConnections,
    WsPerIp,
    BatchCalls,
    ResponseBytes,
    Subscriptions,
    WsTimeout,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::ContentType => "content_type",
            Limit::Origin => "origin",
            Limit::Host => "host",
            Limit::WsConnections => "ws_connections",
            Limit::WsPerIp => "ws_per_ip",
            Limit::BatchCalls => "batch_calls",
            Limit::ResponseBytes => "response_bytes",
            Limit::Subscriptions => "subscriptions",
            Limit::WsTimeout => "ws_timeout",
        }
    }
}

const KNOWN_METHODS: [&str; 12] = [
    "getAccountTransactions",
    "getStatus",
    "getGenesis",
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
            refused: Family::default(),
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
            "HTTP requests and WebSocket frames refused by the per-client rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "grapevine_rpc_refused",
            "Requests, calls and connections refused by a limit other than the rate limit",
            m.refused.clone(),
        );
        m
    }

    pub(crate) fn refuse(&self, limit: Limit) {
        self.refused
            .get_or_create(&LimitLabel {
                limit: limit.label(),
            })
            .inc();
    }

    /// Counts what the dispatcher reports.
    pub(crate) fn observe(&self, o: jsonrpc::Observed<'_>) {
        match o {
            jsonrpc::Observed::Call(method) => self.count(method),
            jsonrpc::Observed::BatchTooLarge => self.refuse(Limit::BatchCalls),
            jsonrpc::Observed::ResponseTooLarge => self.refuse(Limit::ResponseBytes),
        }
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
    pub(crate) limits: jsonrpc::Limits,
    limiter: Option<ClientLimiter>,
    /// `max_concurrency` permits for calls into the node, HTTP and WebSocket alike (see
    /// [`AppState::blocking`]).
    work: Arc<Semaphore>,
    pub(crate) request_timeout: Duration,
    pub(crate) ws_slots: Arc<WsSlots>,
    pub(crate) max_subscriptions: usize,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) allowed_hosts: Vec<String>,
}

impl<A: ?Sized> AppState<A> {
    /// Runs `f` (calls into the node, which may read the disk) off the async workers,
    /// once fewer than `max_concurrency` such calls run; `None` if it panicked. The
    /// permit moves into the blocking task: a request that times out stops waiting, but
    /// its call runs on and keeps its place, so timeouts cannot pile up work past the
    /// cap.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let permit = self.work.clone().acquire_owned().await.ok()?;
        let out = tokio::task::spawn_blocking(move || {
            let _held = permit;
            f()
        })
        .await;
        out.inspect_err(|e| tracing::error!(error = %e, "an RPC call into the node failed"))
            .ok()
    }

    /// Charges `calls` calls to the client at `ip`, counting a refusal.
    pub(crate) fn charge(&self, ip: Option<IpAddr>, calls: u32) -> Result<(), RateRefusal> {
        let (Some(limiter), Some(ip)) = (&self.limiter, ip) else {
            return Ok(());
        };
        limiter.charge(ip, calls).inspect_err(|_| {
            self.metrics.rate_limited.inc();
        })
    }
}

/// The client's address, when served by [`serve`] (tests driving the router directly
/// have none, and are not rate limited).
pub(crate) fn client_ip(conn: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<IpAddr> {
    conn.map(|Extension(ConnectInfo(addr))| addr.ip())
}

/// The RPC router: `POST /` (JSON-RPC), `GET /ws` (WebSocket), `GET /health`, `GET
/// /metrics`, the explorer, with the limits of [`RpcConfig`]. Serve it with [`serve`]
/// (which supplies client addresses for the per-client limits) or call it directly in
/// tests. It starts no task: the rate limiter prunes itself as requests come.
pub fn app<A: NodeApi>(api: Arc<A>, cfg: &RpcConfig, metrics: RpcMetrics) -> Router {
    let state = Arc::new(AppState {
        api,
        metrics,
        limits: jsonrpc::Limits {
            max_batch_calls: cfg.max_batch_calls,
            max_response_bytes: cfg.max_response_bytes,
        },
        limiter: ClientLimiter::new(cfg.rate_limit_per_ip, cfg.rate_limit_burst),
        work: Arc::new(Semaphore::new(cfg.max_concurrency)),
        request_timeout: cfg.request_timeout,
        ws_slots: WsSlots::new(cfg.max_ws_connections, cfg.max_ws_per_ip),
        max_subscriptions: cfg.max_subscriptions_per_connection,
        allowed_origins: cfg.cors_allowed_origins.clone(),
        allowed_hosts: cfg.allowed_hosts.clone(),
    });
    let router = Router::new()
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
            admit::<A>,
        ))
        // Refuses by Content-Length before reading, and caps bodies without one.
        .layer(RequestBodyLimitLayer::new(cfg.max_body_bytes))
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            cfg.request_timeout,
        ))
        // One semaphore for all routes (a plain layer would give each route its own).
        .layer(GlobalConcurrencyLimitLayer::new(cfg.max_concurrency))
        .with_state(state);
    match cors(&cfg.cors_allowed_origins) {
        // Outermost, so that it answers preflights and its headers reach every answer,
        // refusals included.
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// CORS for the configured origins; `None` (no CORS headers at all) when there are
/// none, so browsers keep every other origin's pages from reading answers or sending
/// JSON.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| {
            let v = HeaderValue::from_str(o.trim_end_matches('/')).ok();
            if v.is_none() {
                tracing::warn!(origin = %o, "ignoring an RPC CORS origin that is not a header value");
            }
            v
        }))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// Admission of every request: one rate-limit token each, except JSON `POST /`, which
/// [`rpc_handler`] charges per call once it has the body. A `POST /` of another
/// content type is refused here, before its body is read.
async fn admit<A: NodeApi>(
    State(state): State<Arc<AppState<A>>>,
    conn: Option<Extension<ConnectInfo<SocketAddr>>>,
    req: Request,
    next: Next,
) -> Response {
    let rpc_post = req.method() == Method::POST && req.uri().path() == "/";
    let acts = rpc_post || req.uri().path() == "/ws";
    let host_ok = !acts || guard::host_allowed(req.headers(), &state.allowed_hosts);
    if host_ok && rpc_post && guard::is_json(req.headers()) {
        return next.run(req).await;
    }
    if let Err(r) = state.charge(client_ip(conn), 1) {
        return too_many(r, 1);
    }
    let refusal = if !host_ok {
        Some((
            Limit::Host,
            StatusCode::FORBIDDEN,
            "this Host is not one the node answers to; see [rpc] allowed_hosts",
        ))
    } else if rpc_post {
        Some((
            Limit::ContentType,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST / takes JSON-RPC with Content-Type: application/json",
        ))
    } else {
        None
    };
    if let Some((limit, status, error)) = refusal {
        state.metrics.refuse(limit);
        return json_response(status, json!({ "error": error }).to_string().into_bytes());
    }
    next.run(req).await
}

/// HTTP 429, with Retry-After when waiting helps.
fn too_many(r: RateRefusal, calls: u32) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({"error": r.message(calls)})),
    )
        .into_response();
    if let RateRefusal::Wait(wait) = r {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
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

/// `POST /`, its content type already checked by [`admit`].
async fn rpc_handler<A: NodeApi>(
    State(state): State<Arc<AppState<A>>>,
    conn: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Response {
    let calls = jsonrpc::call_cost(&body, state.limits.max_batch_calls);
    if let Err(r) = state.charge(client_ip(conn), calls) {
        return too_many(r, calls);
    }
    let start = Instant::now();
    let st = state.clone();
    let out = state
        .blocking(move || {
            jsonrpc::handle_body_bytes(&*st.api, &body, &st.limits, &|o| st.metrics.observe(o))
        })
        .await;
    state.metrics.latency.observe(start.elapsed().as_secs_f64());
    match out {
        Some(Some(v)) => json_response(StatusCode::OK, v),
        Some(None) => StatusCode::NO_CONTENT.into_response(),
        None => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"jsonrpc": "2.0", "error": {"code": jsonrpc::codes::INTERNAL_ERROR, "message": "internal error"}, "id": null})
                .to_string()
                .into_bytes(),
        ),
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
