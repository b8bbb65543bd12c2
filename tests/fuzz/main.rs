//! A mutation fuzzer on stable Rust for every parser of outside input: expositions (both
//! formats), selectors, state snapshots, backtest CSVs and configuration YAML. Inputs are
//! real samples (flowcast's own exposition, hand-written edge cases, a real engine
//! snapshot, the head of a real traffic series) mutated by byte flips, insertions,
//! deletions, splices, truncations and interesting tokens. Any panic fails the test and
//! the input is written to `target/fuzz-crashes/`.
//!
//! Budget (inputs per target) from the environment: `FLOWCAST_FUZZ_PARSER` (default
//! 200,000 exposition inputs, the CI budget) and `FLOWCAST_FUZZ_OTHER` (default 20,000 each
//! for the other targets). The full run documented in BENCHMARKS.md:
//! `FLOWCAST_FUZZ_PARSER=10000000 FLOWCAST_FUZZ_OTHER=100000 cargo test --release --test fuzz -- --nocapture`

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use flowcast::forecast::band::BandMode;
use flowcast::forecast::engine::{Engine, EngineSettings};
use flowcast::forecast::history::SeriesLimits;
use flowcast::forecast::model::Model;
use flowcast::ingest::exposition::{self, Format};
use flowcast::ingest::selector::Selector;
use flowcast::serve::metrics::Metrics;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"\"",
    b"\\",
    b"\\\"",
    b"\\n",
    b"\n",
    b" ",
    b",",
    b"=",
    b"!=",
    b"=~",
    b"!~",
    b"# EOF\n",
    b"# TYPE ",
    b"# HELP ",
    b"# UNIT ",
    b" counter\n",
    b" histogram\n",
    b"_total",
    b"_created",
    b"_bucket",
    b"le=\"+Inf\"",
    b"NaN",
    b"+Inf",
    b"-Inf",
    b"1e308",
    b"-0",
    b"0x1p3",
    b" # {trace_id=\"abc\"} 1.0 1.5",
    b"\xff",
    b"\xc3\x28",
    b"\0",
    b"\xe2\x82\xac",
    b"{\"quoted.name\"}",
    b"9223372036854775807",
    b"--",
    b"timestamp,value\n",
    b"FLOWCAST",
    b"[",
    b"]",
    b":",
    b"- ",
    b"\t",
    b"1m30s",
    b"http://",
];

fn budget(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mutate(rng: &mut ChaCha8Rng, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&corpus[rng.random_range(0..corpus.len())]);
    for _ in 0..rng.random_range(1..=6) {
        let len = out.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=len);
                out.insert(i, rng.random());
            }
            2 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16)).min(len);
                out.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                let piece = out[a..b].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, piece);
            }
            4 => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let b = (a + rng.random_range(1..=128)).min(other.len());
                    let at = rng.random_range(0..=len);
                    out.splice(at..at, other[a..b].iter().copied());
                }
            }
            5 => {
                out.truncate(rng.random_range(0..=len));
            }
            _ => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                let at = rng.random_range(0..=len);
                out.splice(at..at, t.iter().copied());
            }
        }
    }
}

/// Runs `n` mutated inputs through `target` on all cores; a panic saves the input and fails.
fn fuzz(name: &str, corpus: Vec<Vec<u8>>, n: usize, target: impl Fn(&[u8]) + Sync) {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let corpus = Arc::new(corpus);
    let crashed: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let corpus = Arc::clone(&corpus);
                let target = &target;
                scope.spawn(move || {
                    let mut rng = ChaCha8Rng::seed_from_u64(0xF1_0C_A5 ^ t as u64);
                    let mut input = Vec::new();
                    for _ in (t..n).step_by(threads) {
                        mutate(&mut rng, &corpus, &mut input);
                        if panic::catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                            return Some(input);
                        }
                    }
                    None
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {n} inputs in {secs:.1}s ({:.0}/s)",
        n as f64 / secs
    );
    if let Some(input) = crashed.first() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}-{}.bin", crashed.len()));
        let _ = std::fs::write(&path, input);
        panic!("{name}: a panic on an input saved to {}", path.display());
    }
}

fn exposition_corpus() -> Vec<Vec<u8>> {
    let metrics = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
    metrics.scrapes.inc();
    metrics
        .scrape_failures
        .with_label_values(&["timeout"])
        .inc();
    metrics.scrape_duration.observe(0.1);
    vec![
        metrics.encode_text(),
        metrics.encode_openmetrics(),
        br#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200",path="/a\"b\\c\nd"} 1027 1395066363000
http_requests_total{method="get",code="400"} 3 1395066363000
# TYPE rpc histogram
rpc_bucket{le="0.05"} 24054
rpc_bucket{le="+Inf"} 144320
rpc_sum 53423
rpc_count 144320
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9
weird -Inf
nan_value NaN
"#
        .to_vec(),
        br#"# TYPE foo counter
# UNIT foo seconds
# HELP foo A counter.
foo_total{a="1"} 17.0 1520879607.789 # {trace_id="KOO5S4vxi0o"} 0.67
foo_created{a="1"} 1520430000.123
# TYPE bar gauge
bar{"quoted.label"="x"} +Inf
{"my.dotted.metric", a="b"} 3
# EOF
"#
        .to_vec(),
    ]
}

#[test]
fn exposition_and_selector_parsers_never_panic() {
    let n = budget("FLOWCAST_FUZZ_PARSER", 200_000);
    fuzz("exposition", exposition_corpus(), n, |input| {
        let mut count = 0usize;
        for format in [Format::Text004, Format::OpenMetrics] {
            let _ = exposition::parse(input, format, |s| {
                count += 1;
                let _ = s.labels.get("code");
                let _ = s.labels.iter().count();
            });
        }
    });
    let selectors: Vec<Vec<u8>> = [
        "http_requests_total{job=\"api\",code!~\"5..\",path=~\"/a|/b\",x!=\"y\"}",
        "up",
        "{__name__=\"x\"}",
        "a{b=~\"(?i)c.*\"}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("selector", selectors, n / 10, |input| {
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = text.parse::<Selector>();
        }
    });
}

#[test]
fn snapshots_never_panic() {
    let model = Arc::new(Model::embedded().expect("model"));
    let settings = EngineSettings {
        mc_passes: 4,
        seed: 1,
        band: BandMode::default(),
        experts: flowcast::forecast::combine::ExpertSet::ALL,
        limits: SeriesLimits {
            max_series: 4,
            max_children: 16,
            max_gap_seconds: 120.0,
            shard: None,
            stale_after_seconds: Some(3600.0),
        },
    };
    let mut engine = Engine::new(Arc::clone(&model), settings);
    for m in 28_000_000..28_000_240 {
        engine.record_rate(&["a".to_string()], m, (m % 17) as f64);
        engine.record_rate(&["b".to_string()], m, 3.0);
    }
    engine.tick(28_000_240 * 60).expect("tick");
    let bytes = flowcast::forecast::state::encode(
        &engine.snapshot("selector=x;by=k;band=Calibrated".into(), 1.0),
    );
    let n = budget("FLOWCAST_FUZZ_OTHER", 20_000);
    let restore = |framed: &[u8]| {
        if let Ok(s) = flowcast::forecast::state::decode(framed, Path::new("fuzz")) {
            // A decodable snapshot is still checked before it touches an engine, and what
            // it lets through must survive a tick (with eviction) on the engine's clock.
            let now = 28_000_245 * 60;
            let mut fresh = Engine::new(Arc::clone(&model), settings);
            if fresh.restore(s, 1, now).is_ok() {
                let _ = fresh.evict_stale(now);
                let _ = fresh.tick(now);
            }
        }
    };
    // Whole files (mostly stopped by the header and the CRC) ...
    fuzz("snapshot-file", vec![bytes.clone()], n, restore);
    // ... and mutated payloads behind a valid header, which reach the decoder and the
    // engine's checks.
    let payload = bytes[24..].to_vec();
    fuzz("snapshot-payload", vec![payload], n, |input| {
        restore(&flowcast::forecast::state::frame(input))
    });
}

#[test]
fn csv_and_config_parsers_never_panic() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/traffic/isp_internet_traffic_eu_5min.csv");
    let real: String = std::fs::read_to_string(&data)
        .map(|t| t.lines().take(40).collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|_| "timestamp,value\n0,1\n300,2\n600,3\n".to_string());
    let csvs = vec![
        real.into_bytes(),
        b"timestamp,value\n60,1.5\n120,2\n180,nan\n".to_vec(),
        b"\xef\xbb\xbftimestamp,value\r\n0,1\r\n60,2\r\n".to_vec(),
    ];
    let n = budget("FLOWCAST_FUZZ_OTHER", 20_000);
    fuzz("csv", csvs, n, |input| {
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = flowcast::evidence::backtest::parse_series(text, None, i64::MAX);
            let _ = flowcast::evidence::backtest::parse_series(text, Some(60), i64::MAX);
        }
    });
    let yaml = vec![
        b"target: http://127.0.0.1:8080/metrics\nselector: http_requests_total{code!~\"5..\"}\nby: [route, tenant]\nscrape_interval: 15s\nmc_passes: 30\nreplica_capacity: 50.5\n".to_vec(),
        b"source: prometheus\nprometheus_url: http://p:9090\nquery: sum(rate(x[1m]))\nbackfill_query: \"y\"\nshutdown_grace: 1m30s\n".to_vec(),
    ];
    fuzz("config", yaml, n, |input| {
        if let Ok(text) = std::str::from_utf8(input) {
            if let Ok(c) = flowcast::config::parse_file(text) {
                let _ = c.validate();
            }
        }
    });
}
