//! Snapshots of what the sidecar has learnt (`--state-dir`, SPEC.md "State"): every
//! series' ring of minute rates and its online calibration, so a restarted sidecar serves
//! forecasts at once instead of after three hours.
//!
//! Owns the file format and its safety rules, nothing else:
//!
//! * **Format**: `FLOWCAST` magic, a format version, a CRC-32 and the length of the payload,
//!   then the payload (postcard-encoded [`Snapshot`]). Little-endian throughout.
//! * **Atomic writes**: the snapshot is written to a temporary file in the same directory,
//!   fsynced, renamed over the previous one, and the directory is fsynced. A crash at any
//!   point leaves either the old snapshot or the new one, never a mixture.
//! * **Never fatal on read**: a missing, unreadable, truncated, corrupt, foreign-version,
//!   other-model or other-config snapshot is a [`StateError`] that the caller logs before
//!   starting empty.
//! * **Versions**: a version-1 snapshot (minute rings and the LSTM-alone calibration, from
//!   before the online combination) is read and migrated ([`Snapshot::migrated_from`]):
//!   the history is kept and the engine learns the rest again.
//!
//! The engine turns itself into a [`Snapshot`] and back (`Engine::snapshot`,
//! `Engine::restore`); this module only checks identity and bytes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::forecast::band::{Calibrator, Judgement};
use crate::forecast::combine::Combiner;

/// The snapshot's file name inside the state directory.
pub const FILE_NAME: &str = "flowcast.state";
/// The file format version written by this build. Version 1 (before the combination) is
/// still read, and migrated: its minute history is kept, the combination starts afresh.
/// Version 2 (before issue #21's model, whose band keeps a σ per side) is refused with
/// the reason `version`: it was learnt by the version-1 model contract, so none of its
/// calibration applies to this build's model, and the sidecar starts empty (or from
/// backfill) instead.
pub const VERSION: u32 = 3;
const MAGIC: &[u8; 8] = b"FLOWCAST";
const HEADER_LEN: usize = 8 + 4 + 4 + 8;
/// Largest payload read back: far above 10,000 series (about 2 KiB each), far below
/// anything that could exhaust memory.
pub const MAX_PAYLOAD_BYTES: u64 = 256 << 20;

/// Everything a snapshot holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`crate::forecast::model::Model::fingerprint`] of the model that learnt this state.
    pub model: u32,
    /// What the series mean: see [`identity`].
    pub config: String,
    /// Unix seconds when the snapshot was taken.
    pub saved_at: f64,
    /// One entry per series.
    pub series: Vec<SeriesState>,
    /// The format version the file was written in, when it was an older one that this
    /// build migrated on read.
    #[serde(skip)]
    pub migrated_from: Option<u32>,
}

/// One series' history and calibration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesState {
    /// The `by` label values.
    pub key: Vec<String>,
    /// The ring's newest minute.
    pub newest_minute: Option<i64>,
    /// The ring's slots, raw (NaN = hole).
    pub rates: Vec<f32>,
    /// The last positive window scale.
    pub zero_scale: f64,
    /// The online calibration, once the series has had a forecast.
    pub calibrator: Option<Calibrator>,
    /// The latest judgement (anomaly score, out of band), if any.
    pub judgement: Option<Judgement>,
    /// The online combination (a week of steps, the experts' losses); version 2 on.
    pub combiner: Option<Combiner>,
}

/// The identity of a configuration's series: a snapshot taken with another source
/// (selector or query, see `Source::describe`) or other `by` labels holds numbers that mean
/// something else. The band mode is not part of it: a calibrator records its own mode, and
/// the engine starts the calibration of another mode again while keeping the history.
pub fn identity(source: &str, by: &[String]) -> String {
    format!("{source};by={}", by.join(","))
}

/// The version-1 payload, read only to migrate it.
mod v1 {
    use serde::Deserialize;

    use crate::forecast::band::{Calibrator, Judgement};

    #[derive(Deserialize)]
    pub struct Snapshot {
        pub model: u32,
        pub config: String,
        pub saved_at: f64,
        pub series: Vec<SeriesState>,
    }

    #[derive(Deserialize)]
    pub struct SeriesState {
        pub key: Vec<String>,
        pub newest_minute: Option<i64>,
        pub rates: Vec<f32>,
        pub zero_scale: f64,
        pub calibrator: Option<Calibrator>,
        pub judgement: Option<Judgement>,
    }

    impl Snapshot {
        /// The same in the current form: identity without the band (version 1 wrote
        /// `;band=<Mode>` at its end), no combiner.
        pub fn migrate(self) -> super::Snapshot {
            let config = match self.config.rfind(";band=") {
                Some(at) => {
                    let rest = &self.config[at + 1..];
                    let end = rest.find(';').map_or(self.config.len(), |e| at + 1 + e);
                    format!("{}{}", &self.config[..at], &self.config[end..])
                }
                None => self.config,
            };
            super::Snapshot {
                model: self.model,
                config,
                saved_at: self.saved_at,
                series: self
                    .series
                    .into_iter()
                    .map(|s| super::SeriesState {
                        key: s.key,
                        newest_minute: s.newest_minute,
                        rates: s.rates,
                        zero_scale: s.zero_scale,
                        calibrator: s.calibrator,
                        judgement: s.judgement,
                        combiner: None,
                    })
                    .collect(),
                migrated_from: Some(1),
            }
        }
    }
}

/// Why a snapshot could not be written or was not restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No snapshot yet (a first start): not a problem.
    #[error("no snapshot at {0}")]
    Missing(PathBuf),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a readable snapshot (truncated, corrupt, not ours).
    #[error("{path}: not a usable snapshot: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Written by another format version.
    #[error(
        "{path}: snapshot format version {found}, this build reads 1 and {VERSION} \
         (version 2 was learnt by the model before issue #21 and is not carried over)"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Learnt with another model or another configuration.
    #[error("{path}: snapshot belongs to {what} ({found}), not this one ({expected})")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// `model` or `config`.
        what: &'static str,
        /// The snapshot's value.
        found: String,
        /// This process's value.
        expected: String,
    },
}

impl StateError {
    /// The bounded `reason` of `flowcast_state_failures_total` for a failed write: the
    /// state directory is gone (`write_missing`), is not a directory
    /// (`write_not_a_directory`), cannot be written (`write_permission`: permissions or a
    /// read-only mount), is full (`write_no_space`: ENOSPC or a quota), or another error
    /// (`write_io`).
    pub fn write_reason(&self) -> &'static str {
        use std::io::ErrorKind as K;
        let StateError::Io { source, .. } = self else {
            return "write_io";
        };
        match (source.kind(), source.raw_os_error()) {
            (K::NotFound, _) | (_, Some(2)) => "write_missing",
            (K::NotADirectory, _) | (_, Some(20)) => "write_not_a_directory",
            (K::PermissionDenied | K::ReadOnlyFilesystem, _) | (_, Some(1 | 13 | 30)) => {
                "write_permission"
            }
            (K::StorageFull | K::QuotaExceeded, _) | (_, Some(28 | 122)) => "write_no_space",
            _ => "write_io",
        }
    }

    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            StateError::Missing(_) => "missing",
            StateError::Io { .. } => "io",
            StateError::Corrupt { .. } => "corrupt",
            StateError::Version { .. } => "version",
            StateError::Foreign { .. } => "foreign",
        }
    }
}

/// The snapshot file of a state directory.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Encodes a snapshot into the file format.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail; an empty payload would be refused on read.
    frame(&postcard::to_stdvec(snapshot).unwrap_or_default())
}

/// Wraps an encoded payload in the header (magic, version, CRC, length). Public so that
/// the fuzzer can reach the payload decoder with well-framed garbage.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    frame_version(payload, VERSION)
}

/// [`frame`] with another format version (tests of the migration write version 1).
pub fn frame_version(payload: &[u8], version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes the file format (the identity is checked by [`read`]).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Snapshot, StateError> {
    let corrupt = |reason: &str| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt("shorter than the header"));
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if &header[..8] != MAGIC {
        return Err(corrupt("no flowcast magic"));
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = word(8);
    if version != VERSION && version != 1 {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let crc = word(12);
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let len = u64::from_le_bytes(len);
    if len != payload.len() as u64 {
        return Err(corrupt(&format!(
            "payload is {} bytes, header says {len} (truncated?)",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let undecodable = |e: postcard::Error| corrupt(&format!("cannot decode: {e}"));
    if version == 1 {
        return postcard::from_bytes::<v1::Snapshot>(payload)
            .map(v1::Snapshot::migrate)
            .map_err(undecodable);
    }
    postcard::from_bytes(payload).map_err(undecodable)
}

/// Reads the snapshot in `dir` and checks that it was learnt by this model and config.
pub fn read(dir: &Path, model: u32, config: &str) -> Result<Snapshot, StateError> {
    let path = path_in(dir);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StateError::Missing(path));
        }
        Err(e) => return Err(io(e)),
    };
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_PAYLOAD_BYTES + HEADER_LEN as u64 {
        return Err(StateError::Corrupt {
            path,
            reason: format!("{size} bytes is larger than any snapshot this build writes"),
        });
    }
    let bytes = fs::read(&path).map_err(io)?;
    let snapshot = decode(&bytes, &path)?;
    if snapshot.model != model {
        return Err(StateError::Foreign {
            path,
            what: "model",
            found: format!("{:08x}", snapshot.model),
            expected: format!("{model:08x}"),
        });
    }
    if snapshot.config != config {
        return Err(StateError::Foreign {
            path,
            what: "config",
            found: snapshot.config,
            expected: config.to_string(),
        });
    }
    Ok(snapshot)
}

/// Writes `snapshot` into `dir` atomically (temporary file, fsync, rename, fsync of the
/// directory). Blocking: call it from a blocking thread. Returns the bytes written.
/// `pause_halfway` is a test's scripted fault (`host::faults::snapshot_pause`, `None` in a
/// shipped build): the writer stops that long with half of the temporary file written.
pub fn write(
    dir: &Path,
    snapshot: &Snapshot,
    pause_halfway: Option<std::time::Duration>,
) -> Result<usize, StateError> {
    let bytes = encode(snapshot);
    let path = path_in(dir);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io { path: p, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    match pause_halfway {
        Some(pause) => {
            let half = bytes.len() / 2;
            file.write_all(&bytes[..half]).map_err(io(&tmp))?;
            file.flush().map_err(io(&tmp))?;
            std::thread::sleep(pause);
            file.write_all(&bytes[half..]).map_err(io(&tmp))?;
        }
        None => file.write_all(&bytes).map_err(io(&tmp))?,
    }
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    // The rename is durable only once the directory entry is; not every platform can open
    // a directory for syncing, and the data itself is already safe, so this is best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::history::RING_MINUTES;
    use proptest::prelude::*;

    /// Each cause of a failed write has its own bounded reason (issue #23), from the error
    /// kind or, where the platform reports none, the errno.
    #[test]
    fn write_failures_are_named_by_their_cause() {
        let io = |e: std::io::Error| StateError::Io {
            path: PathBuf::from("/state"),
            source: e,
        };
        use std::io::{Error, ErrorKind};
        for (e, want) in [
            (Error::from(ErrorKind::NotFound), "write_missing"),
            (Error::from_raw_os_error(20), "write_not_a_directory"),
            (Error::from(ErrorKind::PermissionDenied), "write_permission"),
            (Error::from_raw_os_error(30), "write_permission"),
            (Error::from_raw_os_error(28), "write_no_space"),
            (Error::from_raw_os_error(122), "write_no_space"),
            (Error::from(ErrorKind::Interrupted), "write_io"),
        ] {
            assert_eq!(io(e).write_reason(), want);
        }
        assert_eq!(
            StateError::Missing(PathBuf::from("/x")).write_reason(),
            "write_io"
        );
        // A real one: the directory is a file.
        let file = std::env::temp_dir().join(format!("flowcast-notadir-{}", std::process::id()));
        fs::write(&file, "x").expect("file");
        let e = write(&file, &sample(), None).expect_err("not a directory");
        assert_eq!(e.write_reason(), "write_not_a_directory", "{e}");
        let _ = fs::remove_file(&file);
    }

    fn sample() -> Snapshot {
        let mut rates = vec![f32::NAN; RING_MINUTES];
        rates[3] = 12.5;
        rates[4] = 0.0;
        Snapshot {
            model: 0xDEAD_BEEF,
            config: identity("http_requests_total", &["route".into()]),
            saved_at: 1.7e9,
            series: vec![SeriesState {
                key: vec!["/api/\"orders\"\n".into()],
                newest_minute: Some(28_000_000),
                rates,
                zero_scale: 3.5,
                calibrator: None,
                judgement: None,
                combiner: None,
            }],
            migrated_from: None,
        }
    }

    fn same(a: &Snapshot, b: &Snapshot) -> bool {
        // NaN != NaN, so compare encodings.
        postcard::to_stdvec(a).ok() == postcard::to_stdvec(b).ok()
    }

    #[test]
    fn round_trips_through_a_directory() {
        let dir = tempdir();
        let s = sample();
        write(&dir, &s, None).expect("writes");
        let back = read(&dir, s.model, &s.config).expect("reads");
        assert!(same(&s, &back));
        assert!(!dir.join(format!("{FILE_NAME}.tmp")).exists());
    }

    #[test]
    fn refuses_other_model_config_version_and_damage() {
        let dir = tempdir();
        let s = sample();
        write(&dir, &s, None).expect("writes");
        let e = read(&dir, s.model ^ 1, &s.config).expect_err("other model");
        assert!(
            matches!(e, StateError::Foreign { what: "model", .. }),
            "{e}"
        );
        let e = read(&dir, s.model, "selector=x;by=").expect_err("other config");
        assert!(
            matches!(e, StateError::Foreign { what: "config", .. }),
            "{e}"
        );

        let path = path_in(&dir);
        let good = fs::read(&path).expect("read");
        let mut version = good.clone();
        version[8] = 9;
        fs::write(&path, &version).expect("write");
        assert_eq!(
            read(&dir, s.model, &s.config).expect_err("v9").reason(),
            "version"
        );
        // Version 2, the format before issue #21's model: refused with its reason, even
        // with a payload that decodes.
        let payload = &good[HEADER_LEN..];
        fs::write(&path, frame_version(payload, 2)).expect("write");
        let e = read(&dir, s.model, &s.config).expect_err("v2");
        assert_eq!(e.reason(), "version", "{e}");
        assert!(e.to_string().contains("issue #21"), "{e}");

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        fs::write(&path, &flipped).expect("write");
        let e = read(&dir, s.model, &s.config).expect_err("flipped");
        assert!(e.to_string().contains("checksum"), "{e}");

        fs::write(&path, &good[..good.len() - 7]).expect("write");
        let e = read(&dir, s.model, &s.config).expect_err("truncated");
        assert!(e.to_string().contains("truncated"), "{e}");

        fs::write(&path, b"{\"series\": []}").expect("write");
        assert_eq!(
            read(&dir, s.model, &s.config).expect_err("json").reason(),
            "corrupt"
        );

        fs::remove_file(&path).expect("rm");
        assert_eq!(
            read(&dir, s.model, &s.config).expect_err("gone").reason(),
            "missing"
        );
    }

    #[test]
    fn a_leftover_temporary_file_does_not_hide_the_snapshot() {
        // What a crash mid-write leaves behind: a partial temporary file beside the last
        // complete snapshot. The complete one is read; the next write replaces both.
        let dir = tempdir();
        let s = sample();
        write(&dir, &s, None).expect("writes");
        let partial = encode(&s);
        fs::write(
            dir.join(format!("{FILE_NAME}.tmp")),
            &partial[..partial.len() / 2],
        )
        .expect("write");
        assert!(read(&dir, s.model, &s.config).is_ok());
        write(&dir, &s, None).expect("writes over the leftover");
        assert!(!dir.join(format!("{FILE_NAME}.tmp")).exists());
    }

    /// A version-1 file (written before the combination) is read and migrated: same
    /// history and calibration, the band mode dropped from the identity (the shard kept),
    /// no combiner yet.
    #[test]
    fn a_version_1_snapshot_is_migrated() {
        #[derive(Serialize)]
        struct SeriesV1 {
            key: Vec<String>,
            newest_minute: Option<i64>,
            rates: Vec<f32>,
            zero_scale: f64,
            calibrator: Option<Calibrator>,
            judgement: Option<Judgement>,
        }
        #[derive(Serialize)]
        struct SnapshotV1 {
            model: u32,
            config: String,
            saved_at: f64,
            series: Vec<SeriesV1>,
        }
        let now = sample();
        let old = SnapshotV1 {
            model: now.model,
            config: format!("{};band=Calibrated;shard=1/4", now.config),
            saved_at: now.saved_at,
            series: vec![SeriesV1 {
                key: now.series[0].key.clone(),
                newest_minute: now.series[0].newest_minute,
                rates: now.series[0].rates.clone(),
                zero_scale: 3.5,
                calibrator: None,
                judgement: None,
            }],
        };
        let bytes = frame_version(&postcard::to_stdvec(&old).expect("encodes"), 1);
        let back = decode(&bytes, Path::new("v1")).expect("migrated");
        assert_eq!(back.migrated_from, Some(1));
        assert_eq!(back.config, format!("{};shard=1/4", now.config));
        assert!(back.series[0].combiner.is_none());
        let mut expected = now.clone();
        expected.config = back.config.clone();
        assert!(same(&back, &expected));
        // The current version is not mistaken for the old one, nor is anything else.
        assert_eq!(
            decode(&encode(&now), Path::new("v3"))
                .expect("v3")
                .migrated_from,
            None
        );
        let e = decode(&frame_version(b"x", 4), Path::new("v4")).expect_err("v4");
        assert_eq!(e.reason(), "version");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_and_mutated_bytes_never_panic(
            noise in proptest::collection::vec(any::<u8>(), 0..512),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let p = Path::new("x");
            let _ = decode(&noise, p);
            let mut bytes = encode(&sample());
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] ^= v;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = decode(&bytes, p);
        }
    }

    fn tempdir() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flowcast-state-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
