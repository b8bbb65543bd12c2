//! `--web.config.file`: TLS and basic auth on flowcast's own listener, in the format of the
//! Prometheus exporter-toolkit (`tls_server_config`, `basic_auth_users` with bcrypt hashes),
//! so one file serves flowcast and the exporters beside it.
//!
//! Owns parsing and checking the file (every error names the key), building the rustls
//! server configuration, the basic-auth check with a cache of verified credentials (bcrypt
//! is slow on purpose, so verification runs off the runtime and only once per credential),
//! and re-reading the file and the files it names every second: a valid change takes effect
//! for new connections, an invalid one is logged and the last good configuration stays.
//! Relative paths are relative to the web config file, as in exporter-toolkit.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::rustls;
use tracing::{info, warn};

/// How often the file and the files it names are re-read (by the secrets' refresher
/// thread, [`crate::host::secrets::refresh_in_background`]).
pub const RELOAD: Duration = crate::host::secrets::REFRESH;
/// Verified credentials remembered (cleared when full or when the file changes).
const CACHE_LIMIT: usize = 256;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsServerConfig>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

/// `tls_server_config`, the keys flowcast implements.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
}

/// Why a web config was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct WebConfigError {
    path: String,
    problem: String,
}

/// A checked web config, ready to serve with.
pub struct WebConfig {
    /// The TLS configuration, when `tls_server_config` is set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User name → bcrypt hash.
    users: BTreeMap<String, String>,
    /// Every file read, with its bytes, to notice a change.
    read: Vec<(PathBuf, Vec<u8>)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Reads and checks `path` and every file it names.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let fail = |problem: String| WebConfigError {
            path: path.display().to_string(),
            problem,
        };
        let mut read = Vec::new();
        let mut slurp = |key: &str, file: &Path| -> Result<Vec<u8>, WebConfigError> {
            let bytes = std::fs::read(file)
                .map_err(|e| fail(format!("`{key}`: {}: {e}", file.display())))?;
            read.push((file.to_path_buf(), bytes.clone()));
            Ok(bytes)
        };
        let text = slurp("web.config.file", path)?;
        let file: WebConfigFile =
            serde_norway::from_slice(&text).map_err(|e| fail(format!("not a web config: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            check_user(user, hash).map_err(fail)?;
        }
        let tls = match file.tls_server_config {
            None => None,
            Some(t) => Some(Arc::new(tls_config(&t, base, &mut slurp).map_err(
                |e| match e {
                    TlsProblem::Read(e) => e,
                    TlsProblem::Invalid(p) => fail(p),
                },
            )?)),
        };
        Ok(Self { tls, users, read })
    }

    /// Whether the files it was made from still hold the same bytes.
    fn unchanged(&self) -> bool {
        self.read
            .iter()
            .all(|(p, bytes)| std::fs::read(p).is_ok_and(|now| &now == bytes))
    }

    /// Whether basic-auth users are configured.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }
}

/// A user entry: a name and a bcrypt hash that is not the hash of an empty password.
fn check_user(user: &str, hash: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("`basic_auth_users`: an empty user name".into());
    }
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|e| format!("`basic_auth_users.{user}`: not a bcrypt hash: {e}"))?;
    drop(parts);
    if bcrypt::verify("", hash).unwrap_or(false) {
        return Err(format!(
            "`basic_auth_users.{user}`: the hash of an empty password is refused"
        ));
    }
    Ok(())
}

enum TlsProblem {
    Read(WebConfigError),
    Invalid(String),
}

/// The rustls server configuration of `tls_server_config`.
fn tls_config(
    t: &TlsServerConfig,
    base: &Path,
    slurp: &mut impl FnMut(&str, &Path) -> Result<Vec<u8>, WebConfigError>,
) -> Result<rustls::ServerConfig, TlsProblem> {
    let invalid = |s: String| TlsProblem::Invalid(format!("`tls_server_config.{s}"));
    let resolve = |p: &Path| base.join(p);
    let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) else {
        return Err(invalid(
            "cert_file` and `key_file` are both required".into(),
        ));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(
        &slurp("cert_file", &resolve(cert)).map_err(TlsProblem::Read)?,
    )
    .collect::<Result<_, _>>()
    .map_err(|e| invalid(format!("cert_file`: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("cert_file`: no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&slurp("key_file", &resolve(key)).map_err(TlsProblem::Read)?)
            .map_err(|e| invalid(format!("key_file`: not a PEM private key: {e}")))?;
    let versions: &[&rustls::SupportedProtocolVersion] =
        match t.min_version.as_deref().unwrap_or("TLS12") {
            "TLS12" => &[&rustls::version::TLS13, &rustls::version::TLS12],
            "TLS13" => &[&rustls::version::TLS13],
            "TLS10" | "TLS11" => {
                return Err(invalid(
                    "min_version`: TLS 1.0 and 1.1 are not offered: use TLS12 or TLS13".into(),
                ))
            }
            other => {
                return Err(invalid(format!(
                    "min_version`: {other:?} is not TLS12 or TLS13"
                )))
            }
        };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| invalid(format!("min_version`: {e}")))?;
    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let roots = match &t.client_ca_file {
        None => None,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = slurp("client_ca_file", &resolve(ca)).map_err(TlsProblem::Read)?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| invalid(format!("client_ca_file`: not PEM: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| invalid(format!("client_ca_file`: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid(
                    "client_ca_file`: no certificate in the file".into(),
                ));
            }
            Some(Arc::new(roots))
        }
    };
    let verifier = |optional: bool| {
        let roots = roots.clone().ok_or_else(|| {
            invalid(format!(
                "client_auth_type`: {auth_type} needs `client_ca_file`"
            ))
        })?;
        let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots,
            Arc::clone(&provider),
        );
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build()
            .map_err(|e| invalid(format!("client_ca_file`: {e}")))
    };
    let builder = match auth_type {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" => builder.with_client_cert_verifier(verifier(false)?),
        "VerifyClientCertIfGiven" => builder.with_client_cert_verifier(verifier(true)?),
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(invalid(format!(
                "client_auth_type`: {auth_type} accepts unverified certificates; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with `client_ca_file`"
            )))
        }
        other => {
            return Err(invalid(format!(
                "client_auth_type`: {other:?} is not NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )))
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("key_file`: does not match the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What a request's credentials are, against the users of the current web config.
pub enum Credentials {
    /// No users configured: the web config does not decide.
    NotConfigured,
    /// Verified before (cached), or wrong for sure (no such user, empty password).
    Known(bool),
    /// Needs a bcrypt verification: run [`WebConfigWatch::verify`] off the runtime.
    Verify(Pending),
}

/// A credential waiting for its bcrypt verification.
pub struct Pending {
    password: String,
    hash: String,
    key: u64,
}

/// The live web config: the last good one, re-read in the background.
pub struct WebConfigWatch {
    path: PathBuf,
    /// Told whether each reload after a change succeeded.
    on_reload: Box<dyn Fn(bool) + Send + Sync>,
    current: RwLock<Arc<WebConfig>>,
    verified: Mutex<HashMap<u64, ()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for WebConfigWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfigWatch")
            .field("path", &self.path)
            .finish()
    }
}

impl crate::host::secrets::Refresh for WebConfigWatch {
    fn refresh(&self) {
        self.reload_if_changed();
    }
}

impl WebConfigWatch {
    /// Loads `path` (an error refuses to start) and starts re-reading it every [`RELOAD`];
    /// `on_reload` hears whether each reload after a change succeeded.
    pub fn start(
        path: &Path,
        on_reload: impl Fn(bool) + Send + Sync + 'static,
    ) -> Result<Arc<Self>, WebConfigError> {
        let watch = Arc::new(Self {
            path: path.to_path_buf(),
            on_reload: Box::new(on_reload),
            current: RwLock::new(Arc::new(WebConfig::load(path)?)),
            verified: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
        });
        crate::host::secrets::refresh_in_background(&watch);
        Ok(watch)
    }

    /// The configuration new connections and requests use.
    pub fn current(&self) -> Arc<WebConfig> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn reload_if_changed(&self) {
        if self.current().unchanged() {
            return;
        }
        match WebConfig::load(&self.path) {
            Ok(fresh) => {
                info!(path = %self.path.display(), tls = fresh.tls.is_some(), users = fresh.users.len(), "web config reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                (self.on_reload)(true);
            }
            Err(e) => {
                warn!(error = %e, "web config not reloaded; the last good one stays");
                (self.on_reload)(false);
            }
        }
    }

    /// Checks an `Authorization` header against the users, from the cache when it can.
    pub fn credentials(&self, header: Option<&[u8]>) -> Credentials {
        let config = self.current();
        if !config.has_users() {
            return Credentials::NotConfigured;
        }
        let Some((user, password)) = header.and_then(parse_basic) else {
            return Credentials::Known(false);
        };
        let Some(hash) = config.users.get(&user) else {
            return Credentials::Known(false);
        };
        if password.is_empty() {
            return Credentials::Known(false);
        }
        let key = self.hasher.hash_one((&user, &password, hash));
        if self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key)
        {
            return Credentials::Known(true);
        }
        Credentials::Verify(Pending {
            password,
            hash: hash.clone(),
            key,
        })
    }

    /// Runs the bcrypt verification (slow: call it on a blocking thread) and remembers a
    /// success.
    pub fn verify(&self, pending: Pending) -> bool {
        let ok = bcrypt::verify(&pending.password, &pending.hash).unwrap_or(false);
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(pending.key, ());
        }
        ok
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let text = std::str::from_utf8(header).ok()?;
    let encoded = text.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    let (user, password) = pair.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("web.yml");
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Good files load; every refusal names its key.
    #[test]
    fn web_configs_are_checked_key_by_key() {
        let dir = std::env::temp_dir().join(format!("flowcast-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key, ca) = (
            fixture("server.pem"),
            fixture("server.key"),
            fixture("client-ca.pem"),
        );
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let empty = bcrypt::hash("", 4).expect("hash");
        let tls = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        );
        let good = format!(
            "{tls}  client_ca_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\nbasic_auth_users:\n  flow: {hash}\n",
            ca.display()
        );
        let loaded = WebConfig::load(&write(&dir, &good)).expect("good config");
        assert!(loaded.tls.is_some() && loaded.has_users());
        for (text, want) in [
            (format!("{tls}  cipher_suites: [x]\n"), "cipher_suites"),
            (format!("{tls}  min_version: TLS11\n"), "min_version"),
            (
                format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
                "needs `client_ca_file`",
            ),
            (
                format!("{tls}  client_auth_type: Whatever\n"),
                "client_auth_type",
            ),
            (
                "tls_server_config:\n  cert_file: a.pem\n".to_string(),
                "both required",
            ),
            (
                format!(
                    "tls_server_config:\n  cert_file: {}\n  key_file: /nonexistent\n",
                    cert.display()
                ),
                "key_file",
            ),
            (
                "basic_auth_users:\n  flow: plaintext\n".to_string(),
                "not a bcrypt hash",
            ),
            (
                format!("basic_auth_users:\n  flow: {empty}\n"),
                "empty password is refused",
            ),
            ("http_server_config: {}\n".to_string(), "http_server_config"),
        ] {
            let err = WebConfig::load(&write(&dir, &text))
                .expect_err(&text)
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Credentials are checked by bcrypt once, then from the cache; wrong ones never pass.
    #[test]
    fn basic_auth_verifies_once_and_refuses_the_rest() {
        use base64::Engine as _;
        let dir = std::env::temp_dir().join(format!("flowcast-web-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let path = write(&dir, &format!("basic_auth_users:\n  flow: {hash}\n"));
        let watch = WebConfigWatch::start(&path, |_| {}).expect("loads");
        let header = |pair: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
            .into_bytes()
        };
        let Credentials::Verify(p) = watch.credentials(Some(&header("flow:s3cret"))) else {
            panic!("the first check needs bcrypt");
        };
        assert!(watch.verify(p));
        assert!(matches!(
            watch.credentials(Some(&header("flow:s3cret"))),
            Credentials::Known(true)
        ));
        let Credentials::Verify(p) = watch.credentials(Some(&header("flow:wrong"))) else {
            panic!("an unknown password needs bcrypt");
        };
        assert!(!watch.verify(p));
        for refused in ["other:s3cret", "flow:", "nocolon"] {
            assert!(
                matches!(
                    watch.credentials(Some(&header(refused))),
                    Credentials::Known(false)
                ),
                "{refused}"
            );
        }
        assert!(matches!(watch.credentials(None), Credentials::Known(false)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
