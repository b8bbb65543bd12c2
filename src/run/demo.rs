//! `flowcast demo`: a synthetic application on loopback and the real sidecar scraping it.
//!
//! Owns the synthetic traffic (per route: a daily cycle, quieter weekends, Poisson noise
//! at the level of the counts, a slow drift and one burst a week) and the seeding of the
//! past week (history, and every forecast the engine would have made over it, so the
//! combination and the calibration have learnt what a week-old sidecar has), so that the
//! page opens in the state of a sidecar that has run for a week. Everything after seeding
//! is the live sidecar unchanged: real HTTP scrapes, real parsing, the same engine and
//! server.

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
use crate::forecast::model::Model;
use crate::host::clock::system_now;
use crate::run::sidecar::{self, Sidecar};

/// Routes of the synthetic app and their base rates (req/s).
pub const ROUTES: [(&str, f64); 2] = [("/api/orders", 40.0), ("/api/search", 15.0)];
/// Share of requests answered with HTTP 500.
const ERROR_SHARE: f64 = 0.05;
/// Minutes of history seeded before the sidecar starts: a week.
pub const SEED_MINUTES: i64 = 7 * 1440;
/// The weekly burst: Wednesday (day 3 of the ISO week, UTC) from 15:00, 25 minutes.
const BURST: (i64, i64, i64) = (3, 15 * 60, 25);

/// The expected request rate (req/s) of `route` during unix minute `minute`: a daily
/// cycle (two peaks, a route-dependent phase), weekends at two thirds, a slow drift of a
/// few per cent and the weekly burst (×2.2, ramped over 5 minutes).
pub fn expected_rate(route: usize, minute: i64) -> f64 {
    let (_, base) = ROUTES[route % ROUTES.len()];
    let phase = 0.02 * route as f64;
    let tod = minute.rem_euclid(1440) as f64 / 1440.0 - phase;
    let tau = std::f64::consts::TAU;
    let daily = 1.0 + 0.55 * (tau * (tod - 0.3)).sin() + 0.15 * (2.0 * tau * (tod - 0.1)).sin();
    // 1970-01-01 was a Thursday: ISO weekday 1 = Monday … 7 = Sunday.
    let weekday = (minute.div_euclid(1440) + 3).rem_euclid(7) + 1;
    let weekend = if weekday >= 6 { 0.65 } else { 1.0 };
    // Slow drift: smooth noise on 2-hour knots, interpolated.
    let knot = minute.div_euclid(120);
    let w = minute.rem_euclid(120) as f64 / 120.0;
    let k = |i: i64| unit(i as u64 ^ ((route as u64) << 48) ^ 0xD41F) - 0.5;
    let drift = 1.0 + 0.08 * ((1.0 - w) * k(knot) + w * k(knot + 1));
    let into_burst = minute.rem_euclid(1440) - BURST.1;
    let burst = if weekday == BURST.0 && (0..BURST.2).contains(&into_burst) {
        1.0 + 1.2 * ((into_burst + 1) as f64 / 5.0).min(1.0)
    } else {
        1.0
    };
    base * daily * weekend * drift * burst
}

/// The synthetic request rate (req/s) of `route` during unix minute `minute`: the requests
/// of that minute, Poisson around [`expected_rate`] (a normal approximation, exact enough at
/// hundreds of requests a minute), divided by 60.
pub fn rate(route: usize, minute: i64) -> f64 {
    let mean = expected_rate(route, minute) * 60.0;
    let seed = minute as u64 ^ ((route as u64) << 40);
    let (u1, u2) = (unit(seed).max(1e-12), unit(seed ^ 0x005E_ED0F_CAFE));
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (mean + mean.sqrt() * z).round().max(0.0) / 60.0
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

/// Minutes of past forecasts published to the page before the sidecar starts: its 24-hour
/// view and the 15 minutes ahead of the oldest step.
pub const TRACK_SEED_MINUTES: i64 = 24 * 60 + 15;
/// Minutes of history before the first seeded forecast (the model's 3-hour window).
const WARM_MINUTES: i64 = 3 * 60;

/// What the seeded week looked like, for the banner (and the note).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seeded {
    /// Forecast ticks run.
    pub ticks: usize,
    /// 5-minute-ahead bands judged against the step they forecast.
    pub judged: usize,
    /// Share of those steps inside their band.
    pub coverage: f64,
    /// Median band width over the step's value.
    pub median_width: f64,
}

/// Seeds the sidecar as if it had run for the last week: records the synthetic rates of
/// the `SEED_MINUTES` minutes before `now`, minute by minute, and runs the engine at every
/// 5-minute origin after the first 3 hours, as the live loop would (in batches of origins,
/// as `backtest` does: the same engine, the same results). The ticks of the last
/// `TRACK_SEED_MINUTES` are published, so the page has a day of track record at once; the
/// combination and the calibration have learnt from all of them.
pub fn seed_history(
    sidecar: &mut Sidecar,
    now: f64,
) -> Result<Seeded, crate::evidence::backtest::BacktestError> {
    let now_minute = (now / MINUTE_SECONDS as f64).floor() as i64;
    let first = now_minute - SEED_MINUTES;
    let keys: Vec<Vec<String>> = ROUTES.iter().map(|(r, _)| vec![(*r).to_string()]).collect();
    let origins: Vec<i64> = (first + WARM_MINUTES..now_minute)
        .map(|m| m * MINUTE_SECONDS)
        .filter(|t| t % STEP_SECONDS == 0)
        .collect();
    let publish_from = (now_minute - TRACK_SEED_MINUTES) * MINUTE_SECONDS;
    let passes = sidecar.engine.settings().mc_passes;
    // The shipped band (`combined`) learns from the combination's errors and not from the
    // spread of the Monte-Carlo passes, so ticks the page never shows need only 2 of them:
    // the state they leave is the same, and start-up stays under 2 s. Other bands use u1
    // and get every pass.
    let hidden_passes =
        if sidecar.engine.settings().band == crate::forecast::band::BandMode::Combined {
            passes.min(2)
        } else {
            passes
        };
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut next = first;
    let (mut judged, mut inside, mut widths) = (0usize, 0usize, Vec::new());
    for chunk in origins.chunks(64) {
        let mut prepared = Vec::with_capacity(chunk.len());
        for &origin in chunk {
            while next * MINUTE_SECONDS < origin {
                for (i, key) in keys.iter().enumerate() {
                    sidecar.engine.record_rate(key, next, rate(i, next));
                }
                next += 1;
            }
            prepared.push(sidecar.engine.prepare(origin));
        }
        let (inputs, seeds): (Vec<_>, Vec<_>) = prepared.iter().map(|p| p.inputs()).unzip();
        let counts: Vec<usize> = inputs.iter().map(Vec::len).collect();
        let outputs = crate::evidence::backtest::predict_parallel(
            sidecar.engine.model(),
            &inputs.concat(),
            &seeds.concat(),
            if chunk[chunk.len() - 1] < publish_from {
                hidden_passes
            } else {
                passes
            },
            threads,
        )?;
        let mut at = 0;
        for (p, n) in prepared.into_iter().zip(counts) {
            let report = sidecar.engine.finish(p, &outputs[at..at + n]);
            at += n;
            // The 5-minute band against the step it forecasts (its peak 1-minute rate).
            for s in &report.series {
                let (Some(f), Some(i)) = (&s.forecast, keys.iter().position(|k| *k == s.key))
                else {
                    continue;
                };
                let m0 = report.origin / MINUTE_SECONDS;
                if m0 + 5 > now_minute {
                    continue;
                }
                let peak = (m0..m0 + 5).map(|m| rate(i, m)).fold(0.0, f64::max);
                let band = &f.horizons[0];
                judged += 1;
                inside += usize::from(band.lower <= peak && peak <= band.upper);
                widths.push((band.upper - band.lower) / peak.max(1e-9));
            }
            if report.origin >= publish_from {
                sidecar.shared.publish(report);
            }
        }
    }
    for m in next..now_minute {
        for (i, key) in keys.iter().enumerate() {
            sidecar.engine.record_rate(key, m, rate(i, m));
        }
    }
    widths.sort_by(f64::total_cmp);
    Ok(Seeded {
        ticks: origins.len(),
        judged,
        coverage: inside as f64 / judged.max(1) as f64,
        median_width: widths.get(widths.len() / 2).copied().unwrap_or(f64::NAN),
    })
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
    // The app's counters start an hour before now (their level does not matter, only
    // their increases, which are the seeded rates).
    let from = (now / 60.0).floor() as i64 - 60;
    let model = Arc::new(Model::load(&config.model)?);
    let mut sidecar = Sidecar::new(&config, model)?;
    // The replay is inference: off the runtime's workers.
    let started = std::time::Instant::now();
    let (sidecar, seeded) = tokio::task::spawn_blocking(move || {
        seed_history(&mut sidecar, now).map(|seeded| (sidecar, seeded))
    })
    .await??;
    let seed_seconds = started.elapsed().as_secs_f64();
    let app = tokio::spawn(serve_app(app_listener, from, shutdown.clone()));
    // A closed stdout (a pipe whose reader went away) must not stop the demo.
    let banner = format!(
        "flowcast demo\n  synthetic app:  http://{app_addr}/metrics\n  web page:       http://{listen}/\n  \
         metrics:        http://{listen}/metrics\n  forecast JSON:  http://{listen}/api/v1/forecast\n  \
         health:         http://{listen}/healthz  http://{listen}/readyz\n\
         seeded a week of traffic in {seed_seconds:.1} s: {} forecast ticks; the 5-minute band held {:.1} % of {} steps, median width {:.0} % of the rate.\n\
         forecasts for horizons 5m, 10m and 15m are ready now; Ctrl-C stops.\n",
        seeded.ticks,
        100.0 * seeded.coverage,
        seeded.judged,
        100.0 * seeded.median_width
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

    /// A daily cycle, quieter weekends, Poisson noise at the counts' level, and exactly one
    /// burst in any week.
    #[test]
    fn synthetic_traffic_has_a_cycle_weekends_noise_and_one_burst_a_week() {
        // 2023-11-13 00:00 UTC was a Monday.
        let monday = 1_699_833_600 / 60;
        let day = |d: i64| -> f64 {
            (0..1440)
                .map(|m| expected_rate(0, monday + 1440 * d + m))
                .sum::<f64>()
                / 1440.0
        };
        let rates: Vec<f64> = (0..1440)
            .map(|m| expected_rate(0, monday + 1440 + m))
            .collect();
        let max = rates.iter().copied().fold(0.0, f64::max);
        let min = rates.iter().copied().fold(f64::MAX, f64::min);
        assert!(min > 0.0 && max / min > 3.0, "daily cycle {min} .. {max}");
        assert!(
            day(5) < 0.75 * day(1) && day(6) < 0.75 * day(1),
            "weekends are quieter"
        );
        // Poisson: the per-minute counts scatter around their mean with variance ≈ mean.
        let (mut z2, mut n) = (0.0, 0.0);
        for m in 0..5 * 1440 {
            let minute = monday + m;
            let mean = expected_rate(0, minute) * 60.0;
            z2 += (rate(0, minute) * 60.0 - mean).powi(2) / mean;
            n += 1.0;
        }
        assert!((z2 / n - 1.0).abs() < 0.1, "dispersion {}", z2 / n);
        // One burst in any 7 days (minutes well above twice those 30 minutes away).
        for start in [monday, monday + 2_000, monday + 7_777] {
            let bursts = (start..start + 7 * 1440)
                .filter(|&m| {
                    expected_rate(0, m)
                        > 1.8 * expected_rate(0, m - 30).max(expected_rate(0, m + 30))
                })
                .map(|m| m / 1440)
                .collect::<std::collections::BTreeSet<_>>();
            assert_eq!(bursts.len(), 1, "from {start}: {bursts:?}");
        }
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
        let seeded = seed_history(&mut sidecar, now).expect("seeded");
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
                assert!(
                    banded >= crate::serve::track::TRACK_STEPS - 3,
                    "{route}: {banded} steps with a {h} band"
                );
            }
        }
        // A week of ticks, calibrated: the 5-minute band holds about 95 % of the steps.
        assert!(seeded.ticks > 1_900, "{seeded:?}");
        assert!(seeded.judged >= 2 * (seeded.ticks - 1), "{seeded:?}");
        assert!(
            (0.90..=0.98).contains(&seeded.coverage),
            "coverage over the seeded week {seeded:?}"
        );
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
