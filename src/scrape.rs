//! HTTP fetch of the target's metrics endpoint: timeout, byte cap, status check.
//!
//! Owns the scrape client and [`ScrapeError`] with its bounded `reason()`. It does not
//! parse: the body goes to `exposition`. It negotiates the format with `Accept`
//! (OpenMetrics 1.0 preferred, text 0.0.4 accepted) and reports the content type back.

use std::time::Duration;

use url::Url;

use crate::exposition::Format;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer within the timeout.
    #[error("scrape timed out after {0:?}")]
    Timeout(Duration),
    /// The connection could not be made or broke.
    #[error("cannot connect to the target: {0}")]
    Connect(String),
    /// The target answered with a non-2xx status.
    #[error("target answered HTTP {0}")]
    Status(u16),
    /// The body was larger than the cap (reading stopped there).
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The body could not be read completely.
    #[error("reading the body failed: {0}")]
    Body(String),
    /// The exposition could not be parsed.
    #[error("cannot parse the exposition: {0}")]
    Parse(#[from] crate::exposition::ParseError),
}

impl ScrapeError {
    /// A short bounded label for `flowcast_scrape_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Status(s) if (400..500).contains(s) => "http_4xx",
            Self::Status(_) => "http_5xx",
            Self::TooLarge(_) => "body_too_large",
            Self::Body(_) => "body",
            Self::Parse(_) => "parse",
        }
    }
}

/// A fetched body with its format.
#[derive(Debug)]
pub struct Body {
    /// The raw bytes.
    pub bytes: Vec<u8>,
    /// Format from the response's Content-Type.
    pub format: Format,
}

/// A scraper of one target.
#[derive(Debug, Clone)]
pub struct Scraper {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
    max_body_bytes: usize,
}

impl Scraper {
    /// A scraper of `url` with the given timeout and body cap.
    pub fn new(url: Url, timeout: Duration, max_body_bytes: usize) -> Result<Self, ScrapeError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("flowcast/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ScrapeError::Connect(e.to_string()))?;
        Ok(Self {
            client,
            url,
            timeout,
            max_body_bytes,
        })
    }

    /// Fetches the body once.
    pub async fn fetch(&self) -> Result<Body, ScrapeError> {
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                ScrapeError::Timeout(self.timeout)
            } else if e.is_connect() || e.is_request() {
                ScrapeError::Connect(without_url(&e))
            } else {
                ScrapeError::Body(without_url(&e))
            }
        };
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, Format::ACCEPT)
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ScrapeError::Status(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body_bytes as u64)
        {
            return Err(ScrapeError::TooLarge(self.max_body_bytes));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if bytes.len() + chunk.len() > self.max_body_bytes {
                return Err(ScrapeError::TooLarge(self.max_body_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Body {
            bytes,
            format: Format::from_content_type(content_type.as_deref()),
        })
    }
}

/// reqwest errors print the URL, which may carry credentials; keep only the cause.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "<target>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
