//! Exposition parsing throughput on a realistic 1 MB `/metrics` page (issue #7: >= 300 MB/s
//! and at least 2x the `prometheus-parse` crate, both measured here in the same run).
// criterion_group! generates public functions without doc comments.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowcast::ingest::exposition::{self, Format};
use flowcast::ingest::selector::Selector;

/// About 1 MB of what a busy service exposes: request counters by method, route and code,
/// latency histograms by route, and process gauges, with HELP/TYPE lines.
pub fn realistic_exposition(target_bytes: usize) -> String {
    let mut out = String::with_capacity(target_bytes + 4096);
    out.push_str(
        "# HELP http_requests_total Requests handled.\n# TYPE http_requests_total counter\n",
    );
    let methods = ["GET", "POST", "PUT", "DELETE"];
    let codes = ["200", "201", "304", "404", "500"];
    let mut route = 0;
    while out.len() < target_bytes / 2 {
        for m in methods {
            for c in codes {
                out.push_str(&format!(
                    "http_requests_total{{method=\"{m}\",route=\"/api/v1/resource{route}/{{id}}\",code=\"{c}\",instance=\"10.0.3.17:8080\",job=\"api\"}} {}\n",
                    1_000_000 + route * 37 + c.len()
                ));
            }
        }
        route += 1;
    }
    out.push_str("# HELP http_request_duration_seconds Latency.\n# TYPE http_request_duration_seconds histogram\n");
    let les = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];
    let mut r = 0;
    while out.len() < target_bytes {
        for (k, le) in les.iter().enumerate() {
            out.push_str(&format!(
                "http_request_duration_seconds_bucket{{route=\"/api/v1/resource{r}/{{id}}\",le=\"{le}\"}} {}\n",
                100 * (k + 1) + r
            ));
        }
        out.push_str(&format!(
            "http_request_duration_seconds_sum{{route=\"/api/v1/resource{r}/{{id}}\"}} {}.25\nhttp_request_duration_seconds_count{{route=\"/api/v1/resource{r}/{{id}}\"}} {}\n",
            r * 3,
            1200 + r
        ));
        r += 1;
    }
    out.push_str(
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 2.4576e+07\n",
    );
    out
}

fn parsers(c: &mut Criterion) {
    let text = realistic_exposition(1 << 20);
    let selector: Selector = "http_requests_total{code!~\"5..\",job=\"api\"}"
        .parse()
        .expect("selector");
    let mut g = c.benchmark_group("parse_1MB");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function(BenchmarkId::new("flowcast", "all samples"), |b| {
        b.iter(|| {
            let mut n = 0usize;
            exposition::parse(text.as_bytes(), Format::Text004, |s| {
                n += 1;
                std::hint::black_box(s.value);
            })
            .expect("parses");
            n
        })
    });
    g.bench_function(BenchmarkId::new("flowcast", "select + label"), |b| {
        b.iter(|| {
            let mut sum = 0.0;
            exposition::parse(text.as_bytes(), Format::Text004, |s| {
                if selector.matches(&s.name, &s.labels) {
                    sum += s.value + s.labels.get("route").map_or(0, |r| r.len()) as f64;
                }
            })
            .expect("parses");
            sum
        })
    });
    g.bench_function(BenchmarkId::new("prometheus-parse", "all samples"), |b| {
        b.iter(|| {
            let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
                .expect("parses");
            scrape.samples.len()
        })
    });
    g.finish();
}

criterion_group!(benches, parsers);
criterion_main!(benches);
