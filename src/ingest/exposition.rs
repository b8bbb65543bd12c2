//! Prometheus text exposition (0.0.4) and OpenMetrics 1.0 text parsing.
//!
//! Owns: turning a scraped body (`&[u8]`, possibly not UTF-8) into [`Sample`]s
//! that borrow from it, and the `Accept` / `Content-Type` negotiation of the two
//! formats ([`Format`]). Selecting samples is [`crate::ingest::selector`]'s job.
//!
//! Must not: do I/O, read a clock, record metrics or log, or panic on any input.
//! Failures are returned as [`ParseError`], with a
//! bounded [`ParseError::reason`] for the caller's metrics.
//!
//! The parser scans bytes by hand (no regex) and does not allocate per sample:
//! names and label values borrow from the body, and a sample's [`Labels`] keep
//! the raw label-set text and decode it on lookup. Only quoted names and label
//! values that contain escapes are copied.
//!
//! Where the formats leave room, the parser follows what Prometheus accepts
//! rather than rejecting a whole scrape: comments other than `# EOF` are
//! skipped without being decoded, blank lines and a trailing `\r` are ignored,
//! unknown escapes in label values are kept verbatim, exemplars and quoted
//! UTF-8 names are accepted in both formats.

use std::borrow::Cow;
use std::fmt;

/// Wire format of a scraped body, chosen from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4 (`text/plain; version=0.0.4`):
    /// timestamps are integer milliseconds, `# EOF` is an ordinary comment.
    Text004,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`): the body must end
    /// with `# EOF`, timestamps are (possibly fractional) seconds.
    OpenMetrics,
}

impl Format {
    /// Value for the scrape request's `Accept` header: OpenMetrics 1.0.0 first,
    /// then text 0.0.4, then anything (parsed as text 0.0.4).
    ///
    /// `escaping=allow-utf-8` tells client libraries that quoted UTF-8 metric
    /// names are understood, so they need not mangle them into underscores.
    pub const ACCEPT: &'static str =
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8,\
         text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    /// Picks the format from a response's `Content-Type` header value.
    ///
    /// `application/openmetrics-text` (any version, any parameters, any case)
    /// is OpenMetrics; everything else, including a missing header, is text
    /// 0.0.4, as Prometheus does.
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        let Some(value) = content_type else {
            return Format::Text004;
        };
        let media_type = value.split_once(';').map_or(value, |(media, _)| media);
        if media_type
            .trim()
            .eq_ignore_ascii_case("application/openmetrics-text")
        {
            Format::OpenMetrics
        } else {
            Format::Text004
        }
    }
}

/// One sample line of an exposition, borrowing from the scraped body.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Metric name exactly as exposed, e.g. `http_requests_total` or
    /// `http_requests_created`; a quoted UTF-8 name is unquoted and unescaped
    /// (only then can it be owned).
    pub name: Cow<'a, str>,
    /// The sample's labels, in exposition order, without the metric name.
    pub labels: Labels<'a>,
    /// Sample value; `NaN` and `±Inf` are kept as such.
    pub value: f64,
    /// Timestamp in milliseconds since the Unix epoch, if the line has one
    /// (OpenMetrics seconds are converted and rounded to milliseconds).
    pub timestamp_ms: Option<i64>,
}

/// Label pairs of one sample.
///
/// Labels from [`parse`] keep the validated raw label-set text and decode it
/// lazily, so a sample costs no allocation; build one by hand with
/// [`FromIterator`] (e.g. in tests or for a selector check).
#[derive(Clone, Default)]
pub struct Labels<'a> {
    repr: LabelsRepr<'a>,
}

#[derive(Clone)]
enum LabelsRepr<'a> {
    /// The text between `{` and `}`, already validated by the parser; it may
    /// still hold a quoted metric name term, which lookups skip.
    Raw {
        text: &'a str,
        len: usize,
    },
    Pairs(Vec<(Cow<'a, str>, Cow<'a, str>)>),
}

impl Default for LabelsRepr<'_> {
    fn default() -> Self {
        LabelsRepr::Pairs(Vec::new())
    }
}

impl<'a> Labels<'a> {
    /// Number of label pairs.
    pub fn len(&self) -> usize {
        match &self.repr {
            LabelsRepr::Raw { len, .. } => *len,
            LabelsRepr::Pairs(pairs) => pairs.len(),
        }
    }

    /// Whether there are no label pairs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of label `name`, unescaped; `None` when the label is absent.
    /// Only a value that contains escapes is allocated.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        match &self.repr {
            LabelsRepr::Raw { text, .. } => {
                let mut pos = 0;
                while let Some(pair) = next_raw_pair(text, &mut pos) {
                    if pair.name == name {
                        return Some(unescape(pair.value, pair.value_escaped));
                    }
                }
                None
            }
            LabelsRepr::Pairs(pairs) => pairs
                .iter()
                .find(|(label, _)| label == name)
                .map(|(_, value)| value.clone()),
        }
    }

    /// The label pairs in exposition order, names and values unescaped.
    pub fn iter(&self) -> LabelsIter<'a, '_> {
        let inner = match &self.repr {
            LabelsRepr::Raw { text, .. } => IterRepr::Raw { text, pos: 0 },
            LabelsRepr::Pairs(pairs) => IterRepr::Pairs(pairs.iter()),
        };
        LabelsIter { inner }
    }

    /// The validated raw label-set text of labels from [`parse`], for matchers that scan
    /// it in one pass ([`next_raw_pair`]); `None` for labels built by hand.
    pub(crate) fn raw_text(&self) -> Option<&'a str> {
        match &self.repr {
            LabelsRepr::Raw { text, .. } => Some(text),
            LabelsRepr::Pairs(_) => None,
        }
    }

    fn raw(text: &'a str, len: usize) -> Self {
        Labels {
            repr: LabelsRepr::Raw { text, len },
        }
    }
}

impl<'a, N, V> FromIterator<(N, V)> for Labels<'a>
where
    N: Into<Cow<'a, str>>,
    V: Into<Cow<'a, str>>,
{
    /// Builds labels from pairs as given; names are not checked for
    /// duplicates (lookups then see the first).
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        Labels {
            repr: LabelsRepr::Pairs(
                pairs
                    .into_iter()
                    .map(|(name, value)| (name.into(), value.into()))
                    .collect(),
            ),
        }
    }
}

impl PartialEq for Labels<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Labels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a, 'l> IntoIterator for &'l Labels<'a> {
    type Item = (Cow<'a, str>, Cow<'a, str>);
    type IntoIter = LabelsIter<'a, 'l>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over a sample's `(name, value)` label pairs; see [`Labels::iter`].
pub struct LabelsIter<'a, 'l> {
    inner: IterRepr<'a, 'l>,
}

enum IterRepr<'a, 'l> {
    Raw { text: &'a str, pos: usize },
    Pairs(std::slice::Iter<'l, (Cow<'a, str>, Cow<'a, str>)>),
}

impl<'a> Iterator for LabelsIter<'a, '_> {
    type Item = (Cow<'a, str>, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            IterRepr::Raw { text, pos } => next_raw_pair(text, pos)
                .map(|pair| (pair.name, unescape(pair.value, pair.value_escaped))),
            IterRepr::Pairs(pairs) => pairs.next().cloned(),
        }
    }
}

/// Counts from one successful [`parse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Lines read, including comments and blank lines.
    pub lines: usize,
    /// Samples delivered to the callback.
    pub samples: usize,
}

/// Why a body could not be parsed; every variant names its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A sample line is not valid UTF-8.
    #[error("line {line}: not valid UTF-8")]
    InvalidUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// The line does not follow the format's grammar.
    #[error("line {line}: syntax error: expected {expected}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What the parser expected where it stopped.
        expected: &'static str,
    },
    /// The sample value (or an exemplar value) is not a number.
    #[error("line {line}: invalid sample value")]
    BadValue {
        /// 1-based line number.
        line: usize,
    },
    /// The timestamp is not a number of the format's kind, or out of range.
    #[error("line {line}: invalid timestamp")]
    BadTimestamp {
        /// 1-based line number.
        line: usize,
    },
    /// A label name occurs twice in one label set.
    #[error("line {line}: duplicate label name {label:?}")]
    DuplicateLabel {
        /// 1-based line number.
        line: usize,
        /// The repeated name, cut to 64 characters.
        label: String,
    },
    /// An OpenMetrics body ended without `# EOF`.
    #[error("line {line}: OpenMetrics body does not end with `# EOF`")]
    MissingEof {
        /// 1-based number of the line where `# EOF` was expected (one past the last).
        line: usize,
    },
    /// An OpenMetrics body has bytes after its `# EOF` line.
    #[error("line {line}: content after `# EOF`")]
    ContentAfterEof {
        /// 1-based number of the first line after `# EOF`.
        line: usize,
    },
}

impl ParseError {
    /// Short, bounded label for metrics, e.g. `scrape_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::InvalidUtf8 { .. } => "invalid_utf8",
            ParseError::Syntax { .. } => "syntax",
            ParseError::BadValue { .. } => "bad_value",
            ParseError::BadTimestamp { .. } => "bad_timestamp",
            ParseError::DuplicateLabel { .. } => "duplicate_label",
            ParseError::MissingEof { .. } => "missing_eof",
            ParseError::ContentAfterEof { .. } => "content_after_eof",
        }
    }

    /// The 1-based line number the error refers to.
    pub fn line(&self) -> usize {
        match self {
            ParseError::InvalidUtf8 { line }
            | ParseError::Syntax { line, .. }
            | ParseError::BadValue { line }
            | ParseError::BadTimestamp { line }
            | ParseError::DuplicateLabel { line, .. }
            | ParseError::MissingEof { line }
            | ParseError::ContentAfterEof { line } => *line,
        }
    }
}

/// Parses a scraped body, calling `on_sample` for every sample line in order.
///
/// Samples before a failing line have already been delivered when an error is
/// returned (for OpenMetrics, a missing `# EOF` is only known at the end), so a
/// caller that needs all-or-nothing must buffer what it keeps and drop it on
/// `Err`.
pub fn parse<'a>(
    body: &'a [u8],
    format: Format,
    mut on_sample: impl FnMut(Sample<'a>),
) -> Result<ParseStats, ParseError> {
    let mut stats = ParseStats::default();
    // Reused across lines for the duplicate-label check, so it allocates only
    // while growing to the widest label set.
    let mut names: Vec<Cow<'a, str>> = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (raw, next) = match find_byte(rest, b'\n') {
            Some(i) => {
                let (line, tail) = rest.split_at(i);
                (line, tail.get(1..).unwrap_or_default())
            }
            None => (rest, &[][..]),
        };
        rest = next;
        stats.lines += 1;
        let line = stats.lines;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match raw.iter().copied().find(|&b| !is_blank(b)) {
            None => continue,
            Some(b'#') => {
                if format == Format::OpenMetrics && is_eof_line(raw) {
                    if !rest.is_empty() {
                        return Err(ParseError::ContentAfterEof { line: line + 1 });
                    }
                    return Ok(stats);
                }
                continue;
            }
            Some(_) => {}
        }
        let text = std::str::from_utf8(raw).map_err(|_| ParseError::InvalidUtf8 { line })?;
        let sample = LineScanner::new(text, line).sample(format, &mut names)?;
        stats.samples += 1;
        on_sample(sample);
    }
    match format {
        Format::Text004 => Ok(stats),
        Format::OpenMetrics => Err(ParseError::MissingEof {
            line: stats.lines + 1,
        }),
    }
}

fn is_eof_line(raw: &[u8]) -> bool {
    let mut end = raw.len();
    while end > 0 && raw.get(end - 1).is_some_and(|&b| is_blank(b)) {
        end -= 1;
    }
    raw.get(..end) == Some(b"# EOF")
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

const METRIC_START: u8 = 1;
const METRIC_CHAR: u8 = 2;
const LABEL_START: u8 = 4;
const LABEL_CHAR: u8 = 8;

/// Character classes of bare names, one table lookup per byte:
/// metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`.
const NAME_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let alpha = b.is_ascii_alphabetic() || b == b'_';
        let digit = b.is_ascii_digit();
        let mut class = 0;
        if alpha || b == b':' {
            class |= METRIC_START | METRIC_CHAR;
        }
        if digit {
            class |= METRIC_CHAR | LABEL_CHAR;
        }
        if alpha {
            class |= LABEL_START | LABEL_CHAR;
        }
        table[i] = class;
        i += 1;
    }
    table
};

/// Whether `text` is a name of the class `start` `rest*`, written without quotes.
pub(crate) fn is_bare(text: &str, start: impl Fn(u8) -> bool, rest: impl Fn(u8) -> bool) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(start) && bytes.all(rest)
}

pub(crate) fn is_metric_name_start(b: u8) -> bool {
    NAME_CLASS[usize::from(b)] & METRIC_START != 0
}

pub(crate) fn is_metric_name_char(b: u8) -> bool {
    NAME_CLASS[usize::from(b)] & METRIC_CHAR != 0
}

pub(crate) fn is_label_name_start(b: u8) -> bool {
    NAME_CLASS[usize::from(b)] & LABEL_START != 0
}

pub(crate) fn is_label_name_char(b: u8) -> bool {
    NAME_CLASS[usize::from(b)] & LABEL_CHAR != 0
}

const SWAR_LO: u64 = 0x0101_0101_0101_0101;
const SWAR_HI: u64 = 0x8080_8080_8080_8080;

/// Bytes of `word` equal to `needle` get their high bit set. Bits above a true
/// match may be set falsely, so only the lowest flagged byte is meaningful.
fn swar_matches(word: u64, needle: u8) -> u64 {
    let x = word ^ (SWAR_LO * u64::from(needle));
    x.wrapping_sub(SWAR_LO) & !x & SWAR_HI
}

/// Index of the first `a` or `b` in `haystack`, eight bytes at a time.
fn find_either(haystack: &[u8], a: u8, b: u8) -> Option<usize> {
    let mut offset = 0;
    while let Some(chunk) = haystack.get(offset..offset + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let found = swar_matches(word, a) | swar_matches(word, b);
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    haystack
        .get(offset..)?
        .iter()
        .position(|&x| x == a || x == b)
        .map(|i| offset + i)
}

fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    find_either(haystack, needle, needle)
}

/// Scans a quoted string whose opening `"` is at `*pos`; on success `*pos` is
/// just past the closing quote. Returns the raw (still escaped) contents and
/// whether they contain a backslash.
fn scan_quoted<'a>(text: &'a str, pos: &mut usize) -> Option<(&'a str, bool)> {
    let bytes = text.as_bytes();
    let start = *pos + 1;
    let mut i = start;
    let mut escaped = false;
    loop {
        i += find_either(bytes.get(i..)?, b'"', b'\\')?;
        if bytes.get(i) == Some(&b'"') {
            let raw = text.get(start..i)?;
            *pos = i + 1;
            return Some((raw, escaped));
        }
        // A backslash: skip it and the escaped byte. One byte is enough, as
        // UTF-8 continuation bytes are never `"` or `\`.
        escaped = true;
        i += 2;
    }
}

/// Scans a bare label name (`[a-zA-Z_][a-zA-Z0-9_]*`) from `*pos`: the one label-name
/// scanner of expositions and selectors. `None` (and `*pos` left) when there is none.
pub(crate) fn scan_label_name<'a>(text: &'a str, pos: &mut usize) -> Option<&'a str> {
    let bare = scan_bare(text, pos, is_label_name_start, is_label_name_char);
    (!bare.is_empty()).then_some(bare)
}

/// Scans `[start][char]*` from `*pos`; returns "" (and leaves `*pos`) when the
/// first byte does not qualify.
pub(crate) fn scan_bare<'a>(
    text: &'a str,
    pos: &mut usize,
    start: impl Fn(u8) -> bool,
    rest: impl Fn(u8) -> bool,
) -> &'a str {
    let bytes = text.as_bytes();
    let from = *pos;
    if !bytes.get(from).is_some_and(|&b| start(b)) {
        return "";
    }
    let mut i = from + 1;
    while bytes.get(i).is_some_and(|&b| rest(b)) {
        i += 1;
    }
    *pos = i;
    text.get(from..i).unwrap_or_default()
}

/// Undoes the exposition escapes `\\`, `\"` and `\n`; other escapes are kept
/// verbatim, as Prometheus does.
pub(crate) fn unescape(raw: &str, escaped: bool) -> Cow<'_, str> {
    if !escaped {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

pub(crate) struct RawPair<'a> {
    pub(crate) name: Cow<'a, str>,
    pub(crate) value: &'a str,
    pub(crate) value_escaped: bool,
}

/// Next `name="value"` pair of a validated raw label set, skipping separators
/// and a quoted metric-name term. Stops (returns `None`) on anything
/// unexpected rather than panicking.
pub(crate) fn next_raw_pair<'a>(text: &'a str, pos: &mut usize) -> Option<RawPair<'a>> {
    let bytes = text.as_bytes();
    loop {
        while bytes.get(*pos).is_some_and(|&b| is_blank(b) || b == b',') {
            *pos += 1;
        }
        let name = if *bytes.get(*pos)? == b'"' {
            let (raw, escaped) = scan_quoted(text, pos)?;
            unescape(raw, escaped)
        } else {
            Cow::Borrowed(scan_label_name(text, pos)?)
        };
        while bytes.get(*pos).is_some_and(|&b| is_blank(b)) {
            *pos += 1;
        }
        if bytes.get(*pos) == Some(&b'=') {
            *pos += 1;
            while bytes.get(*pos).is_some_and(|&b| is_blank(b)) {
                *pos += 1;
            }
            if bytes.get(*pos) != Some(&b'"') {
                return None;
            }
            let (value, value_escaped) = scan_quoted(text, pos)?;
            return Some(RawPair {
                name,
                value,
                value_escaped,
            });
        }
        // A term without `=` is the quoted metric name: skip it.
    }
}

/// Cursor over one sample line.
struct LineScanner<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> LineScanner<'a> {
    fn new(text: &'a str, line: usize) -> Self {
        LineScanner { text, pos: 0, line }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Skips spaces and tabs; returns whether there were any.
    fn skip_blanks(&mut self) -> bool {
        let from = self.pos;
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
        self.pos > from
    }

    /// The run of non-blank bytes at the cursor.
    fn token(&mut self) -> &'a str {
        let from = self.pos;
        while self.peek().is_some_and(|b| !is_blank(b)) {
            self.pos += 1;
        }
        self.text.get(from..self.pos).unwrap_or_default()
    }

    fn syntax(&self, expected: &'static str) -> ParseError {
        ParseError::Syntax {
            line: self.line,
            expected,
        }
    }

    fn quoted(&mut self) -> Result<(&'a str, bool), ParseError> {
        scan_quoted(self.text, &mut self.pos).ok_or_else(|| self.syntax("closing '\"'"))
    }

    fn sample(
        mut self,
        format: Format,
        names: &mut Vec<Cow<'a, str>>,
    ) -> Result<Sample<'a>, ParseError> {
        self.skip_blanks();
        let mut name = None;
        if self.peek() != Some(b'{') {
            let bare = scan_bare(
                self.text,
                &mut self.pos,
                is_metric_name_start,
                is_metric_name_char,
            );
            if bare.is_empty() {
                return Err(self.syntax("metric name"));
            }
            name = Some(Cow::Borrowed(bare));
        }
        let blank_after_name = self.skip_blanks();
        let mut labels = Labels::default();
        if self.peek() == Some(b'{') {
            let (set, quoted_name) = self.label_set(names, true)?;
            labels = set;
            if let Some(quoted_name) = quoted_name {
                if name.is_some() {
                    return Err(self.syntax("only one metric name"));
                }
                name = Some(quoted_name);
            }
            self.skip_blanks();
        } else if !blank_after_name && self.peek().is_some() {
            return Err(self.syntax("'{' or blank after metric name"));
        }
        let Some(name) = name else {
            return Err(self.syntax("metric name"));
        };

        let value_text = self.token();
        if value_text.is_empty() {
            return Err(self.syntax("sample value"));
        }
        let value = parse_float(value_text).ok_or(ParseError::BadValue { line: self.line })?;

        self.skip_blanks();
        let mut timestamp_ms = None;
        if self.peek().is_some_and(|b| b != b'#') {
            let ts = self.token();
            timestamp_ms = Some(
                parse_timestamp(ts, format).ok_or(ParseError::BadTimestamp { line: self.line })?,
            );
            self.skip_blanks();
        }
        match self.peek() {
            None => {}
            Some(b'#') => self.exemplar(names)?,
            Some(_) => return Err(self.syntax("end of line after timestamp")),
        }
        Ok(Sample {
            name,
            labels,
            value,
            timestamp_ms,
        })
    }

    /// Validates `{...}` at the cursor. Returns the labels and, when
    /// `allow_name`, a quoted metric-name term found among them.
    fn label_set(
        &mut self,
        names: &mut Vec<Cow<'a, str>>,
        allow_name: bool,
    ) -> Result<(Labels<'a>, Option<Cow<'a, str>>), ParseError> {
        self.pos += 1; // '{'
        let start = self.pos;
        names.clear();
        let mut metric_name = None;
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Err(self.syntax("'}' to close the label set")),
                Some(b'}') => break,
                Some(_) => {}
            }
            let quoted = self.peek() == Some(b'"');
            let term = if quoted {
                let (raw, escaped) = self.quoted()?;
                unescape(raw, escaped)
            } else {
                match scan_label_name(self.text, &mut self.pos) {
                    Some(name) => Cow::Borrowed(name),
                    None => return Err(self.syntax("label name")),
                }
            };
            self.skip_blanks();
            match self.peek() {
                Some(b'=') => {
                    self.pos += 1;
                    self.skip_blanks();
                    if self.peek() != Some(b'"') {
                        return Err(self.syntax("'\"' to open the label value"));
                    }
                    self.quoted()?;
                    if term.is_empty() {
                        return Err(self.syntax("non-empty label name"));
                    }
                    names.push(term);
                }
                Some(b',' | b'}') if quoted && allow_name => {
                    if metric_name.is_some() {
                        return Err(self.syntax("only one metric name"));
                    }
                    if term.is_empty() {
                        return Err(self.syntax("non-empty metric name"));
                    }
                    metric_name = Some(term);
                }
                _ => return Err(self.syntax("'=' after label name")),
            }
            self.skip_blanks();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                None => return Err(self.syntax("'}' to close the label set")),
                Some(_) => return Err(self.syntax("',' or '}' after label")),
            }
        }
        let end = self.pos;
        self.pos += 1; // '}'
        if let Some(duplicate) = find_duplicate(names) {
            return Err(ParseError::DuplicateLabel {
                line: self.line,
                label: duplicate.chars().take(64).collect(),
            });
        }
        let text = self
            .text
            .get(start..end)
            .ok_or_else(|| self.syntax("label set"))?;
        Ok((Labels::raw(text, names.len()), metric_name))
    }

    /// Validates and discards an exemplar ` # {labels} value [timestamp]`.
    fn exemplar(&mut self, names: &mut Vec<Cow<'a, str>>) -> Result<(), ParseError> {
        self.pos += 1; // '#'
        self.skip_blanks();
        if self.peek() != Some(b'{') {
            return Err(self.syntax("'{' to open the exemplar labels"));
        }
        self.label_set(names, false)?;
        self.skip_blanks();
        let value = self.token();
        if value.is_empty() {
            return Err(self.syntax("exemplar value"));
        }
        parse_float(value).ok_or(ParseError::BadValue { line: self.line })?;
        self.skip_blanks();
        if self.peek().is_some() {
            let ts = self.token();
            parse_timestamp(ts, Format::OpenMetrics)
                .ok_or(ParseError::BadTimestamp { line: self.line })?;
            self.skip_blanks();
        }
        if self.peek().is_some() {
            return Err(self.syntax("end of line after exemplar"));
        }
        Ok(())
    }
}

/// Finds a repeated name: pairwise for the usual handful, by sorting beyond.
fn find_duplicate<'n>(names: &'n mut [Cow<'_, str>]) -> Option<&'n str> {
    const PAIRWISE_MAX: usize = 16;
    if names.len() <= PAIRWISE_MAX {
        for (i, name) in names.iter().enumerate() {
            if names.iter().skip(i + 1).any(|other| other == name) {
                return Some(name);
            }
        }
        return None;
    }
    names.sort_unstable();
    names.windows(2).find_map(|pair| match pair {
        [a, b] if a == b => Some(&**a),
        _ => None,
    })
}

/// Go `ParseFloat`-compatible enough: decimal, exponent, `NaN`, `Inf`,
/// `+Inf`, `-Inf` (any case).
fn parse_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok()
}

fn parse_timestamp(text: &str, format: Format) -> Option<i64> {
    match format {
        Format::Text004 => text.parse::<i64>().ok(),
        Format::OpenMetrics => {
            let ms = (parse_float(text)? * 1000.0).round();
            // i64::MAX as f64 rounds up to 2^63, hence the strict bound.
            if ms.is_finite() && ms >= i64::MIN as f64 && ms < i64::MAX as f64 {
                Some(ms as i64)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::selector::Selector;
    use proptest::prelude::*;

    /// A sample detached from the body, for comparisons.
    type Owned = (String, Vec<(String, String)>, f64, Option<i64>);

    fn owned(sample: &Sample<'_>) -> Owned {
        (
            sample.name.to_string(),
            sample
                .labels
                .iter()
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect(),
            sample.value,
            sample.timestamp_ms,
        )
    }

    fn expected(name: &str, labels: &[(&str, &str)], value: f64, ts: Option<i64>) -> Owned {
        (
            name.to_owned(),
            labels
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            value,
            ts,
        )
    }

    fn collect(body: &[u8], format: Format) -> Result<Vec<Owned>, ParseError> {
        let mut out = Vec::new();
        let stats = parse(body, format, |sample| out.push(owned(&sample)))?;
        assert_eq!(
            stats.samples,
            out.len(),
            "stats count every delivered sample"
        );
        Ok(out)
    }

    fn same_value(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }

    fn assert_samples(got: &[Owned], want: &[Owned], context: &str) {
        assert_eq!(got.len(), want.len(), "{context}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!((&g.0, &g.1, g.3), (&w.0, &w.1, w.3), "{context}");
            assert!(same_value(g.2, w.2), "{context}: value {} vs {}", g.2, w.2);
        }
    }

    #[test]
    fn text_format_table() {
        let cases: Vec<(&str, Vec<Owned>)> = vec![
            ("", vec![]),
            ("\n\n  \n\t\n", vec![]),
            ("up 1\n", vec![expected("up", &[], 1.0, None)]),
            ("up 1", vec![expected("up", &[], 1.0, None)]),
            (
                "# HELP http_requests_total Total requests.\n# TYPE http_requests_total counter\n\
                 http_requests_total{method=\"get\",code=\"200\"} 1027 1395066363000\n\
                 # a free comment\n\
                 http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n",
                vec![
                    expected(
                        "http_requests_total",
                        &[("method", "get"), ("code", "200")],
                        1027.0,
                        Some(1_395_066_363_000),
                    ),
                    expected(
                        "http_requests_total",
                        &[("method", "post"), ("code", "400")],
                        3.0,
                        Some(1_395_066_363_000),
                    ),
                ],
            ),
            (
                r#"msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9"#,
                vec![expected(
                    "msdos_file_access_time_seconds",
                    &[
                        ("path", r"C:\DIR\FILE.TXT"),
                        ("error", "Cannot find file:\n\"FILE.TXT\""),
                    ],
                    1.458_255_915e9,
                    None,
                )],
            ),
            (
                "a NaN\nb +Inf\nc -Inf\nd Inf\ne -1.5e-3\nf 12E+2\ng -0\nh .5\n",
                vec![
                    expected("a", &[], f64::NAN, None),
                    expected("b", &[], f64::INFINITY, None),
                    expected("c", &[], f64::NEG_INFINITY, None),
                    expected("d", &[], f64::INFINITY, None),
                    expected("e", &[], -1.5e-3, None),
                    expected("f", &[], 1200.0, None),
                    expected("g", &[], -0.0, None),
                    expected("h", &[], 0.5, None),
                ],
            ),
            (
                "trailing{a=\"1\",} 2\nspaced { a = \"1\" , b=\"2\" , } 3 -5\n\tindented 4\n",
                vec![
                    expected("trailing", &[("a", "1")], 2.0, None),
                    expected("spaced", &[("a", "1"), ("b", "2")], 3.0, Some(-5)),
                    expected("indented", &[], 4.0, None),
                ],
            ),
            (
                "empty{} 1\ncolon:name_x{} 2\n",
                vec![
                    expected("empty", &[], 1.0, None),
                    expected("colon:name_x", &[], 2.0, None),
                ],
            ),
            (
                "hostile{v=\"}{,=# \\\\ \\\" é 😀\",w=\"\"} 1\n",
                vec![expected(
                    "hostile",
                    &[("v", "}{,=# \\ \" é 😀"), ("w", "")],
                    1.0,
                    None,
                )],
            ),
            (
                "unknown_escape{v=\"a\\tb\\\"\"} 1\n",
                vec![expected("unknown_escape", &[("v", "a\\tb\"")], 1.0, None)],
            ),
            (
                "crlf{a=\"b\"} 1\r\ncrlf 2 3\r\n",
                vec![
                    expected("crlf", &[("a", "b")], 1.0, None),
                    expected("crlf", &[], 2.0, Some(3)),
                ],
            ),
            (
                "# EOF\nafter_eof_is_a_comment_in_text 1\n",
                vec![expected("after_eof_is_a_comment_in_text", &[], 1.0, None)],
            ),
        ];
        for (body, want) in cases {
            match collect(body.as_bytes(), Format::Text004) {
                Ok(got) => assert_samples(&got, &want, body),
                Err(err) => panic!("{body:?}: {err}"),
            }
        }
    }

    #[test]
    fn openmetrics_format_table() {
        let cases: Vec<(&str, Vec<Owned>)> = vec![
            ("# EOF\n", vec![]),
            ("# EOF", vec![]),
            (
                "# TYPE foo counter\n# HELP foo Foo.\n# UNIT foo seconds\n\
                 foo_total 17.0 1520879607.789\n\
                 foo_created 1520430000.123\n\
                 # EOF\n",
                vec![
                    expected("foo_total", &[], 17.0, Some(1_520_879_607_789)),
                    expected("foo_created", &[], 1_520_430_000.123, None),
                ],
            ),
            (
                "a_total{x=\"1\"} 1 # {trace_id=\"KOO5S4vxi0o\"} 0.67\n\
                 a_total{x=\"2\"} 2 1.5 # {trace_id=\"oHg5SJYRHA0\",s=\"}#\"} 9.8 1520879607.789\n\
                 a_total 3 #{} 1\n\
                 # EOF\n",
                vec![
                    expected("a_total", &[("x", "1")], 1.0, None),
                    expected("a_total", &[("x", "2")], 2.0, Some(1500)),
                    expected("a_total", &[], 3.0, None),
                ],
            ),
            (
                "t 1 0\nt 2 -1.0005\nt 3 1e3\n# EOF\n",
                vec![
                    expected("t", &[], 1.0, Some(0)),
                    expected("t", &[], 2.0, Some(-1001)),
                    expected("t", &[], 3.0, Some(1_000_000)),
                ],
            ),
            (
                "n NaN\np +Inf\nm -Inf\n# EOF\n",
                vec![
                    expected("n", &[], f64::NAN, None),
                    expected("p", &[], f64::INFINITY, None),
                    expected("m", &[], f64::NEG_INFINITY, None),
                ],
            ),
        ];
        for (body, want) in cases {
            match collect(body.as_bytes(), Format::OpenMetrics) {
                Ok(got) => assert_samples(&got, &want, body),
                Err(err) => panic!("{body:?}: {err}"),
            }
        }
    }

    #[test]
    fn quoted_utf8_names_in_both_formats() {
        let body = "{\"my.metric\", label=\"v\"} 1\n\
                    {\"my.metric\"} 2\n\
                    {a=\"1\", \"my.metric\", \"label.with.dots\"=\"é\"} 3\n\
                    {\"esc\\\"aped\\\\\\n\",} 4\n\
                    plain{\"quoted.label\"=\"x\"} 5\n";
        let want = vec![
            expected("my.metric", &[("label", "v")], 1.0, None),
            expected("my.metric", &[], 2.0, None),
            expected(
                "my.metric",
                &[("a", "1"), ("label.with.dots", "é")],
                3.0,
                None,
            ),
            expected("esc\"aped\\\n", &[], 4.0, None),
            expected("plain", &[("quoted.label", "x")], 5.0, None),
        ];
        for format in [Format::Text004, Format::OpenMetrics] {
            let full = match format {
                Format::Text004 => body.to_owned(),
                Format::OpenMetrics => format!("{body}# EOF\n"),
            };
            match collect(full.as_bytes(), format) {
                Ok(got) => assert_samples(&got, &want, &full),
                Err(err) => panic!("{format:?}: {err}"),
            }
        }
    }

    #[test]
    fn malformed_lines_report_line_and_reason() {
        let cases: &[(Format, &[u8], usize, &str)] = &[
            (Format::Text004, b"ok 1\nnovalue\n", 2, "syntax"),
            (Format::Text004, b"ok 1\nnovalue{a=\"b\"}\n", 2, "syntax"),
            (Format::Text004, b"x{a=\"b\" 1\n", 1, "syntax"),
            (Format::Text004, b"x{a=\"b} 1\n", 1, "syntax"),
            (Format::Text004, b"x{a=b} 1\n", 1, "syntax"),
            (Format::Text004, b"x{a} 1\n", 1, "syntax"),
            (Format::Text004, b"x{=\"v\"} 1\n", 1, "syntax"),
            (Format::Text004, b"x{\"\"=\"v\"} 1\n", 1, "syntax"),
            (Format::Text004, b"x{,} 1\n", 1, "syntax"),
            (Format::Text004, b"x{a=\"1\" b=\"2\"} 1\n", 1, "syntax"),
            (Format::Text004, b"x{9a=\"1\"} 1\n", 1, "syntax"),
            (Format::Text004, b"9x 1\n", 1, "syntax"),
            (Format::Text004, b"x.y 1\n", 1, "syntax"),
            (Format::Text004, b"{} 1\n", 1, "syntax"),
            (Format::Text004, b"{a=\"1\"} 1\n", 1, "syntax"),
            (Format::Text004, b"x{\"other\"} 1\n", 1, "syntax"),
            (Format::Text004, b"{\"a\",\"b\"} 1\n", 1, "syntax"),
            (Format::Text004, b"{\"\"} 1\n", 1, "syntax"),
            (Format::Text004, b"x 1 2 3\n", 1, "syntax"),
            (Format::Text004, b"x 1 # {a=\"1\"}\n", 1, "syntax"),
            (Format::Text004, b"x 1 # a\n", 1, "syntax"),
            (Format::Text004, b"a 1\nb 2\nx one\n", 3, "bad_value"),
            (Format::Text004, b"x 1 # {a=\"1\"} nope\n", 1, "bad_value"),
            (Format::Text004, b"hex 0x1p3\n", 1, "bad_value"),
            (Format::Text004, b"under 1_000\n", 1, "bad_value"),
            (Format::Text004, b"x 1 1.5\n", 1, "bad_timestamp"),
            (
                Format::Text004,
                b"x 1 99999999999999999999\n",
                1,
                "bad_timestamp",
            ),
            (Format::OpenMetrics, b"x 1 NaN\n# EOF\n", 1, "bad_timestamp"),
            (
                Format::OpenMetrics,
                b"x 1 1e300\n# EOF\n",
                1,
                "bad_timestamp",
            ),
            (
                Format::OpenMetrics,
                b"x 1 # {} 1 soon\n# EOF\n",
                1,
                "bad_timestamp",
            ),
            (
                Format::Text004,
                b"# c\nx{a=\"1\",a=\"2\"} 1\n",
                2,
                "duplicate_label",
            ),
            (
                Format::Text004,
                b"x{a=\"1\",\"a\"=\"2\"} 1\n",
                1,
                "duplicate_label",
            ),
            (
                Format::OpenMetrics,
                b"x 1 # {t=\"1\",t=\"1\"} 1\n# EOF\n",
                1,
                "duplicate_label",
            ),
            (
                Format::Text004,
                b"ok 1\nx{a=\"\xff\"} 1\n",
                2,
                "invalid_utf8",
            ),
            (Format::OpenMetrics, b"", 1, "missing_eof"),
            (Format::OpenMetrics, b"x 1\n", 2, "missing_eof"),
            (
                Format::OpenMetrics,
                b"x 1\n# EOF \n# EOF\n",
                3,
                "content_after_eof",
            ),
            (
                Format::OpenMetrics,
                b"x 1\n# EOF\nx 2\n",
                3,
                "content_after_eof",
            ),
            (Format::OpenMetrics, b"# EOF\n\n", 2, "content_after_eof"),
        ];
        for &(format, body, line, reason) in cases {
            match collect(body, format) {
                Ok(got) => panic!("{:?} parsed as {got:?}", String::from_utf8_lossy(body)),
                Err(err) => {
                    let context = format!("{:?}: {err}", String::from_utf8_lossy(body));
                    assert_eq!((err.line(), err.reason()), (line, reason), "{context}");
                    assert!(
                        err.to_string().starts_with(&format!("line {line}:")),
                        "{context}"
                    );
                }
            }
        }
    }

    #[test]
    fn samples_before_an_error_are_delivered() {
        let mut names = Vec::new();
        let result = parse(b"a 1\nb 2\n", Format::OpenMetrics, |s| {
            names.push(s.name.into_owned());
        });
        assert_eq!(result, Err(ParseError::MissingEof { line: 3 }));
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn comments_are_not_decoded_and_stats_count_lines() {
        let body = b"# HELP x caf\xe9 in latin-1\n\nx 1\n# EOF\n";
        assert_eq!(
            parse(body, Format::OpenMetrics, |_| {}),
            Ok(ParseStats {
                lines: 4,
                samples: 1
            })
        );
        assert_eq!(
            parse(body, Format::Text004, |_| {}),
            Ok(ParseStats {
                lines: 4,
                samples: 1
            })
        );
    }

    #[test]
    fn samples_borrow_from_the_body() {
        let body = b"x{a=\"plain\",b=\"esc\\\"aped\"} 1\n";
        let mut seen = 0;
        let result = parse(body, Format::Text004, |sample| {
            seen += 1;
            assert!(matches!(sample.name, Cow::Borrowed("x")));
            assert!(matches!(
                sample.labels.get("a"),
                Some(Cow::Borrowed("plain"))
            ));
            assert!(matches!(sample.labels.get("b"), Some(Cow::Owned(v)) if v == "esc\"aped"));
            assert_eq!(sample.labels.get("c"), None);
            assert_eq!(sample.labels.len(), 2);
        });
        assert!(result.is_ok());
        assert_eq!(seen, 1);
    }

    #[test]
    fn wide_label_sets_are_checked_for_duplicates() {
        let mut line = String::from("wide{");
        for i in 0..5000 {
            line.push_str(&format!("l{i}=\"v{i}\","));
        }
        let ok = format!("{line}}} 1\n");
        let mut len = 0;
        assert!(parse(ok.as_bytes(), Format::Text004, |s| len = s.labels.len()).is_ok());
        assert_eq!(len, 5000);
        let dup = format!("{line}l77=\"again\"}} 1\n");
        assert_eq!(
            parse(dup.as_bytes(), Format::Text004, |_| {}),
            Err(ParseError::DuplicateLabel {
                line: 1,
                label: "l77".to_owned()
            })
        );
    }

    #[test]
    fn huge_and_unbalanced_lines_fail_cleanly() {
        let mut body = vec![b'x'; 1 << 20];
        body.extend_from_slice(b"{a=\"");
        body.extend(std::iter::repeat_n(b'\\', 1001));
        body.extend_from_slice(b"\"\"\"} 1 # {\"");
        assert_eq!(
            parse(&body, Format::Text004, |_| {}).map_err(|e| e.reason()),
            Err("syntax")
        );
    }

    #[test]
    fn format_from_content_type() {
        let cases = [
            (None, Format::Text004),
            (Some(""), Format::Text004),
            (
                Some("text/plain; version=0.0.4; charset=utf-8"),
                Format::Text004,
            ),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Format::OpenMetrics,
            ),
            (Some("Application/OpenMetrics-Text"), Format::OpenMetrics),
            (
                Some(" application/openmetrics-text;version=0.0.1"),
                Format::OpenMetrics,
            ),
            (Some("application/json"), Format::Text004),
        ];
        for (content_type, want) in cases {
            assert_eq!(
                Format::from_content_type(content_type),
                want,
                "{content_type:?}"
            );
        }
        assert!(Format::ACCEPT.starts_with("application/openmetrics-text;version=1.0.0"));
        assert!(Format::ACCEPT.contains("text/plain;version=0.0.4;q=0.5"));
    }

    #[test]
    fn labels_by_hand() {
        let labels: Labels<'_> = [("a", "1"), ("b", "2")].into_iter().collect();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.get("b").as_deref(), Some("2"));
        assert_eq!(labels.get("c"), None);
        assert!(Labels::default().is_empty());
        let mut parsed = None;
        assert!(parse(b"x{a=\"1\",b=\"2\"} 1", Format::Text004, |s| parsed =
            Some(s.labels))
        .is_ok());
        assert_eq!(parsed, Some(labels));
    }

    // ---- property tests ----

    /// A sample as a generator writes it.
    #[derive(Debug, Clone)]
    struct Generated {
        name: String,
        labels: Vec<(String, String)>,
        quote_label_names: bool,
        value: f64,
        timestamp_ms: Option<i64>,
        trailing_comma: bool,
        blank: &'static str,
        exemplar: bool,
    }

    const HOSTILE: &str = "[a-zA-Z0-9_.:\"\\\\{}=,# \t\n\r\u{e9}\u{1F600}-]";

    fn name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}",
            proptest::string::string_regex(&format!("{HOSTILE}{{1,10}}"))
                .unwrap_or_else(|e| panic!("{e}")),
        ]
    }

    fn label_name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
            proptest::string::string_regex(&format!("{HOSTILE}{{1,8}}"))
                .unwrap_or_else(|e| panic!("{e}")),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (-1_000_000i64..1_000_000).prop_map(|v| v as f64),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
    }

    fn generated_strategy() -> impl Strategy<Value = Generated> {
        (
            name_strategy(),
            proptest::collection::btree_map(
                label_name_strategy(),
                proptest::string::string_regex(&format!("{HOSTILE}{{0,12}}"))
                    .unwrap_or_else(|e| panic!("{e}")),
                0..6,
            ),
            any::<bool>(),
            value_strategy(),
            proptest::option::of(-10_000_000_000_000i64..10_000_000_000_000),
            any::<bool>(),
            prop_oneof![Just(" "), Just("\t"), Just("  \t")],
            any::<bool>(),
        )
            .prop_map(
                |(
                    name,
                    labels,
                    quote_label_names,
                    value,
                    timestamp_ms,
                    trailing_comma,
                    blank,
                    exemplar,
                )| {
                    Generated {
                        name,
                        labels: labels.into_iter().collect(),
                        quote_label_names,
                        value,
                        timestamp_ms,
                        trailing_comma,
                        blank,
                        exemplar,
                    }
                },
            )
    }

    fn escape(text: &str) -> String {
        text.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    fn write_value(value: f64, exponent: bool) -> String {
        if value.is_nan() {
            "NaN".to_owned()
        } else if value == f64::INFINITY {
            "+Inf".to_owned()
        } else if value == f64::NEG_INFINITY {
            "-Inf".to_owned()
        } else if exponent {
            format!("{value:e}")
        } else {
            format!("{value}")
        }
    }

    fn write_line(sample: &Generated, format: Format) -> String {
        let bare_name = is_bare(&sample.name, is_metric_name_start, is_metric_name_char);
        let mut terms = Vec::new();
        if !bare_name {
            terms.push(format!("\"{}\"", escape(&sample.name)));
        }
        for (name, value) in &sample.labels {
            let bare = is_bare(name, is_label_name_start, is_label_name_char);
            let name = if bare && !sample.quote_label_names {
                name.clone()
            } else {
                format!("\"{}\"", escape(name))
            };
            terms.push(format!("{name}=\"{}\"", escape(value)));
        }
        let mut line = String::new();
        if bare_name {
            line.push_str(&sample.name);
        }
        if !terms.is_empty() || sample.trailing_comma {
            line.push('{');
            line.push_str(&terms.join(","));
            if sample.trailing_comma && !terms.is_empty() {
                line.push(',');
            }
            line.push('}');
        }
        line.push_str(sample.blank);
        line.push_str(&write_value(sample.value, sample.trailing_comma));
        if let Some(ms) = sample.timestamp_ms {
            line.push_str(sample.blank);
            match format {
                Format::Text004 => line.push_str(&ms.to_string()),
                Format::OpenMetrics => {
                    let sign = if ms < 0 { "-" } else { "" };
                    let abs = ms.unsigned_abs();
                    line.push_str(&format!("{sign}{}.{:03}", abs / 1000, abs % 1000));
                }
            }
        }
        if sample.exemplar {
            line.push_str(" # {trace_id=\"abc\\\"}\"} 0.5 1.25");
        }
        line.push('\n');
        line
    }

    fn soup_strategy() -> impl Strategy<Value = Vec<u8>> {
        let tokens = [
            "a",
            "x_total",
            "{",
            "}",
            "\"",
            "\\",
            "=",
            ",",
            "#",
            " ",
            "\t",
            "\n",
            "\r",
            "1",
            "-",
            "1.5e3",
            "NaN",
            "+Inf",
            "# EOF",
            "# TYPE a counter",
            "é",
            "\"my.metric\"",
            "l=\"v\"",
        ];
        proptest::collection::vec(proptest::sample::select(tokens.to_vec()), 0..60)
            .prop_map(|parts| parts.concat().into_bytes())
    }

    /// Whatever parses must hold together: lookups agree with iteration.
    fn check_invariants(body: &[u8], format: Format) {
        let _ = parse(body, format, |sample| {
            assert!(!sample.name.is_empty());
            let pairs: Vec<_> = sample.labels.iter().collect();
            assert_eq!(pairs.len(), sample.labels.len());
            for (name, value) in &pairs {
                assert!(!name.is_empty());
                assert_eq!(sample.labels.get(name).as_ref(), Some(value));
            }
        });
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_invariants(&body, Format::Text004);
            check_invariants(&body, Format::OpenMetrics);
        }

        #[test]
        fn printable_ascii_never_panics(body in "[ -~\t\n]{0,300}") {
            check_invariants(body.as_bytes(), Format::Text004);
            check_invariants(body.as_bytes(), Format::OpenMetrics);
        }

        #[test]
        fn token_soup_never_panics(body in soup_strategy()) {
            check_invariants(&body, Format::Text004);
            check_invariants(&body, Format::OpenMetrics);
        }

        #[test]
        fn selectors_never_panic(text in "[ -~é]{0,64}", soup in soup_strategy()) {
            let _ = text.parse::<Selector>();
            let _ = String::from_utf8_lossy(&soup).parse::<Selector>();
        }

        #[test]
        fn valid_expositions_round_trip(
            samples in proptest::collection::vec(generated_strategy(), 0..12),
            open_metrics in any::<bool>(),
        ) {
            let format = if open_metrics { Format::OpenMetrics } else { Format::Text004 };
            let mut body = String::from("# HELP whatever Some \\\\ help.\n# TYPE whatever counter\n");
            for sample in &samples {
                body.push_str(&write_line(sample, format));
                body.push_str("# comment between samples\n");
            }
            if format == Format::OpenMetrics {
                body.push_str("# EOF\n");
            }
            let got = collect(body.as_bytes(), format)
                .map_err(|err| TestCaseError::fail(format!("{err} in {body:?}")))?;
            let want: Vec<Owned> = samples
                .iter()
                .map(|s| (s.name.clone(), s.labels.clone(), s.value, s.timestamp_ms))
                .collect();
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!((&g.0, &g.1, g.3), (&w.0, &w.1, w.3), "{}", body);
                prop_assert!(same_value(g.2, w.2), "value {} vs {} in {}", g.2, w.2, body);
            }
        }
    }
}
