//! A small web service whose instances share sessions and a rate limit through one store.
//!
//! ```text
//! cargo run -p examples --bin web -- --port 3000                  # SQLite ./state.db
//! cargo run -p examples --bin web -- --port 3001                  # a second instance, same file
//! cargo run -p examples --bin web -- --port 3000 --store redis://127.0.0.1:6379
//! ```
//!
//! `/metrics` serves the store's metrics (call latency by operation, limiter decisions) as
//! Prometheus text; `/status` charts them. `/` shows a page with a session counter (no login: the session cookie is the visitor),
//! the instance that served it, and a link to `/limited`, which allows `--limit` requests
//! (default 5) per `--window` seconds (default 60) per client IP — counted across every
//! instance on the store (a denied request gets `429` with an RFC 9457 problem-details body,
//! `Retry-After` and the IETF `RateLimit` headers; behind a reverse proxy, `--trust-proxy
//! <networks>` keys clients by the address it appends to `X-Forwarded-For`). `/api/visits` is
//! the counter as JSON, for scripts and tests.
//! `--prefix` (default `web-example`) keeps one deployment's state apart from another's.
//!
//! Behind HTTPS in production, pass `--production`: the session cookie is then `Secure` (sent
//! over HTTPS only), `HttpOnly` and `SameSite=Strict`. Without it the cookie also goes over
//! plain HTTP, for trying the example on localhost. Either way, clients get generic error
//! texts; the details go to the server's log (stderr), never to a client.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use state_store::{Limiter, StateStore};
use state_store_tower::{ClientIp, PeerIp, RateLimitLayer, SessionStore, TrustedProxies};
use tower_sessions::{Expiry, Session, SessionManagerLayer};

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[derive(Clone)]
struct App {
    instance: String,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = examples::store_url();
    let port: u16 = flag("--port").map_or(Ok(3000), |p| p.parse())?;
    let limit: u64 = flag("--limit").map_or(Ok(5), |l| l.parse())?;
    let window = Duration::from_secs(flag("--window").map_or(Ok(60), |w| w.parse())?);
    let instance = flag("--instance").unwrap_or_else(|| format!("port {port}"));
    let prefix = flag("--prefix").unwrap_or_else(|| "web-example".to_owned());

    // Metrics of every store call (`MetricsLayer`) and of the limiter, as Prometheus text on
    // `/metrics`.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("db.client.operation.duration".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ],
        )?
        .install_recorder()?;
    let opened = state_store::open(&url).await?;
    let store: StateStore = StateStore::builder(std::sync::Arc::clone(opened.raw_backend()))
        .layer(state_store::MetricsLayer)
        .config(opened.config().clone())
        .build()
        .with_prefix(&prefix)?;
    let production = std::env::args().any(|a| a == "--production");
    let sessions = SessionManagerLayer::new(SessionStore::new(&store))
        .with_secure(production)
        .with_http_only(true)
        .with_same_site(if production {
            tower_sessions::cookie::SameSite::Strict
        } else {
            tower_sessions::cookie::SameSite::Lax
        })
        .with_expiry(Expiry::OnInactivity(time::Duration::hours(1)));
    // `route_layer`: only `/limited` is limited. With `layer` the router's fallback was too,
    // and merged into the app it counted every unknown path (a browser's `/favicon.ico`)
    // against the visitor's limit.
    // Clients by their address; behind a reverse proxy (`--trust-proxy 10.0.0.0/8,…`), by the
    // address the proxy appends to X-Forwarded-For.
    let limiter = Limiter::fixed_window(&store, limit, window).named("limited");
    let limits = match flag("--trust-proxy") {
        Some(networks) => RateLimitLayer::new(
            limiter,
            ClientIp::x_forwarded_for(TrustedProxies::networks(networks.split(','))?),
        ),
        None => RateLimitLayer::new(limiter, PeerIp),
    };
    let limited = Router::new()
        .route("/limited", get(limited))
        .route_layer(limits);
    let app = Router::new()
        .route("/", get(page))
        .route(
            "/metrics",
            get(|State(app): State<App>| async move { app.metrics.render() }),
        )
        .route("/status", get(status))
        .route("/api/visits", get(visits_json))
        .merge(limited)
        .layer(sessions)
        .with_state(App {
            instance: instance.clone(),
            metrics: prometheus,
        });

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "{instance} listening on http://{} with {}",
        listener.local_addr()?,
        examples::redacted(&url)
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    store.destroy().await?;
    Ok(())
}

/// Counts this visit in the session; the new count.
async fn visit(session: &Session) -> Result<u64, tower_sessions::session::Error> {
    let visits = session.get::<u64>("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", visits).await?;
    Ok(visits)
}

async fn page(State(app): State<App>, session: Session) -> impl IntoResponse {
    let visits = match visit(&session).await {
        Ok(visits) => visits.to_string(),
        Err(err) => {
            eprintln!("session store: {err}");
            "unavailable".to_owned()
        }
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>state-store web example</title>
<style>body {{ font-family: sans-serif; max-width: 36em; margin: 3em auto; }}
.count {{ font-size: 3em; font-weight: bold; }}</style></head>
<body>
<h1>state-store web example</h1>
<p>Visits in this session: <span class="count" id="visits">{visits}</span></p>
<p id="instance">Served by instance <b>{}</b></p>
<p>Sessions and the <a href="/limited">rate-limited endpoint</a> are shared by every instance
on the same store: reload on another instance and the count goes on.</p>
</body>
</html>"#,
        html_escape(&app.instance)
    ))
}

async fn visits_json(State(app): State<App>, session: Session) -> impl IntoResponse {
    match visit(&session).await {
        Ok(visits) => Json(json!({ "instance": app.instance, "visits": visits })).into_response(),
        Err(err) => {
            eprintln!("session store: {err}");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "sessions are unavailable; try again later",
            )
                .into_response()
        }
    }
}

async fn limited(State(app): State<App>) -> String {
    format!("allowed, served by {}\n", app.instance)
}

/// What the status page shows, read from this instance's metrics.
#[derive(Debug, Default)]
struct Status {
    allowed: f64,
    denied: f64,
    /// Mean store latency in milliseconds and call count, by operation.
    latency: Vec<(String, f64, f64)>,
}

impl Status {
    /// From Prometheus text: the limiter's decisions and, by operation, the duration's sum
    /// and count.
    fn from_prometheus(text: &str) -> Self {
        let mut status = Status::default();
        let mut sums: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let label = |name: &str| {
                let start = series.find(&format!("{name}=\""))? + name.len() + 2;
                let end = series[start..].find('"')? + start;
                Some(series[start..end].to_owned())
            };
            if series.starts_with("state_store_limiter_decisions{") {
                match label("decision").as_deref() {
                    Some("allowed") => status.allowed += value,
                    Some("denied") => status.denied += value,
                    _ => {}
                }
            } else if let Some(op) = label("db_operation_name") {
                let entry = sums.entry(op).or_default();
                if series.starts_with("db_client_operation_duration_sum{") {
                    entry.0 += value;
                } else if series.starts_with("db_client_operation_duration_count{") {
                    entry.1 += value;
                }
            }
        }
        status.latency = sums
            .into_iter()
            .filter(|(_, (_, count))| *count > 0.0)
            .map(|(op, (sum, count))| (op, sum / count * 1000.0, count))
            .collect();
        status
    }
}

/// A horizontal bar chart in SVG: one bar per `(label, value)`, scaled to the largest.
fn bar_chart(id: &str, unit: &str, decimals: usize, bars: &[(String, f64)]) -> String {
    let top = bars
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let mut svg = format!(
        r#"<svg id="{id}" width="560" height="{}" role="img">"#,
        bars.len() * 28 + 4
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = i * 28;
        let width = (value / top * 260.0).max(1.0);
        svg.push_str(&format!(
            r##"<text x="0" y="{}" font-size="13">{}</text><rect x="110" y="{}" width="{width:.0}" height="18" fill="#4a7bd0"/><text x="{:.0}" y="{}" font-size="12">{value:.decimals$} {unit}</text>"##,
            y + 15,
            html_escape(label),
            y + 2,
            110.0 + width + 6.0,
            y + 15,
        ));
    }
    svg.push_str("</svg>");
    svg
}

async fn status(State(app): State<App>) -> impl IntoResponse {
    let status = Status::from_prometheus(&app.metrics.render());
    let decisions = bar_chart(
        "decisions",
        "requests",
        0,
        &[
            ("allowed".to_owned(), status.allowed),
            ("denied".to_owned(), status.denied),
        ],
    );
    let latency: Vec<(String, f64)> = status
        .latency
        .iter()
        .map(|(op, ms, _)| (op.clone(), *ms))
        .collect();
    let calls: u64 = status.latency.iter().map(|(_, _, n)| *n as u64).sum();
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>state-store status</title>
<style>body {{ font-family: sans-serif; max-width: 40em; margin: 2em auto; }}</style></head>
<body>
<h1>Instance <b id="instance">{}</b></h1>
<h2>Rate limit decisions</h2>
<p><span id="allowed">{}</span> allowed, <span id="denied">{}</span> denied</p>
{decisions}
<h2>Store latency (mean per call, <span id="calls">{calls}</span> calls)</h2>
{}
<p>Raw numbers: <a href="/metrics">/metrics</a> (Prometheus text).</p>
</body>
</html>"#,
        html_escape(&app.instance),
        status.allowed,
        status.denied,
        bar_chart("latency", "ms", 2, &latency),
    ))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
