//! `flowcast demo`: a synthetic application on loopback and the real sidecar scraping it.
//!
//! Owns the synthetic traffic (a daily cycle, noise and bursts, per route) and the seeding
//! of the past hours (history, and the forecasts the engine would have made over them), so
//! that forecasts and the page's track record are there within seconds. Everything
//! after seeding is the live sidecar unchanged: real HTTP scrapes, real parsing, the same
//! engine and server.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{DemoArgs, Failure};
use crate::config::{Config, FileConfig};
use crate::forecast::history::{MINUTE_SECONDS, STEP_SECONDS};
use crate::forecast::model::{Model, ModelError};
use crate::host::clock::system_now;
use crate::run::sidecar::{self, Sidecar};

/// Routes of the synthetic app and their base rates (req/s).
pub const ROUTES: [(&str, f64); 2] = [("/api/orders", 40.0), ("/api/search", 15.0)];
/// Share of requests answered with HTTP 500.
const ERROR_SHARE: f64 = 0.05;
/// Minutes of history seeded before the sidecar starts.
pub const SEED_MINUTES: i64 = 4 * 60;

/// The synthetic request rate (req/s) of `route` during unix minute `minute`:
/// a daily cycle, ±15 % noise and a 5-minute burst (×2.5) in some 47-minute periods.
pub fn rate(route: usize, minute: i64) -> f64 {
    let (_, base) = ROUTES[route % ROUTES.len()];
    let tod = minute.rem_euclid(1440) as f64 / 1440.0;
    let daily = 1.0 + 0.6 * (std::f64::consts::TAU * (tod - 0.3)).sin();
    let noise = 1.0 + 0.3 * (unit(minute as u64 ^ ((route as u64) << 40)) - 0.5);
    let period = minute.div_euclid(47);
    let burst = if unit(period as u64 ^ 0xB0B5) < 0.35 && minute.rem_euclid(47) < 5 {
        2.5
    } else {
        1.0
    };
    base * daily * noise * burst
}

/// A deterministic uniform number in [0, 1) from `x` (splitmix64).
fn unit(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// The counter value of `route` at unix time `t`, counting from minute `from`.
fn counter(route: usize, from: i64, t: f64) -> f64 {
    let now_minute = (t / 60.0).floor() as i64;
    let whole: f64 = (from..now_minute).map(|m| rate(route, m) * 60.0).sum();
    whole + rate(route, now_minute) * (t - (now_minute * 60) as f64)
}

/// The synthetic app's exposition at time `t` (Prometheus text 0.0.4).
pub fn exposition(from: i64, t: f64) -> String {
    let mut out = String::from(
        "# HELP demo_http_requests_total Requests handled by the demo app.\n# TYPE demo_http_requests_total counter\n",
    );
    for (i, (route, _)) in ROUTES.iter().enumerate() {
        let total = counter(i, from, t);
        let errors = (total * ERROR_SHARE).floor();
        let _ = writeln!(
            out,
            "demo_http_requests_total{{route=\"{route}\",code=\"200\"}} {}",
            (total - errors).floor()
        );
        let _ = writeln!(
            out,
            "demo_http_requests_total{{route=\"{route}\",code=\"500\"}} {errors}"
        );
    }
    out.push_str("# HELP demo_up Whether the demo app is up.\n# TYPE demo_up gauge\ndemo_up 1\n");
    out
}

/// Serves the synthetic app on `listener` until `shutdown`.
pub async fn serve_app(listener: TcpListener, from: i64, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let service = hyper::service::service_fn(move |_req| async move {
            let mut r = Response::new(Full::new(Bytes::from(exposition(from, system_now()))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok::<_, Infallible>(r)
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

/// The sidecar configuration the demo uses against an app at `app`.
pub fn config(app: SocketAddr, listen: SocketAddr) -> Result<Config, crate::config::ConfigError> {
    FileConfig {
        target: Some(format!("http://{app}/metrics")),
        selector: Some("demo_http_requests_total".to_string()),
        by: Some(vec!["route".to_string()]),
        series_name: Some("demo".to_string()),
        scrape_interval: Some("5s".to_string()),
        forecast_interval: Some("15s".to_string()),
        // So the page shows the replica recommendation too.
        replica_capacity: Some(25.0),
        listen: Some(listen.to_string()),
        ..FileConfig::default()
    }
    .validate()
}

/// Minutes of past forecasts replayed before the sidecar starts: the web page's track
/// record (3 hours of steps and the 15 minutes ahead of the oldest).
pub const TRACK_SEED_MINUTES: i64 = 3 * 60 + 15;

/// Seeds the sidecar as if it had run for the last hours: records the synthetic rates of
/// the `SEED_MINUTES + TRACK_SEED_MINUTES` minutes before `now`, minute by minute, and runs
/// the engine at every 5-minute origin of the last `TRACK_SEED_MINUTES`, publishing each
/// tick as the live loop would. So the history holds `SEED_MINUTES` at the end, the
/// calibration has learnt from those ticks, and the page has a track record at once.
pub fn seed_history(sidecar: &mut Sidecar, now: f64) -> Result<(), ModelError> {
    let now_minute = (now / MINUTE_SECONDS as f64).floor() as i64;
    let replay_from = now_minute - TRACK_SEED_MINUTES;
    let keys: Vec<Vec<String>> = ROUTES.iter().map(|(r, _)| vec![(*r).to_string()]).collect();
    for m in replay_from - SEED_MINUTES..now_minute {
        for (i, key) in keys.iter().enumerate() {
            sidecar.engine.record_rate(key, m, rate(i, m));
        }
        let end = (m + 1) * MINUTE_SECONDS;
        if m + 1 > replay_from && end % STEP_SECONDS == 0 && end < now_minute * MINUTE_SECONDS {
            let report = sidecar.engine.tick(end)?;
            sidecar.shared.publish(report);
        }
    }
    Ok(())
}

/// Runs the demo until `shutdown`: binds the app on an ephemeral loopback port and the
/// sidecar on `listen`, seeds history, prints the URLs.
pub async fn run(listen: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app_listener = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app_listener.local_addr()?;
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen}: {e} (choose another with --listen)")
    })?;
    let listen = listener.local_addr()?;
    let config = config(app_addr, listen)?;
    let now = system_now();
    let from = (now / 60.0).floor() as i64 - SEED_MINUTES;
    let model = Arc::new(Model::load(&config.model)?);
    let mut sidecar = Sidecar::new(&config, model)?;
    // The replay is inference: off the runtime's workers.
    let sidecar =
        tokio::task::spawn_blocking(move || seed_history(&mut sidecar, now).map(|()| sidecar))
            .await??;
    let app = tokio::spawn(serve_app(app_listener, from, shutdown.clone()));
    // A closed stdout (a pipe whose reader went away) must not stop the demo.
    let banner = format!(
        "flowcast demo\n  synthetic app:  http://{app_addr}/metrics\n  web page:       http://{listen}/\n  \
         metrics:        http://{listen}/metrics\n  forecast JSON:  http://{listen}/api/v1/forecast\n  \
         health:         http://{listen}/healthz  http://{listen}/readyz\n\
         forecasts for horizons 5m, 10m and 15m are ready within seconds; Ctrl-C stops.\n"
    );
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    }
    sidecar.run(listener, shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), app).await;
    Ok(())
}

/// `flowcast demo`: runs [`run`] until Ctrl-C or `--duration`.
pub fn command(args: &DemoArgs) -> Result<(), Failure> {
    let rt = sidecar::runtime().map_err(Failure::runtime)?;
    let (listen, limit) = (args.listen, args.duration.map(Into::into));
    let result = rt.block_on(async move {
        run(listen, sidecar::shutdown_on_signal(limit))
            .await
            .map_err(Failure::runtime)
    });
    rt.shutdown_background();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_traffic_has_a_cycle_noise_and_bursts() {
        let rates: Vec<f64> = (0..1440).map(|m| rate(0, m)).collect();
        let max = rates.iter().copied().fold(0.0, f64::max);
        let min = rates.iter().copied().fold(f64::MAX, f64::min);
        assert!(min > 0.0 && max / min > 3.0, "{min} .. {max}");
        assert_ne!(rate(0, 10), rate(0, 11));
        assert!(
            (0..1440).any(|m| rate(0, m) > 2.0 * rate(0, m - 6).max(rate(0, m + 6))),
            "bursts"
        );
    }

    /// Seeding leaves the history full and a track record of three hours: every past step
    /// has its observed value and the bands forecast for it 5, 10 and 15 minutes earlier.
    #[test]
    fn seeding_leaves_a_track_record() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let config = config(addr, addr).expect("config");
        let model = Arc::new(crate::forecast::model::Model::embedded().expect("model"));
        let mut sidecar = Sidecar::new(&config, model).expect("sidecar");
        let now = 1_700_000_030.0;
        seed_history(&mut sidecar, now).expect("seeded");
        let origin = sidecar.shared.latest().origin;
        assert_eq!(
            origin,
            1_700_000_100 - 300,
            "the last whole 5 minutes before now"
        );
        let book = sidecar.shared.track();
        assert_eq!(book.len(), ROUTES.len());
        for (route, _) in ROUTES {
            let steps = book.get(&[route.to_string()]).expect("a record").steps();
            let past: Vec<_> = steps.iter().filter(|s| s.start + 300 <= origin).collect();
            assert_eq!(past.len(), crate::serve::track::TRACK_STEPS);
            assert!(past.iter().all(|s| s.observed.is_some()), "{route}");
            for h in 0..3 {
                let banded = past.iter().filter(|s| s.bands[h].is_some()).count();
                assert!(banded >= 33, "{route}: {banded} steps with a {h} band");
            }
        }
    }

    #[test]
    fn the_counter_integrates_the_rate() {
        let a = counter(1, 0, 600.0);
        let b = counter(1, 0, 660.0);
        assert!(((b - a) / 60.0 - rate(1, 10)).abs() < 1e-9);
        assert!(exposition(0, 600.0)
            .contains("demo_http_requests_total{route=\"/api/orders\",code=\"200\"}"));
    }
}
