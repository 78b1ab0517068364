//! HTTP routes of the control API and the mapping of errors to status codes (in one place: `ApiError`).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_deploy::{Control, DeployRequest, Platform, PlatformError, RollbackRequest};
use berth_supervisor::logs::LogQuery;
use bytes::Bytes;
use tokio::sync::{Notify, broadcast, mpsc};

use crate::body::ChannelBody;
use crate::webhook::Webhook;
use crate::wire::{
    CachePurgeRequest, CachePurgeView, DeployBody, DeployEventView, ErrorBody, LogsQuery, ReleaseView, RollbackBody,
    ScaleRequest, ServiceView,
};

#[derive(Clone)]
pub struct ApiState {
    pub platform: Arc<Platform>,
    /// Bearer token every `/v1` call must carry; the daemon keeps it in a 0600 file in its state dir.
    pub token: Arc<str>,
    /// Notified by `POST /v1/shutdown`; the daemon then stops every service and exits.
    pub shutdown: Arc<Notify>,
    /// Where deploy events are also sent (`[deploy] webhook` in berth.toml).
    pub webhook: Option<Webhook>,
}

/// Serves the control API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/status", get(status))
        .route("/services/{name}", get(service).delete(delete))
        .route("/deploy", post(deploy))
        .route("/services/{name}/rollback", post(rollback))
        .route("/services/{name}/promote", post(promote))
        .route("/services/{name}/abort", post(abort))
        .route("/services/{name}/scale", post(scale))
        .route("/services/{name}/restart", post(restart))
        .route("/services/{name}/stop", post(stop))
        .route("/services/{name}/start", post(start))
        .route("/services/{name}/logs", get(logs))
        .route("/services/{name}/cache/purge", post(purge_cache))
        .route("/services/{name}/releases", get(releases))
        .route("/shutdown", post(shutdown))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .with_state(state)
}

enum ApiError {
    Unauthorized,
    UnknownService(String),
    /// A request the API understood but will not act on: what is wrong, and what to send instead.
    Invalid {
        error: String,
        hint: String,
    },
    /// The service is not in a state to do this now (a rollout under way, none to steer).
    Conflict {
        error: String,
        hint: String,
    },
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, hint) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".to_owned(),
                Some("use the token in the daemon's state dir (file `token`)".to_owned()),
            ),
            ApiError::UnknownService(name) => (
                StatusCode::NOT_FOUND,
                format!("no service named `{name}`"),
                Some("`berth ps` lists the services".to_owned()),
            ),
            ApiError::Invalid { error, hint } => (StatusCode::UNPROCESSABLE_ENTITY, error, Some(hint)),
            ApiError::Conflict { error, hint } => (StatusCode::CONFLICT, error, Some(hint)),
            ApiError::Internal(error) => (StatusCode::INTERNAL_SERVER_ERROR, error, None),
        };
        (status, Json(ErrorBody { error, hint })).into_response()
    }
}

impl From<PlatformError> for ApiError {
    fn from(error: PlatformError) -> Self {
        match error {
            PlatformError::UnknownService(name) => ApiError::UnknownService(name),
            PlatformError::Supervisor(berth_supervisor::SupervisorError::UnknownService(name)) => {
                ApiError::UnknownService(name)
            }
            PlatformError::RolloutInProgress { .. } | PlatformError::NoRollout(_) | PlatformError::Invalid(_) => {
                let hint = error.hint().unwrap_or_default();
                ApiError::Conflict { error: error.to_string(), hint }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Prometheus text exposition; open like `/healthz`, so a scraper needs no token.
async fn metrics(State(state): State<ApiState>) -> Response {
    let mut out = String::new();
    state.platform.gateway().render_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

async fn status(State(state): State<ApiState>) -> Json<Vec<ServiceView>> {
    let statuses = state.platform.status().await;
    Json(statuses.iter().map(ServiceView::from_status).collect())
}

async fn service(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<ServiceView>, ApiError> {
    let status = state.platform.service_status(&name).await?;
    Ok(Json(ServiceView::from_status(&status)))
}

/// The service's releases, newest first.
async fn releases(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Vec<ReleaseView>>, ApiError> {
    let releases = state.platform.releases(&name)?;
    Ok(Json(releases.iter().map(ReleaseView::from_release).collect()))
}

async fn scale(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(req): Json<ScaleRequest>,
) -> Result<StatusCode, ApiError> {
    state.platform.scale(&name, req.replicas)?;
    Ok(StatusCode::ACCEPTED)
}

async fn restart(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.platform.restart(&name)?;
    Ok(StatusCode::ACCEPTED)
}

async fn stop(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.platform.stop(&name)?;
    Ok(StatusCode::ACCEPTED)
}

async fn start(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.platform.start(&name)?;
    Ok(StatusCode::ACCEPTED)
}

/// Removes the service's cached responses (those under `path`, if given) from the gateway's cache.
async fn purge_cache(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    req: Option<Json<CachePurgeRequest>>,
) -> Result<Json<CachePurgeView>, ApiError> {
    let path = req.and_then(|Json(req)| req.path);
    if let Some(path) = path.as_deref().filter(|path| !path.starts_with('/')) {
        return Err(ApiError::Invalid {
            error: format!("cache purge path `{path}` does not start with `/`"),
            hint: "give a path prefix such as `/api`, or none to purge every cached response".to_owned(),
        });
    }
    let purged = state.platform.purge_cache(&name, path.as_deref())?;
    Ok(Json(CachePurgeView { service: name, path, purged }))
}

/// Builds, tests, snapshots and rolls out a service directory; answers with the progress as NDJSON, ending
/// with a `done` event. The deploy goes on if the client hangs up.
async fn deploy(State(state): State<ApiState>, Json(body): Json<DeployBody>) -> Result<Response, ApiError> {
    let strategy = match body.strategy.as_deref() {
        None => None,
        Some("rolling") => Some(berth_spec::Strategy::Rolling),
        Some("bluegreen" | "blue-green") => Some(berth_spec::Strategy::Bluegreen),
        Some("canary") => Some(berth_spec::Strategy::Canary),
        Some(other) => {
            return Err(ApiError::Invalid {
                error: format!("unknown deploy strategy `{other}`"),
                hint: "use `rolling`, `bluegreen` or `canary`".to_owned(),
            });
        }
    };
    let request = DeployRequest { dir: body.dir.into(), strategy, branch: body.branch };
    let platform = state.platform.clone();
    Ok(event_stream(&state, move |events| async move { platform.deploy(request, events).await }))
}

/// Rolls a service back (at once to a warm old release, else by redeploying an earlier one); NDJSON progress.
async fn rollback(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Option<Json<RollbackBody>>,
) -> Result<Response, ApiError> {
    state.platform.service_status(&name).await?;
    let to = body.and_then(|Json(body)| body.to);
    let platform = state.platform.clone();
    let request = RollbackRequest { service: name, to };
    Ok(event_stream(&state, move |events| async move { platform.rollback(request, events).await }))
}

async fn promote(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.platform.control(&name, Control::Promote)?;
    Ok(StatusCode::ACCEPTED)
}

async fn abort(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.platform.control(&name, Control::Abort)?;
    Ok(StatusCode::ACCEPTED)
}

async fn delete(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.platform.delete(&name).await?;
    Ok(StatusCode::OK)
}

/// Runs `work` in its own task with a channel of deploy events, and streams them as NDJSON (and to the
/// webhook, if there is one).
fn event_stream<F, Fut>(state: &ApiState, work: F) -> Response
where
    F: FnOnce(mpsc::UnboundedSender<berth_deploy::DeployEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (events_tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(work(events_tx));
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let webhook = state.webhook.as_ref().map(Webhook::sender);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let event = DeployEventView::from_event(event);
            if let Some(webhook) = &webhook {
                let _ = webhook.send(event.clone());
            }
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            // A client that hung up stops the stream, not the deploy.
            let _ = tx.send(Bytes::from(line)).await;
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::new(ChannelBody { rx })).into_response()
}

async fn shutdown(State(state): State<ApiState>) -> StatusCode {
    state.shutdown.notify_one();
    StatusCode::ACCEPTED
}

/// Logs as NDJSON: the stored lines matching the query, then (with `follow`) new lines as they come.
async fn logs(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let supervisor = state.platform.supervisor();
    if !supervisor.has_service(&name) {
        return Err(ApiError::UnknownService(name));
    }
    let store = supervisor.logs();
    // Subscribe before reading history, so no line falls between the two.
    let mut live = query.follow.then(|| store.follow(&name));
    let history = store
        .query(&name, &LogQuery { replica: query.replica, since_ms: query.since_ms, tail: query.tail })
        .map_err(|error| ApiError::Internal(format!("cannot read logs of `{name}`: {error}")))?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let replica = query.replica;
    tokio::spawn(async move {
        let mut last_ms = 0;
        for line in history {
            last_ms = line.ts_ms;
            if tx.send(ndjson(&line)).await.is_err() {
                return;
            }
        }
        let Some(live) = live.as_mut() else { return };
        loop {
            match live.recv().await {
                Ok(line) if line.ts_ms < last_ms || replica.is_some_and(|r| r != line.replica) => {}
                Ok(line) => {
                    if tx.send(ndjson(&line)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::new(ChannelBody { rx })).into_response())
}

fn ndjson(line: &berth_supervisor::logs::LogLine) -> Bytes {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
