//! PromQL-style series selectors: the parser of `name{label="value",code!~"5.."}` and
//! the matcher that picks samples of a parsed exposition ([`crate::ingest::exposition`]).
//!
//! Must not: do I/O, read a clock, record metrics or log, or panic on any input.
//! A bad selector is a [`SelectorError`] naming the column.

use std::fmt;
use std::str::FromStr;

use regex::Regex;

use crate::ingest::exposition::{
    is_bare, is_label_name_char, is_label_name_start, is_metric_name_char, is_metric_name_start,
    next_raw_pair, scan_bare, scan_label_name, unescape, Labels,
};

/// A PromQL-style series selector, e.g.
/// `http_requests_total{job="api",code!~"5.."}`.
///
/// A metric name is required: a bare name before the braces, a quoted name
/// inside them (`{"my.metric", job="api"}`), or `{__name__="name", ...}`.
/// Matchers use `=`, `!=`, `=~` and `!~`; regexes are RE2 syntax, anchored at
/// both ends and with `.` matching newlines (`^(?s:re)$`), as in Prometheus.
/// A missing label matches as the empty string, as in PromQL.
#[derive(Debug, Clone)]
pub struct Selector {
    metric_name: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    kind: MatchKind,
}

#[derive(Debug, Clone)]
enum MatchKind {
    Equal(String),
    NotEqual(String),
    /// The user's pattern and its anchored compilation.
    Regex(String, Regex),
    NotRegex(String, Regex),
}

impl MatchKind {
    fn matches(&self, value: &str) -> bool {
        match self {
            MatchKind::Equal(want) => value == want,
            MatchKind::NotEqual(want) => value != want,
            MatchKind::Regex(_, re) => re.is_match(value),
            MatchKind::NotRegex(_, re) => !re.is_match(value),
        }
    }
}

impl Selector {
    /// The same label matchers on another metric name (e.g. a histogram's `_sum`).
    pub fn with_metric_name(&self, name: &str) -> Selector {
        Selector {
            metric_name: name.to_string(),
            matchers: self.matchers.clone(),
        }
    }

    /// The metric name every matching sample must have.
    pub fn metric_name(&self) -> &str {
        &self.metric_name
    }

    /// Whether a sample with this name and these labels is selected.
    pub fn matches(&self, name: &str, labels: &Labels<'_>) -> bool {
        if name != self.metric_name {
            return false;
        }
        match labels.raw_text() {
            Some(text) if self.matchers.len() <= 64 => self.matches_raw(name, text),
            _ => self.matchers.iter().all(|matcher| {
                if matcher.label == "__name__" {
                    matcher.kind.matches(name)
                } else {
                    let value = labels.get(&matcher.label);
                    matcher.kind.matches(value.as_deref().unwrap_or(""))
                }
            }),
        }
    }

    /// [`Selector::matches`] in one pass over a parsed label set, instead of
    /// one lookup per matcher; `seen` marks matchers whose label was present.
    fn matches_raw(&self, name: &str, text: &str) -> bool {
        let mut seen = 0u64;
        let mut pos = 0;
        while let Some(pair) = next_raw_pair(text, &mut pos) {
            let mut value = None;
            for (i, matcher) in self.matchers.iter().enumerate() {
                if matcher.label != pair.name || matcher.label == "__name__" {
                    continue;
                }
                seen |= 1 << i;
                let value = value.get_or_insert_with(|| unescape(pair.value, pair.value_escaped));
                if !matcher.kind.matches(value) {
                    return false;
                }
            }
        }
        self.matchers.iter().enumerate().all(|(i, matcher)| {
            seen & (1 << i) != 0
                || matcher.kind.matches(if matcher.label == "__name__" {
                    name
                } else {
                    ""
                })
        })
    }
}

/// Why a selector string was rejected; `column` is a 1-based byte offset.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectorError {
    /// The selector is empty or blank.
    #[error("selector is empty")]
    Empty,
    /// No metric name was given.
    #[error(
        "selector has no metric name: write `name{{...}}`, `{{\"name\", ...}}` or `{{__name__=\"name\", ...}}`"
    )]
    MissingMetricName,
    /// The metric name was given more than once.
    #[error("column {column}: metric name given more than once")]
    DuplicateMetricName {
        /// 1-based byte offset of the second name.
        column: usize,
    },
    /// A matcher operator other than `=`, `!=`, `=~`, `!~`.
    #[error("column {column}: unknown matcher operator {found:?}, expected =, !=, =~ or !~")]
    UnknownOperator {
        /// 1-based byte offset of the operator.
        column: usize,
        /// The operator as written (empty at end of input).
        found: String,
    },
    /// A `=~` / `!~` pattern that does not compile.
    #[error("invalid regex {pattern:?} for label {label:?}: {error}")]
    BadRegex {
        /// The label the matcher applies to.
        label: String,
        /// The pattern as written.
        pattern: String,
        /// The regex crate's explanation.
        error: regex::Error,
    },
    /// A string literal without its closing quote.
    #[error("column {column}: unterminated string")]
    UnterminatedString {
        /// 1-based byte offset of the opening quote.
        column: usize,
    },
    /// An escape sequence other than `\\`, `\"`, `\'`, `\n`, `\r`, `\t`.
    #[error("column {column}: unknown escape sequence \\{found}")]
    BadEscape {
        /// 1-based byte offset of the backslash.
        column: usize,
        /// The character after the backslash.
        found: char,
    },
    /// Anything else that does not fit the grammar.
    #[error("column {column}: expected {expected}")]
    Syntax {
        /// 1-based byte offset where parsing stopped.
        column: usize,
        /// What was expected there.
        expected: &'static str,
    },
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.trim().is_empty() {
            return Err(SelectorError::Empty);
        }
        SelectorParser {
            text: input,
            pos: 0,
        }
        .selector()
    }
}

struct SelectorParser<'s> {
    text: &'s str,
    pos: usize,
}

impl SelectorParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn syntax(&self, expected: &'static str) -> SelectorError {
        SelectorError::Syntax {
            column: self.pos + 1,
            expected,
        }
    }
}

/// Records the selector's metric name, refusing a second or an empty one.
fn set_metric_name(
    slot: &mut Option<String>,
    name: String,
    column: usize,
) -> Result<(), SelectorError> {
    if slot.is_some() {
        return Err(SelectorError::DuplicateMetricName { column });
    }
    if name.is_empty() {
        return Err(SelectorError::Syntax {
            column,
            expected: "non-empty metric name",
        });
    }
    *slot = Some(name);
    Ok(())
}

impl<'s> SelectorParser<'s> {
    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut metric_name = None;
        let mut matchers = Vec::new();
        self.skip_space();
        let bare = scan_bare(
            self.text,
            &mut self.pos,
            is_metric_name_start,
            is_metric_name_char,
        );
        if !bare.is_empty() {
            metric_name = Some(bare.to_owned());
        }
        self.skip_space();
        if self.peek() == Some(b'{') {
            self.pos += 1;
            loop {
                self.skip_space();
                match self.peek() {
                    None => return Err(self.syntax("'}' to close the selector")),
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    Some(_) => {}
                }
                let term_column = self.pos + 1;
                let (label, quoted) = if matches!(self.peek(), Some(b'"' | b'\'' | b'`')) {
                    (self.string()?, true)
                } else {
                    match scan_label_name(self.text, &mut self.pos) {
                        Some(name) => (name.to_owned(), false),
                        None => return Err(self.syntax("label name")),
                    }
                };
                self.skip_space();
                if quoted && matches!(self.peek(), Some(b',' | b'}')) {
                    set_metric_name(&mut metric_name, label, term_column)?;
                } else {
                    if label.is_empty() {
                        return Err(SelectorError::Syntax {
                            column: term_column,
                            expected: "non-empty label name",
                        });
                    }
                    let op_column = self.pos + 1;
                    let op = self.operator();
                    self.skip_space();
                    if !matches!(self.peek(), Some(b'"' | b'\'' | b'`')) {
                        return Err(self.syntax("quoted label value"));
                    }
                    let value = self.string()?;
                    let kind = match op {
                        "=" if label == "__name__" => {
                            set_metric_name(&mut metric_name, value, term_column)?;
                            None
                        }
                        "=" => Some(MatchKind::Equal(value)),
                        "!=" => Some(MatchKind::NotEqual(value)),
                        "=~" => Some(MatchKind::Regex(
                            value.clone(),
                            anchored_regex(&label, &value)?,
                        )),
                        "!~" => Some(MatchKind::NotRegex(
                            value.clone(),
                            anchored_regex(&label, &value)?,
                        )),
                        other => {
                            return Err(SelectorError::UnknownOperator {
                                column: op_column,
                                found: other.to_owned(),
                            })
                        }
                    };
                    if let Some(kind) = kind {
                        matchers.push(Matcher { label, kind });
                    }
                }
                self.skip_space();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {}
                    None => return Err(self.syntax("'}' to close the selector")),
                    Some(_) => return Err(self.syntax("',' or '}' after matcher")),
                }
            }
            self.skip_space();
        }
        if self.peek().is_some() {
            return Err(self.syntax("end of selector"));
        }
        let metric_name = metric_name.ok_or(SelectorError::MissingMetricName)?;
        Ok(Selector {
            metric_name,
            matchers,
        })
    }

    /// The operator at the cursor: the run of operator-like characters, or a
    /// single other character so the error can show it.
    fn operator(&mut self) -> &'s str {
        let from = self.pos;
        while self
            .peek()
            .is_some_and(|b| matches!(b, b'=' | b'!' | b'~' | b'<' | b'>'))
        {
            self.pos += 1;
        }
        if self.pos == from {
            if let Some(c) = self.text.get(from..).and_then(|rest| rest.chars().next()) {
                self.pos += c.len_utf8();
            }
        }
        self.text.get(from..self.pos).unwrap_or_default()
    }

    /// A PromQL string literal at the cursor: `"..."` or `'...'` with escapes,
    /// or a raw `` `...` ``.
    fn string(&mut self) -> Result<String, SelectorError> {
        let open_column = self.pos + 1;
        let rest = self.text.get(self.pos..).unwrap_or_default();
        let mut chars = rest.char_indices();
        let Some((_, quote)) = chars.next() else {
            return Err(self.syntax("string"));
        };
        let mut out = String::new();
        while let Some((offset, c)) = chars.next() {
            if c == quote {
                self.pos += offset + c.len_utf8();
                return Ok(out);
            }
            if c != '\\' || quote == '`' {
                out.push(c);
                continue;
            }
            let Some((_, escaped)) = chars.next() else {
                break;
            };
            out.push(match escaped {
                '\\' => '\\',
                '"' => '"',
                '\'' => '\'',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                found => {
                    return Err(SelectorError::BadEscape {
                        column: self.pos + offset + 1,
                        found,
                    })
                }
            });
        }
        Err(SelectorError::UnterminatedString {
            column: open_column,
        })
    }
}

/// Compiles `pattern` as PromQL does. The pattern must compile on its own
/// first, so `a)|(b` cannot escape the anchoring group.
fn anchored_regex(label: &str, pattern: &str) -> Result<Regex, SelectorError> {
    let bad = |error| SelectorError::BadRegex {
        label: label.to_owned(),
        pattern: pattern.to_owned(),
        error,
    };
    Regex::new(pattern).map_err(bad)?;
    Regex::new(&format!("^(?s:{pattern})$")).map_err(bad)
}

impl fmt::Display for Selector {
    /// Writes the selector in a form [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare_name = is_bare(&self.metric_name, is_metric_name_start, is_metric_name_char);
        if bare_name {
            f.write_str(&self.metric_name)?;
        }
        f.write_str("{")?;
        let mut first = true;
        if !bare_name {
            write_string(f, &self.metric_name)?;
            first = false;
        }
        for matcher in &self.matchers {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if is_bare(&matcher.label, is_label_name_start, is_label_name_char) {
                f.write_str(&matcher.label)?;
            } else {
                write_string(f, &matcher.label)?;
            }
            let (op, value) = match &matcher.kind {
                MatchKind::Equal(value) => ("=", value),
                MatchKind::NotEqual(value) => ("!=", value),
                MatchKind::Regex(pattern, _) => ("=~", pattern),
                MatchKind::NotRegex(pattern, _) => ("!~", pattern),
            };
            f.write_str(op)?;
            write_string(f, value)?;
        }
        f.write_str("}")
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in value.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '"' => f.write_str("\\\"")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c => fmt::Write::write_char(f, c)?,
        }
    }
    f.write_str("\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::exposition::{parse, Format};

    fn selector(text: &str) -> Selector {
        match text.parse() {
            Ok(selector) => selector,
            Err(err) => panic!("{text:?}: {err}"),
        }
    }

    #[test]
    fn selector_operators_and_missing_labels() {
        let series: [(&str, &[(&str, &str)]); 5] = [
            ("http_requests_total", &[("job", "api"), ("code", "200")]),
            ("http_requests_total", &[("job", "api"), ("code", "503")]),
            ("http_requests_total", &[("job", "web"), ("code", "500")]),
            ("http_requests_total", &[("job", "api")]),
            ("other_total", &[("job", "api"), ("code", "200")]),
        ];
        let cases: &[(&str, [bool; 5])] = &[
            ("http_requests_total", [true, true, true, true, false]),
            ("http_requests_total{}", [true, true, true, true, false]),
            (
                "http_requests_total{job=\"api\"}",
                [true, true, false, true, false],
            ),
            (
                "http_requests_total{job!=\"api\"}",
                [false, false, true, false, false],
            ),
            (
                "http_requests_total{code=~\"5..\"}",
                [false, true, true, false, false],
            ),
            (
                "http_requests_total{code!~\"5..\"}",
                [true, false, false, true, false],
            ),
            // Anchored: "5" alone does not match "503".
            (
                "http_requests_total{code=~\"5\"}",
                [false, false, false, false, false],
            ),
            (
                "http_requests_total{code=~\"2..|50.\"}",
                [true, true, true, false, false],
            ),
            // A missing label is the empty string.
            (
                "http_requests_total{code=\"\"}",
                [false, false, false, true, false],
            ),
            (
                "http_requests_total{code!=\"\"}",
                [true, true, true, false, false],
            ),
            (
                "http_requests_total{code=~\".*\"}",
                [true, true, true, true, false],
            ),
            (
                "http_requests_total{code=~\".+\"}",
                [true, true, true, false, false],
            ),
            (
                "http_requests_total{code!~\".+\"}",
                [false, false, false, true, false],
            ),
            (
                "http_requests_total{nope=\"x\"}",
                [false, false, false, false, false],
            ),
            (
                " http_requests_total { job = 'api' , code != `200` , } ",
                [false, true, false, true, false],
            ),
            (
                "{__name__=\"other_total\", job=\"api\"}",
                [false, false, false, false, true],
            ),
            (
                "{job=\"api\", __name__=\"other_total\"}",
                [false, false, false, false, true],
            ),
            (
                "http_requests_total{__name__!~\"other.*\",job=\"web\"}",
                [false, false, true, false, false],
            ),
        ];
        for (text, want) in cases {
            let sel = selector(text);
            for ((name, pairs), want) in series.iter().zip(want) {
                let labels: Labels<'_> = pairs.iter().copied().collect();
                assert_eq!(
                    sel.matches(name, &labels),
                    *want,
                    "{text} on {name}{pairs:?}"
                );
                // Parsed labels take the one-pass path; it must agree.
                let set: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}=\"{v}\"")).collect();
                let line = format!("{name}{{{}}} 1", set.join(","));
                let mut parsed = None;
                let result = parse(line.as_bytes(), Format::Text004, |s| {
                    parsed = Some(sel.matches(&s.name, &s.labels));
                });
                assert!(result.is_ok(), "{line}");
                assert_eq!(parsed, Some(*want), "{text} on {line}");
            }
        }
    }

    #[test]
    fn selector_regex_dot_matches_newline_and_utf8_names() {
        let sel = selector("{\"my.metric\", \"route.name\"=~\"a.b\"}");
        assert_eq!(sel.metric_name(), "my.metric");
        let labels: Labels<'_> = [("route.name", "a\nb")].into_iter().collect();
        assert!(sel.matches("my.metric", &labels));
        assert!(!sel.matches("my_metric", &labels));
        let escaped = selector(r#"m{path="C:\\dir", q="say \"hi\"\n"}"#);
        let labels: Labels<'_> = [("path", r"C:\dir"), ("q", "say \"hi\"\n")]
            .into_iter()
            .collect();
        assert!(escaped.matches("m", &labels));
    }

    #[test]
    fn selector_matches_parsed_samples() {
        let sel = selector("http_requests_total{job=\"api\",code!~\"5..\"}");
        let body = b"http_requests_total{job=\"api\",code=\"200\"} 10\n\
                     http_requests_total{job=\"api\",code=\"500\"} 1\n\
                     http_requests_total{code=\"201\",job=\"api\"} 5\n\
                     http_requests_created{job=\"api\",code=\"200\"} 1.7e9\n\
                     # EOF\n";
        let mut sum = 0.0;
        let result = parse(body, Format::OpenMetrics, |s| {
            if sel.matches(&s.name, &s.labels) {
                sum += s.value;
            }
        });
        assert!(result.is_ok());
        assert_eq!(sum, 15.0);
    }

    #[test]
    fn selector_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "selector is empty"),
            ("   ", "selector is empty"),
            ("{job=\"api\"}", "no metric name"),
            ("{__name__=~\"a.*\"}", "no metric name"),
            ("m{a==\"x\"}", "unknown matcher operator \"==\""),
            ("m{a<\"x\"}", "unknown matcher operator \"<\""),
            ("m{a:\"x\"}", "unknown matcher operator \":\""),
            ("m{a=~\"(\"}", "invalid regex \"(\" for label \"a\""),
            ("m{a=~\"a)|(b\"}", "invalid regex"),
            ("m{a=\"x}", "column 5: unterminated string"),
            ("m{a='x", "unterminated string"),
            ("m{a=\"\\d\"}", "unknown escape sequence \\d"),
            ("m{__name__=\"n\"}", "metric name given more than once"),
            ("{\"a\", \"b\"}", "metric name given more than once"),
            ("m{a=\"x\"", "expected '}'"),
            ("m{a=x}", "expected quoted label value"),
            ("m{a=\"x\" b=\"y\"}", "expected ',' or '}'"),
            ("m{,}", "expected label name"),
            ("m x", "expected end of selector"),
            ("m{}x", "expected end of selector"),
            ("{\"\"}", "non-empty metric name"),
            ("m{\"\"=\"x\"}", "non-empty label name"),
        ];
        for (text, want) in cases {
            match text.parse::<Selector>() {
                Ok(sel) => panic!("{text:?} parsed as {sel:?}"),
                Err(err) => assert!(err.to_string().contains(want), "{text:?}: {err}"),
            }
        }
        // The regex crate's explanation is carried along.
        match "m{a=~\"[z-a]\"}".parse::<Selector>() {
            Err(SelectorError::BadRegex { label, error, .. }) => {
                assert_eq!(label, "a");
                assert!(error.to_string().contains("invalid character class range"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selector_display_reads_back() {
        for text in [
            "m",
            "m{a=\"x\",b!=\"y\",c=~\"5..\",d!~\"a\\\\.b\"}",
            "{\"my.metric\",\"a.b\"=\"q\\\"uote\\n\"}",
        ] {
            let first = selector(text);
            let shown = first.to_string();
            let again = selector(&shown);
            assert_eq!(again.to_string(), shown, "{text}");
            assert_eq!(again.metric_name(), first.metric_name());
        }
        assert_eq!(selector("m{a=~'x'}").to_string(), "m{a=~\"x\"}");
    }
}
