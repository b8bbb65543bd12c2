//! Secret files (bearer tokens, passwords) held in memory and refreshed off the runtime,
//! by the one thread that re-reads every file-backed setting.
//!
//! A request must not read a file on a runtime worker: a slow or hung filesystem would
//! stall every connection the worker serves. Each [`SecretFile`] is read once when it is
//! made, then re-read by one background thread every [`REFRESH`], so a rotated secret
//! takes effect within that time with no restart. An unreadable file refuses: `get` gives
//! `None`, and callers treat that as "no credential matches" rather than opening up.
//! Anything else read from files at run time (the web config) registers with the same
//! thread through [`refresh_in_background`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

/// How often the background thread re-reads every secret file.
pub const REFRESH: Duration = Duration::from_secs(1);

/// One secret file's content (trimmed), as last read.
#[derive(Debug)]
pub struct SecretFile {
    path: PathBuf,
    value: RwLock<Option<Arc<str>>>,
}

impl SecretFile {
    /// Reads `path` now (the caller is not on a runtime worker: configuration time) and
    /// registers it with the refresher.
    pub fn watch(path: &Path) -> Arc<Self> {
        let file = Arc::new(Self {
            path: path.to_path_buf(),
            value: RwLock::new(read(path)),
        });
        refresh_in_background(&file);
        file
    }

    /// The content as last read, or `None` when the file could not be read.
    pub fn get(&self) -> Option<Arc<str>> {
        match self.value.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The file's path (for error messages: never its content).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Something re-read from files every [`REFRESH`] on the refresher thread.
pub trait Refresh: Send + Sync {
    /// Re-reads; called off the runtime, never concurrently with itself.
    fn refresh(&self);
}

/// Has the refresher thread call `item.refresh()` every [`REFRESH`] for as long as `item`
/// lives (it holds only a weak reference).
pub fn refresh_in_background<T: Refresh + 'static>(item: &Arc<T>) {
    let item: Arc<dyn Refresh> = Arc::clone(item) as Arc<dyn Refresh>;
    refresher().register(Arc::downgrade(&item));
}

impl Refresh for SecretFile {
    fn refresh(&self) {
        let fresh = read(&self.path);
        let mut value = match self.value.write() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *value != fresh {
            *value = fresh;
        }
    }
}

fn read(path: &Path) -> Option<Arc<str>> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| Arc::from(s.trim()))
}

/// The one thread that re-reads every live [`Refresh`] item; it starts with the first and
/// forgets items that were dropped.
struct Refresher {
    files: Mutex<Vec<Weak<dyn Refresh>>>,
}

impl Refresher {
    fn register(&self, item: Weak<dyn Refresh>) {
        let mut files = match self.files.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        files.retain(|f| f.strong_count() > 0);
        files.push(item);
    }

    fn run(&self) {
        loop {
            std::thread::sleep(REFRESH);
            let live: Vec<Arc<dyn Refresh>> = match self.files.lock() {
                Ok(f) => f.iter().filter_map(Weak::upgrade).collect(),
                Err(poisoned) => poisoned
                    .into_inner()
                    .iter()
                    .filter_map(Weak::upgrade)
                    .collect(),
            };
            for file in live {
                file.refresh();
            }
        }
    }
}

fn refresher() -> &'static Refresher {
    static REFRESHER: OnceLock<&'static Refresher> = OnceLock::new();
    REFRESHER.get_or_init(|| {
        let r: &'static Refresher = Box::leak(Box::new(Refresher {
            files: Mutex::new(Vec::new()),
        }));
        // If the thread cannot start, secrets keep the value read at start.
        let _ = std::thread::Builder::new()
            .name("flowcast-secrets".into())
            .spawn(move || r.run());
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits (bounded) until `file` holds `want`.
    fn until(file: &SecretFile, want: Option<&str>) -> bool {
        let deadline = Instant::now() + REFRESH * 10;
        while Instant::now() < deadline {
            if file.get().as_deref() == want {
                return true;
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
        false
    }

    /// The value is served from memory; a rotated file is picked up by the refresher, a
    /// removed one refuses, and a restored one is used again.
    #[test]
    fn secrets_are_cached_and_follow_the_file() {
        let dir = std::env::temp_dir().join(format!("flowcast-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "first\n").expect("write");
        let file = SecretFile::watch(&path);
        assert_eq!(
            file.get().as_deref(),
            Some("first"),
            "read at once, trimmed"
        );
        std::fs::write(&path, "second").expect("write");
        assert!(until(&file, Some("second")), "rotation picked up");
        std::fs::remove_file(&path).expect("rm");
        assert!(until(&file, None), "an unreadable file refuses");
        std::fs::write(&path, "third").expect("write");
        assert!(until(&file, Some("third")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Any registered item is re-read by the same thread, and only while it lives.
    #[test]
    fn the_one_thread_refreshes_any_registered_item() {
        use std::sync::atomic::{AtomicU32, Ordering};
        struct Counter(AtomicU32);
        impl Refresh for Counter {
            fn refresh(&self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let counter = Arc::new(Counter(AtomicU32::new(0)));
        refresh_in_background(&counter);
        let deadline = Instant::now() + REFRESH * 10;
        while counter.0.load(Ordering::Relaxed) < 2 && Instant::now() < deadline {
            std::thread::park_timeout(Duration::from_millis(20));
        }
        assert!(counter.0.load(Ordering::Relaxed) >= 2, "refreshed twice");
        let weak = Arc::downgrade(&counter);
        drop(counter);
        // The thread holds the item only while it refreshes it.
        let deadline = Instant::now() + REFRESH * 10;
        while weak.strong_count() > 0 && Instant::now() < deadline {
            std::thread::park_timeout(Duration::from_millis(20));
        }
        assert_eq!(weak.strong_count(), 0, "the refresher keeps no item alive");
    }
}
