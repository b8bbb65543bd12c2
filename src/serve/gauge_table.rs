//! The per-series gauge table and the `/metrics` encoding: text 0.0.4, OpenMetrics 1.0 and
//! gzip.
//!
//! Owns the machinery behind [`crate::serve::metrics`], which names the metrics: one table row per
//! series (not a label tuple per sample), each family's text encoded byte for byte as the
//! prometheus crate would, written straight into a gzip member once per change and shared
//! by every request until the next one. It names no metric and computes no forecast.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;

/// Content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The per-series gauge families and their cached text. Families are added once, at
/// start; [`SeriesTable::refresh`] encodes them after a change.
#[derive(Clone, Default)]
pub(crate) struct SeriesTable {
    /// The families, sorted by name (the order a registry would gather them).
    families: Arc<Vec<GaugeFamily>>,
    cache: Arc<SeriesCache>,
}

impl SeriesTable {
    /// A family of gauges with `series_labels`, then one gauge per value of each extra
    /// label (`horizon`, `component`), named `name` with `help`.
    pub(crate) fn add_family(
        &mut self,
        name: String,
        help: &str,
        series_labels: &[&str],
        extras: &[(&str, &'static [&'static str])],
    ) -> Result<GaugeFamily, prometheus::Error> {
        let family = GaugeFamily::new(name, help, series_labels, extras, Arc::clone(&self.cache))?;
        let mut families = self.families.as_ref().clone();
        let at = families.partition_point(|f| f.inner.name < family.inner.name);
        families.insert(at, family.clone());
        self.families = Arc::new(families);
        Ok(family)
    }

    /// Removes every gauge of the series with these label values.
    pub(crate) fn remove_series(&self, series: &[&str]) {
        let key: Box<[Box<str>]> = series.iter().map(|v| Box::from(*v)).collect();
        if lock(&self.cache.rows).rows.remove(&key).is_some() {
            self.cache.dirty.store(true, Ordering::Release);
        }
    }

    /// Re-encodes the families if they changed since the last encoding, straight into one
    /// gzip member, and returns the text. The live loop calls it after publishing a tick,
    /// so requests find it ready.
    pub(crate) fn refresh(&self) -> SeriesText {
        let _encoding = lock(&self.cache.encoding);
        self.encode_if_dirty();
        lock(&self.cache.encoded).clone()
    }

    /// The cached text for a request, as the last [`SeriesTable::refresh`] left it: a
    /// request never encodes (at 10,000 series about half a second on a runtime worker),
    /// nor waits for an encoding.
    fn for_request(&self) -> SeriesText {
        lock(&self.cache.encoded).clone()
    }

    /// The encoding itself; the caller holds `cache.encoding`. The previous text is served
    /// until the new one replaces it. The text goes through a 64 KiB buffer into the
    /// compressor and is never held whole: at 10,000 series it is 26 MB, its gzip member
    /// 2.3 MB.
    fn encode_if_dirty(&self) {
        let cache = &self.cache;
        if !cache.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let capacity = lock(&cache.encoded).gzip.len() + 4096;
        // Once per change, so the default level: smaller bodies for every scrape.
        let encoder = GzEncoder::new(Vec::with_capacity(capacity), Compression::default());
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, encoder);
        // Writing into a Vec cannot fail.
        for family in self.families.iter() {
            let _ = family.encode_text(&mut out);
        }
        let gzip = out
            .into_inner()
            .ok()
            .and_then(|encoder| encoder.finish().ok())
            .unwrap_or_default();
        *lock(&cache.encoded) = SeriesText {
            gzip: Bytes::from(gzip),
            text: None,
        };
    }

    /// The text uncompressed, for clients that do not take gzip: inflated from the gzip
    /// member on the first such request after a change and kept until the next one, so a
    /// sidecar scraped only with gzip (Prometheus) never holds it.
    fn plain(&self, series: SeriesText) -> Bytes {
        if let Some(text) = series.text {
            return text;
        }
        let cache = &self.cache;
        let _inflating = lock(&cache.inflating);
        let is_current = |current: &SeriesText| current.gzip.as_ptr() == series.gzip.as_ptr();
        // Another request may have inflated it while this one waited.
        if let Some(text) = Some(lock(&cache.encoded))
            .filter(|current| is_current(current))
            .and_then(|current| current.text.clone())
        {
            return text;
        }
        let text = inflate(&series.gzip);
        let mut current = lock(&cache.encoded);
        if is_current(&current) {
            current.text = Some(text.clone());
        }
        text
    }

    /// The `/metrics` body in `format`, as chunks to send in order: `own` (the process's
    /// own metrics, encoded for this request in `format`), the cached per-series text, and
    /// `# EOF` for OpenMetrics. With `gzip` every chunk is a gzip member: the per-series
    /// one is compressed once per change, only the small own part per request, and the
    /// members' concatenation is one valid gzip stream (RFC 1952 §2.2) whose decoding is
    /// exactly the uncompressed body.
    pub(crate) fn exposition(
        &self,
        own: Vec<u8>,
        format: ExpositionFormat,
        gzip: bool,
    ) -> Exposition {
        let series = self.for_request();
        let mut chunks = Vec::with_capacity(3);
        if gzip {
            // Per request: the fastest level; the part is about 10 kB.
            chunks.push(gzip_member(&own, Compression::fast()));
            chunks.push(series.gzip);
        } else {
            chunks.push(Bytes::from(own));
            chunks.push(self.plain(series));
        }
        if format == ExpositionFormat::OpenMetrics {
            chunks.push(if gzip {
                openmetrics_eof_gzip()
            } else {
                Bytes::from_static(OPENMETRICS_EOF)
            });
        }
        Exposition {
            chunks,
            content_type: match format {
                ExpositionFormat::Text => TEXT_CONTENT_TYPE,
                ExpositionFormat::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            },
            gzip,
        }
    }
}

/// The text format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

/// A `/metrics` body in chunks whose concatenation is the body; the chunks share the
/// cached bytes instead of copying them.
#[derive(Debug, Clone)]
pub struct Exposition {
    /// The body's parts, in order.
    pub chunks: Vec<Bytes>,
    /// The `Content-Type` of the (decoded) body.
    pub content_type: &'static str,
    /// Whether every chunk is a gzip member (`Content-Encoding: gzip`).
    pub gzip: bool,
}

impl Exposition {
    /// The whole body in one buffer (tests and benches; the server sends the chunks).
    pub fn concat(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// The cached per-series part of the exposition, made once per change.
#[derive(Debug, Clone)]
pub struct SeriesText {
    /// Prometheus text 0.0.4 (the same bytes in OpenMetrics: the families are gauges) as
    /// one gzip member.
    pub gzip: Bytes,
    /// The same text uncompressed, once a client without gzip asked for it.
    pub text: Option<Bytes>,
}

impl Default for SeriesText {
    fn default() -> Self {
        Self {
            gzip: gzip_member(b"", Compression::default()),
            text: None,
        }
    }
}

/// State shared by the per-series families: their values, their cached text and whether a
/// gauge changed since.
#[derive(Default)]
struct SeriesCache {
    dirty: AtomicBool,
    /// Held while encoding, so one caller encodes at a time.
    encoding: Mutex<()>,
    /// Held only to read or replace the text.
    encoded: Mutex<SeriesText>,
    /// Held while inflating the text for clients without gzip, so one request does it.
    inflating: Mutex<()>,
    /// Every per-series gauge's value.
    rows: Mutex<SeriesRows>,
}

/// Locks `mutex`; a panic while it was held cannot leave the data half-updated (every
/// update is one assignment or one map operation).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const OPENMETRICS_EOF: &[u8] = b"# EOF\n";

/// `# EOF` as a gzip member, compressed once.
fn openmetrics_eof_gzip() -> Bytes {
    static EOF: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    EOF.get_or_init(|| gzip_member(OPENMETRICS_EOF, Compression::default()))
        .clone()
}

/// The data of one gzip member (empty if it is not one, which `gzip_member` never makes).
fn inflate(member: &[u8]) -> Bytes {
    use std::io::Read as _;
    // The trailer's ISIZE is the length mod 2^32: a capacity hint, so the buffer is not
    // grown (and copied) by doubling.
    let size = member
        .len()
        .checked_sub(4)
        .and_then(|at| member.get(at..))
        .and_then(|tail| <[u8; 4]>::try_from(tail).ok())
        .map_or(0, |tail| u32::from_le_bytes(tail) as usize);
    let mut text = Vec::with_capacity(size);
    if flate2::read::GzDecoder::new(member)
        .read_to_end(&mut text)
        .is_err()
    {
        text.clear();
    }
    Bytes::from(text)
}

/// `data` as one complete gzip member.
fn gzip_member(data: &[u8], level: Compression) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 8 + 64), level);
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// Rewrites Prometheus text 0.0.4 from this registry as OpenMetrics 1.0: a counter's
/// family name (in `# HELP`/`# TYPE`) drops its `_total` suffix, which stays on the
/// samples. Everything else (gauges, histograms, escaping, `NaN`/`+Inf`) is written the
/// same way in both formats. The caller appends `# EOF`.
pub(crate) fn to_openmetrics(text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(text);
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let family = match name.strip_suffix("_total") {
                    Some(base) if counters.contains(name) => base,
                    _ => name,
                };
                out.push_str(prefix);
                out.push_str(family);
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// One gauge family of the per-series table, used for every per-series gauge instead of
/// `GaugeVec`. `GaugeVec` (prometheus 0.14, `vec.rs` `hash_label_values`) keys its
/// children by a hash of the label values concatenated with no separator and does not
/// compare the values on a hit, so `("/r/1", "15m")` and `("/r/11", "5m")` share one
/// gauge: one series' forecast would be exported under the other's labels and the
/// other's would vanish. Here a sample is found by the series' whole tuple of label values
/// and the slot of its `horizon` and `component`.
///
/// A family is a range of slots in [`SeriesRows`]: one per value, one per horizon, or one
/// per horizon and component. It encodes its own text (the bytes the prometheus crate's
/// `TextEncoder` writes for a gathered gauge family) straight from the rows.
#[derive(Clone)]
pub(crate) struct GaugeFamily {
    inner: Arc<GaugeFamilyInner>,
}

struct GaugeFamilyInner {
    name: String,
    /// `# HELP` and `# TYPE` lines.
    header: String,
    /// Label names in the order callers pass values: the series labels, then `horizon`
    /// and `component` where the family has them.
    label_names: Vec<String>,
    /// How many of `label_names` are series labels.
    series_labels: usize,
    /// Values of the extra labels (`horizon`, then `component`).
    extras: Vec<&'static [&'static str]>,
    /// The family's first slot in a row; it has the product of the extras' lengths.
    first_slot: usize,
    /// The labels in name order, the order of the text and of the samples (sorted by
    /// their values in this order, as a registry gathers).
    order: Vec<LabelSource>,
    /// Per label in name order, the text before its value: `{name="` or `,name="`.
    label_prefixes: Vec<String>,
    cache: Arc<SeriesCache>,
}

impl GaugeFamilyInner {
    /// The value of the label at `source` of a sample: its series' label values and its
    /// slot within the family.
    fn label<'a>(&self, source: LabelSource, series: &'a [Box<str>], k: usize) -> &'a str {
        match source {
            LabelSource::Series(i) => &series[i],
            LabelSource::Extra(e) => {
                // Slots run over the last extra fastest.
                let stride: usize = self.extras[e + 1..].iter().map(|v| v.len()).product();
                let values = self.extras[e];
                values[(k / stride) % values.len()]
            }
        }
    }
}

/// Where a label's value comes from.
#[derive(Clone, Copy)]
enum LabelSource {
    /// The series' label values, at this position.
    Series(usize),
    /// An extra label (`extras[i]`), by the sample's slot.
    Extra(usize),
}

/// The values of every per-series gauge, one row per series: at 10,000 series 320,000
/// samples, held as 10,000 label tuples and rows of numbers rather than a label tuple per
/// sample.
#[derive(Default)]
struct SeriesRows {
    /// Slots per row: every family's, reserved as the families are made.
    slots: usize,
    rows: BTreeMap<Box<[Box<str>]>, Row>,
    /// The key of the series last set or removed: publishing sets a series' gauges one
    /// after another, so its key is allocated once, not once per gauge.
    last: Box<[Box<str>]>,
}

impl SeriesRows {
    /// Makes `last` the key of `series`.
    fn point_at(&mut self, series: &[&str]) {
        let same = self.last.len() == series.len()
            && self.last.iter().zip(series).all(|(a, b)| **a == **b);
        if !same {
            self.last = series.iter().map(|v| Box::from(*v)).collect();
        }
    }
}

/// One series' gauge values; a slot without its `present` bit is absent.
struct Row {
    values: Box<[f64]>,
    present: u64,
}

impl GaugeFamily {
    fn new(
        name: String,
        help: &str,
        series_labels: &[&str],
        extras: &[(&str, &'static [&'static str])],
        cache: Arc<SeriesCache>,
    ) -> Result<Self, prometheus::Error> {
        let label_names: Vec<String> = series_labels
            .iter()
            .copied()
            .chain(extras.iter().map(|(name, _)| *name))
            .map(str::to_string)
            .collect();
        // Validates the metric and label names as the registry did.
        prometheus::core::Desc::new(
            name.clone(),
            help.to_string(),
            label_names.clone(),
            HashMap::new(),
        )?;
        let mut by_name: Vec<usize> = (0..label_names.len()).collect();
        by_name.sort_by(|&a, &b| label_names[a].cmp(&label_names[b]));
        let order = by_name
            .iter()
            .map(|&i| match i.checked_sub(series_labels.len()) {
                None => LabelSource::Series(i),
                Some(e) => LabelSource::Extra(e),
            })
            .collect();
        let label_prefixes = by_name
            .iter()
            .enumerate()
            .map(|(j, &i)| format!("{}{}=\"", if j == 0 { '{' } else { ',' }, label_names[i]))
            .collect();
        let mut header = String::new();
        if !help.is_empty() {
            header = format!("# HELP {name} {}\n", escape(help, false));
        }
        header.push_str(&format!("# TYPE {name} gauge\n"));
        let extras: Vec<&'static [&'static str]> = extras.iter().map(|(_, v)| *v).collect();
        let slots: usize = extras.iter().map(|v| v.len()).product();
        let first_slot = {
            let mut rows = lock(&cache.rows);
            let first = rows.slots;
            rows.slots += slots;
            if rows.slots > 64 {
                return Err(prometheus::Error::Msg(
                    "more than 64 per-series gauge slots".into(),
                ));
            }
            first
        };
        Ok(Self {
            inner: Arc::new(GaugeFamilyInner {
                name,
                header,
                label_names,
                series_labels: series_labels.len(),
                extras,
                first_slot,
                order,
                label_prefixes,
                cache,
            }),
        })
    }

    /// Slots of this family in a row.
    fn slots(&self) -> usize {
        self.inner.extras.iter().map(|v| v.len()).product()
    }

    /// The slot of a sample with these label values (in the family's label order), or
    /// `None` for a wrong number of values or an extra label value it does not have
    /// (programming errors, ignored).
    fn slot(&self, labels: &[&str]) -> Option<usize> {
        let inner = &self.inner;
        if labels.len() != inner.label_names.len() {
            return None;
        }
        let mut slot = 0;
        for (values, given) in inner.extras.iter().zip(&labels[inner.series_labels..]) {
            slot = slot * values.len() + values.iter().position(|v| v == given)?;
        }
        Some(inner.first_slot + slot)
    }

    /// Sets the gauge with these label values (in the family's label order).
    pub(crate) fn set(&self, labels: &[&str], value: f64) {
        let Some(slot) = self.slot(labels) else {
            return;
        };
        let mut table = lock(&self.inner.cache.rows);
        table.point_at(&labels[..self.inner.series_labels]);
        let SeriesRows { slots, rows, last } = &mut *table;
        if !rows.contains_key(&last[..]) {
            rows.insert(
                last.clone(),
                Row {
                    values: vec![0.0; *slots].into_boxed_slice(),
                    present: 0,
                },
            );
        }
        let Some(row) = rows.get_mut(&last[..]) else {
            return;
        };
        let bit = 1u64 << slot;
        let changed = row.present & bit == 0 || row.values[slot].to_bits() != value.to_bits();
        row.values[slot] = value;
        row.present |= bit;
        if changed {
            self.inner.cache.dirty.store(true, Ordering::Release);
        }
    }

    /// Removes the gauge with these label values, if present; a series whose last gauge
    /// goes is forgotten.
    pub(crate) fn remove(&self, labels: &[&str]) {
        let Some(slot) = self.slot(labels) else {
            return;
        };
        let mut table = lock(&self.inner.cache.rows);
        table.point_at(&labels[..self.inner.series_labels]);
        let SeriesRows { rows, last, .. } = &mut *table;
        let Some(row) = rows.get_mut(&last[..]) else {
            return;
        };
        let bit = 1u64 << slot;
        if row.present & bit == 0 {
            return;
        }
        row.present &= !bit;
        if row.present == 0 {
            rows.remove(&last[..]);
        }
        self.inner.cache.dirty.store(true, Ordering::Release);
    }

    /// Writes the family in the Prometheus text format 0.0.4, byte for byte what the
    /// prometheus crate's `TextEncoder` writes for it after a registry's `gather` (nothing
    /// when the family is empty). Many small writes: give it a buffered writer.
    fn encode_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let inner = &self.inner;
        let table = lock(&inner.cache.rows);
        let mut samples: Vec<(&[Box<str>], usize, f64)> = Vec::new();
        for (series, row) in &table.rows {
            for k in 0..self.slots() {
                let slot = inner.first_slot + k;
                if row.present & (1u64 << slot) != 0 {
                    samples.push((series, k, row.values[slot]));
                }
            }
        }
        if samples.is_empty() {
            return Ok(());
        }
        let label = |source, series, k| inner.label(source, series, k);
        samples.sort_by(|a, b| {
            inner
                .order
                .iter()
                .map(|&source| label(source, a.0, a.1).cmp(label(source, b.0, b.1)))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        out.write_all(inner.header.as_bytes())?;
        for (series, k, value) in samples {
            out.write_all(inner.name.as_bytes())?;
            for (prefix, &source) in inner.label_prefixes.iter().zip(&inner.order) {
                out.write_all(prefix.as_bytes())?;
                out.write_all(escape(label(source, series, k), true).as_bytes())?;
                out.write_all(b"\"")?;
            }
            if !inner.order.is_empty() {
                out.write_all(b"}")?;
            }
            // `f64`'s `Display`, as the crate's `value.to_string()`.
            writeln!(out, " {value}")?;
        }
        Ok(())
    }
}

/// Escapes `\\` and newlines (and `"` in label values) as the text format requires.
fn escape(text: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !text.contains(special) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '"' if quote => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::band::Forecast;
    use crate::serve::metrics::{Metrics, SeriesStatus};
    use prometheus::{Encoder as _, Opts, Registry, TextEncoder};

    fn with<'a>(series: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        series.iter().chain(extra).copied().collect()
    }

    /// The direct encoding of the per-series families is byte for byte what the
    /// prometheus crate wrote for the same gauges through a registry and `TextEncoder`
    /// (here its own `GaugeVec`, fed the same values): family order, sample order (label
    /// values in label-name order, with `by` labels that sort before and after the
    /// others), escaping, number formatting, empty families left out.
    #[test]
    fn series_text_is_byte_identical_to_the_prometheus_encoder() {
        let by = ["zone".to_string(), "app".to_string()];
        let m = Metrics::new("flowcast", &by).expect("metrics");
        let registry = Registry::new();
        let reference: Vec<prometheus::GaugeVec> = m
            .table
            .families
            .iter()
            .map(|family| {
                let inner = &family.inner;
                let help = inner
                    .header
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("# HELP {} ", inner.name)))
                    .expect("help");
                let names: Vec<&str> = inner.label_names.iter().map(String::as_str).collect();
                let vec = prometheus::GaugeVec::new(Opts::new(inner.name.clone(), help), &names)
                    .expect("gauge vec");
                registry.register(Box::new(vec.clone())).expect("register");
                vec
            })
            .collect();
        let zones = [
            "eu",
            "us-\"east\"",
            "a\\b",
            "line\nbreak",
            "ünï",
            "/r/1",
            "/r/11",
            "",
        ];
        let values = [
            0.1,
            1.0,
            2.5,
            -0.0,
            1e21,
            1.5e-7,
            123_456_789.125,
            1.0 / 3.0,
        ];
        let mut samples = 0;
        for (f, family) in m.table.families.iter().enumerate() {
            if f % 5 == 4 {
                continue; // some families stay empty
            }
            // Every combination of the family's extra label values (horizon, component,
            // expert), the last fastest.
            let extra: Vec<Vec<&str>> =
                family
                    .inner
                    .extras
                    .iter()
                    .fold(vec![vec![]], |combos, values| {
                        combos
                            .iter()
                            .flat_map(|c| {
                                values.iter().map(move |v| {
                                    let mut c = c.clone();
                                    c.push(*v);
                                    c
                                })
                            })
                            .collect()
                    });
            for (z, zone) in zones.iter().enumerate() {
                for app in ["web", "api"] {
                    for (e, extra) in extra.iter().enumerate() {
                        let labels = with(&["requests", zone, app], extra);
                        let value = values[(f + z + e) % values.len()] * (z + 1) as f64;
                        family.set(&labels, value);
                        reference[f].with_label_values(&labels).set(value);
                        samples += 1;
                        if (f + z + e) % 7 == 0 {
                            family.remove(&labels);
                            reference[f].remove_label_values(&labels).expect("remove");
                            samples -= 1;
                        }
                    }
                }
            }
        }
        let mut expected = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut expected)
            .expect("encodes");
        let got = m.table.plain(m.refresh_series());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected)
        );
        // No two label tuples shared a GaugeVec child (its hash collision), so the
        // reference holds every sample.
        let lines = got
            .split(|b| *b == b'\n')
            .filter(|l| l.first().is_some_and(|b| *b != b'#'))
            .count();
        assert_eq!(lines, samples);
        assert!(samples > 300, "{samples}");
    }

    /// Only the gzip member is made per change; the plain text is inflated for the first
    /// client without gzip, shared by the next ones, and dropped at the next change.
    #[test]
    fn plain_series_text_is_made_on_demand_and_kept_until_a_change() {
        let m = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
        m.series.ready.set(&["api", "/a"], 1.0);
        assert!(
            m.refresh_series().text.is_none(),
            "not made for gzip clients"
        );
        let first = m.exposition(ExpositionFormat::Text, false);
        let again = m.exposition(ExpositionFormat::OpenMetrics, false);
        assert_eq!(first.chunks[1].as_ptr(), again.chunks[1].as_ptr(), "shared");
        assert_eq!(
            &first.chunks[1][..],
            b"# HELP flowcast_ready 1 when the series has enough recent history and its forecasts are exported, else 0.\n\
              # TYPE flowcast_ready gauge\n\
              flowcast_ready{route=\"/a\",series=\"api\"} 1\n"
        );
        assert!(m.refresh_series().text.is_some(), "kept");
        m.series.ready.set(&["api", "/a"], 0.0);
        assert!(m.refresh_series().text.is_none(), "dropped at the change");
        let text = m.encode_text();
        assert!(String::from_utf8_lossy(&text).ends_with("series=\"api\"} 0\n"));
    }

    /// A series is one row for all its gauges, forgotten with its last gauge.
    #[test]
    fn a_series_is_one_row_forgotten_with_its_last_gauge() {
        let m = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
        let forecast = Forecast {
            origin: 0,
            horizons: std::array::from_fn(|_| crate::forecast::band::Interval {
                mean: 2.0,
                lower: 1.0,
                upper: 3.0,
                stddev: 0.5,
                components: [0.1, 0.2, 0.3],
            }),
        };
        for route in ["/a", "/b"] {
            m.publish_forecast(&["api", route], &forecast);
            m.publish_status(
                &["api", route],
                &SeriesStatus {
                    ready: true,
                    ..SeriesStatus::default()
                },
            );
        }
        let rows = |m: &Metrics| -> Vec<String> {
            lock(&m.table.cache.rows)
                .rows
                .keys()
                .map(|k| k.join("/"))
                .collect()
        };
        assert_eq!(rows(&m), ["api//a", "api//b"]);
        m.clear_forecast(&["api", "/b"]);
        assert_eq!(rows(&m), ["api//a", "api//b"], "/b is still ready=1");
        m.series.ready.remove(&["api", "/b"]);
        m.series.history.remove(&["api", "/b"]);
        assert_eq!(
            rows(&m),
            ["api//a", "api//b"],
            "/b still holds its step history"
        );
        m.series.step_history.remove(&["api", "/b"]);
        assert_eq!(rows(&m), ["api//a"]);
        let text = String::from_utf8(m.encode_text()).expect("utf-8");
        assert!(text.contains("route=\"/a\"") && !text.contains("route=\"/b\""));
        // Wrong label counts and unknown horizons are ignored.
        m.series.upper.set(&["api", "/c"], 1.0);
        m.series.upper.set(&["api", "/c", "20m"], 1.0);
        assert_eq!(rows(&m), ["api//a"]);
    }
}
