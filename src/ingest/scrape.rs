//! HTTP fetches with a timeout, a byte cap, a status check and optional authentication
//! (bearer token file, basic auth, custom CA): the target's metrics endpoint here, the
//! Prometheus API in [`crate::ingest::promapi`].
//!
//! Owns the HTTP clients and [`ScrapeError`] with its bounded `reason()`. It does not
//! parse: the body goes to `exposition`. It negotiates the format with `Accept`
//! (OpenMetrics 1.0 preferred, text 0.0.4 accepted) and reports the content type back.
//! Secrets are read from files on every request (so a rotated token is picked up) and
//! never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::host::secrets::SecretFile;
use crate::ingest::exposition::Format;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer within the timeout.
    #[error("scrape timed out after {0:?}")]
    Timeout(Duration),
    /// The connection could not be made or broke.
    #[error("cannot connect to the target: {0}")]
    Connect(String),
    /// A redirect that is refused (https to http) or one too many.
    #[error("redirect refused: {0}")]
    Redirect(String),
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
    Parse(#[from] crate::ingest::exposition::ParseError),
    /// A credential file could not be read.
    #[error("cannot read the credential file {0}")]
    Credentials(String),
    /// The exposition exceeded one of the per-scrape limits (Prometheus's names): the
    /// scrape fails as a whole.
    #[error("the scrape exceeds {kind} ({limit})")]
    Limit {
        /// `sample_limit`, `label_limit`, `label_name_length_limit` or
        /// `label_value_length_limit`.
        kind: &'static str,
        /// The configured limit.
        limit: usize,
    },
}

impl ScrapeError {
    /// A short bounded label for `flowcast_scrape_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Redirect(_) => "redirect",
            Self::Status(s) if (300..400).contains(s) => "redirect",
            Self::Status(s) if (400..500).contains(s) => "http_4xx",
            Self::Status(_) => "http_5xx",
            Self::TooLarge(_) => "body_too_large",
            Self::Body(_) => "body",
            Self::Parse(_) => "parse",
            Self::Credentials(_) => "credentials",
            Self::Limit { kind, .. } => kind,
        }
    }
}

/// Prometheus's per-scrape limits (`scrape_config`'s names and meaning; 0 is no limit).
/// A scrape over any of them fails as a whole, so a target that floods flowcast costs a
/// bounded amount per scrape and per series: the key of a series is at most `by` labels ×
/// `label_value_length_limit` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeLimits {
    /// Most samples in one exposition.
    pub sample_limit: usize,
    /// Most labels on one sample, the metric name included.
    pub label_limit: usize,
    /// Longest label name, in bytes.
    pub label_name_length_limit: usize,
    /// Longest label value (and metric name), in bytes.
    pub label_value_length_limit: usize,
}

impl ScrapeLimits {
    /// The defaults (see the README): far above a real app's exposition, far below what
    /// would hurt the sidecar.
    pub const DEFAULT: Self = Self {
        sample_limit: 100_000,
        label_limit: 64,
        label_name_length_limit: 128,
        label_value_length_limit: 1024,
    };

    /// The first limit the `n`-th sample of a scrape (1-based) breaks, if any.
    pub(crate) fn check(
        &self,
        n: usize,
        sample: &crate::ingest::exposition::Sample<'_>,
    ) -> Option<ScrapeError> {
        let over = |limit: usize, value: usize| limit > 0 && value > limit;
        let fail = |kind, limit| Some(ScrapeError::Limit { kind, limit });
        if over(self.sample_limit, n) {
            return fail("sample_limit", self.sample_limit);
        }
        if over(self.label_limit, sample.labels.len() + 1) {
            return fail("label_limit", self.label_limit);
        }
        if over(self.label_value_length_limit, sample.name.len()) {
            return fail("label_value_length_limit", self.label_value_length_limit);
        }
        for (name, value) in sample.labels.iter() {
            if over(self.label_name_length_limit, name.len()) {
                return fail("label_name_length_limit", self.label_name_length_limit);
            }
            if over(self.label_value_length_limit, value.len()) {
                return fail("label_value_length_limit", self.label_value_length_limit);
            }
        }
        None
    }
}

impl Default for ScrapeLimits {
    fn default() -> Self {
        Self::DEFAULT
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

/// How to authenticate to an HTTP endpoint. Secrets live in files, held in memory and
/// refreshed off the runtime ([`crate::host::secrets`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAuth {
    /// A file holding a bearer token (`Authorization: Bearer ...`).
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth: user name and a file holding the password.
    pub basic: Option<(String, PathBuf)>,
    /// A PEM file of CA certificates trusted in addition to the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: a PEM client certificate file and its private key file.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Whether redirects are followed (Prometheus's `follow_redirects`, default true); a
    /// redirect from https to http is refused either way.
    pub follow_redirects: bool,
}

/// The one credential an [`HttpAuth`] sends or expects: the token file, else the password
/// file (a bearer token wins when both are configured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <the file's content>`.
    Bearer {
        /// The file holding the token.
        token_file: &'a Path,
    },
    /// `Authorization: Basic base64(user:<the file's content>)`.
    Basic {
        /// The user name.
        user: &'a str,
        /// The file holding the password.
        password_file: &'a Path,
    },
}

impl Credential<'_> {
    /// The file that holds the secret.
    pub fn file(&self) -> &Path {
        match self {
            Credential::Bearer { token_file } => token_file,
            Credential::Basic { password_file, .. } => password_file,
        }
    }
}

impl HttpAuth {
    /// The credential in use, if any: the token file, else the password file.
    pub fn credential(&self) -> Option<Credential<'_>> {
        match (&self.bearer_token_file, &self.basic) {
            (Some(token_file), _) => Some(Credential::Bearer { token_file }),
            (None, Some((user, password_file))) => Some(Credential::Basic {
                user,
                password_file,
            }),
            (None, None) => None,
        }
    }
}

impl Default for HttpAuth {
    fn default() -> Self {
        Self {
            bearer_token_file: None,
            basic: None,
            ca_file: None,
            client_identity: None,
            follow_redirects: true,
        }
    }
}

/// Most redirects followed in a row (Go's `http.Client`, which Prometheus uses).
const MAX_REDIRECTS: usize = 10;

/// Prometheus's redirect rules: follow up to [`MAX_REDIRECTS`] when `follow` is set, else
/// hand the 3xx back (the scrape fails with `reason="redirect"`); never from https down to
/// http, where a bearer token or password would travel in clear text.
fn redirect_policy(follow: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            attempt.error("a redirect from https to http is refused")
        } else if !follow {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("stopped after {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// An HTTP client bound to one timeout, body cap and authentication.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    auth: HttpAuth,
    /// The bearer token file's or the basic-auth password file's content, refreshed off
    /// the runtime (no file is read per request).
    secret: Option<Arc<SecretFile>>,
    timeout: Duration,
    max_body_bytes: usize,
}

/// A fetched body and its Content-Type.
pub struct Fetched {
    /// HTTP status (any; the caller decides).
    pub status: u16,
    /// Content-Type header.
    pub content_type: Option<String>,
    /// The body, at most the cap.
    pub bytes: Vec<u8>,
}

impl HttpFetcher {
    /// A client with the given timeout (connect and whole request), body cap and auth.
    /// The CA file is read here, so a bad one is an error at start.
    pub fn new(
        timeout: Duration,
        max_body_bytes: usize,
        auth: HttpAuth,
    ) -> Result<Self, ScrapeError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirect_policy(auth.follow_redirects))
            .user_agent(concat!("flowcast/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &auth.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| ScrapeError::Credentials(format!("{}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ScrapeError::Credentials(format!("{}: not PEM certificates: {e}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(ScrapeError::Credentials(format!(
                    "{}: no certificate in the file",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &auth.client_identity {
            let mut pem = std::fs::read(cert)
                .map_err(|e| ScrapeError::Credentials(format!("{}: {e}", cert.display())))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| ScrapeError::Credentials(format!("{}: {e}", key.display())))?,
            );
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ScrapeError::Credentials(format!(
                    "{} with {}: not a PEM certificate and key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| ScrapeError::Connect(e.to_string()))?;
        let secret = auth.credential().map(|c| SecretFile::watch(c.file()));
        Ok(Self {
            client,
            auth,
            secret,
            timeout,
            max_body_bytes,
        })
    }

    /// GETs `url` with `accept`, reading at most the body cap.
    pub async fn get(&self, url: Url, accept: &str) -> Result<Fetched, ScrapeError> {
        let classify = |e: reqwest::Error| {
            if e.is_redirect() {
                ScrapeError::Redirect(without_url(&e))
            } else if e.is_timeout() {
                ScrapeError::Timeout(self.timeout)
            } else if e.is_connect() || e.is_request() {
                ScrapeError::Connect(without_url(&e))
            } else {
                ScrapeError::Body(without_url(&e))
            }
        };
        let mut request = self.client.get(url).header(reqwest::header::ACCEPT, accept);
        if let Some(secret) = &self.secret {
            let value = secret.get().ok_or_else(|| {
                ScrapeError::Credentials(format!("{}: unreadable", secret.path().display()))
            })?;
            request = match self.auth.credential() {
                Some(Credential::Basic { user, .. }) => request.basic_auth(user, Some(&*value)),
                _ => request.bearer_auth(&*value),
            };
        }
        let mut response = request.send().await.map_err(classify)?;
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body_bytes as u64)
        {
            return Err(ScrapeError::TooLarge(self.max_body_bytes));
        }
        let status = response.status().as_u16();
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
        Ok(Fetched {
            status,
            content_type,
            bytes,
        })
    }
}

/// A scraper of one target.
#[derive(Debug, Clone)]
pub struct Scraper {
    http: HttpFetcher,
    url: Url,
}

impl Scraper {
    /// A scraper of `url` with the given timeout, body cap and authentication.
    pub fn new(
        url: Url,
        timeout: Duration,
        max_body_bytes: usize,
        auth: HttpAuth,
    ) -> Result<Self, ScrapeError> {
        Ok(Self {
            http: HttpFetcher::new(timeout, max_body_bytes, auth)?,
            url,
        })
    }

    /// Fetches the body once.
    pub async fn fetch(&self) -> Result<Body, ScrapeError> {
        let fetched = self.http.get(self.url.clone(), Format::ACCEPT).await?;
        if !(200..300).contains(&fetched.status) {
            return Err(ScrapeError::Status(fetched.status));
        }
        Ok(Body {
            bytes: fetched.bytes,
            format: Format::from_content_type(fetched.content_type.as_deref()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The token file wins over the password file; the password file's user comes along.
    #[test]
    fn the_token_file_else_the_password_file() {
        let token = PathBuf::from("/run/token");
        let password = PathBuf::from("/run/password");
        let mut auth = HttpAuth::default();
        assert_eq!(auth.credential(), None);
        auth.basic = Some(("scraper".into(), password.clone()));
        let basic = auth.credential().expect("basic");
        assert_eq!(
            basic,
            Credential::Basic {
                user: "scraper",
                password_file: &password
            }
        );
        assert_eq!(basic.file(), password);
        auth.bearer_token_file = Some(token.clone());
        let bearer = auth.credential().expect("bearer");
        assert_eq!(bearer, Credential::Bearer { token_file: &token });
        assert_eq!(bearer.file(), token);
    }
}
