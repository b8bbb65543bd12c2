//! Gives back the memory of start-up code once the sidecar is running (Linux).
//!
//! Loading and optimising the model runs a large part of tract's ONNX importer and
//! optimiser exactly once, and configuration parsing, TLS set-up and the state restore
//! run once too. Their code pages stay mapped after start-up (the kernel maps up to 64 kB
//! around every code page fault), so with one series about 21 MB of the 24 MB resident
//! set was the binary's own clean pages, most never used again (BENCHMARKS.md, "Memory").
//!
//! [`release_startup_pages`] hands those pages back once: `MADV_PAGEOUT` reclaims the ones
//! no other process maps, then `MADV_DONTNEED` unmaps the rest. Only mappings of the
//! executable that are not writable and hold no anonymous (copy-on-write) page qualify, so
//! every released page is an unmodified copy of the file: a later access reads the same
//! bytes back (code that keeps running, such as a tick, the scrape and the server, does so
//! within the next interval). The relocated read-only segment (RELRO) holds anonymous pages
//! and is never touched.

use std::fmt;

/// One mapping of the executable that may be released: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
}

/// What one release did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Mappings released.
    pub mappings: usize,
    /// Resident bytes of those mappings before.
    pub resident_before: u64,
    /// Resident bytes of those mappings right after.
    pub resident_after: u64,
}

impl fmt::Display for Released {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mappings, {:.1} MB resident before, {:.1} MB after",
            self.mappings,
            self.resident_before as f64 / 1e6,
            self.resident_after as f64 / 1e6
        )
    }
}

/// One entry of `/proc/self/smaps`, as far as the choice needs it.
#[derive(Debug)]
struct Mapping<'a> {
    span: Span,
    perms: &'a str,
    path: &'a str,
    rss_kb: u64,
    anonymous_kb: u64,
}

/// Reads the entries of an smaps text. A header line is `start-end perms offset dev inode
/// [path]` (the path may hold spaces); the lines after it are `Key: value [kB]`.
fn mappings(smaps: &str) -> Vec<Mapping<'_>> {
    let mut out: Vec<Mapping<'_>> = Vec::new();
    for line in smaps.lines() {
        if let Some(m) = header(line) {
            out.push(m);
        } else if let (Some(m), Some((key, value))) = (out.last_mut(), line.split_once(':')) {
            let kb = || {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            };
            match key {
                "Rss" => m.rss_kb = kb().unwrap_or(0),
                // Unknown counts as written: such a mapping is never released.
                "Anonymous" => m.anonymous_kb = kb().unwrap_or(u64::MAX),
                _ => {}
            }
        }
    }
    out
}

fn header(line: &str) -> Option<Mapping<'_>> {
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let (_offset, _dev, _inode) = (field(), field(), field());
    let (start, end) = range.split_once('-')?;
    let span = Span {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
    };
    if perms.len() != 4 || span.end <= span.start {
        return None;
    }
    Some(Mapping {
        span,
        perms,
        path: rest.trim(),
        rss_kb: 0,
        // Unknown until the Anonymous line says otherwise.
        anonymous_kb: u64::MAX,
    })
}

/// The mappings of `exe` in `smaps` that may be released: private, not writable, and with
/// no anonymous page (never written since the file was mapped).
pub fn releasable(smaps: &str, exe: &str) -> Vec<Span> {
    mappings(smaps)
        .into_iter()
        .filter(|m| {
            m.path == exe && !m.perms.contains('w') && m.perms.ends_with('p') && m.anonymous_kb == 0
        })
        .map(|m| m.span)
        .collect()
}

/// Resident kB of the mappings starting at the addresses of `spans`.
fn resident_kb(smaps: &str, spans: &[Span]) -> u64 {
    mappings(smaps)
        .iter()
        .filter(|m| spans.iter().any(|s| s.start == m.span.start))
        .map(|m| m.rss_kb)
        .sum()
}

/// Releases the resident pages of the executable's clean, read-only mappings (see the
/// module documentation). Not Linux, or nothing to release: an empty report.
pub fn release_startup_pages() -> std::io::Result<Released> {
    #[cfg(target_os = "linux")]
    {
        let exe = std::fs::read_link("/proc/self/exe")?;
        let exe = exe.to_string_lossy();
        let before = std::fs::read_to_string("/proc/self/smaps")?;
        let spans = releasable(&before, &exe);
        for span in &spans {
            sys::release(*span)?;
        }
        sys::trim_heap();
        let after = std::fs::read_to_string("/proc/self/smaps")?;
        Ok(Released {
            mappings: spans.len(),
            resident_before: resident_kb(&before, &spans) * 1024,
            resident_after: resident_kb(&after, &spans) * 1024,
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(Released::default())
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use super::Span;

    /// Returns the heap's free memory (start-up's temporaries) to the system (glibc).
    pub(super) fn trim_heap() {
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free chunks of glibc's own heap.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// `MADV_PAGEOUT` (reclaim the pages only this process maps; Linux 5.4 and later, an
    /// older kernel answers EINVAL and the unmapping alone is done), then `MADV_DONTNEED`.
    pub(super) fn release(span: Span) -> std::io::Result<()> {
        for advice in [libc::MADV_PAGEOUT, libc::MADV_DONTNEED] {
            // SAFETY: `span` is a whole private mapping of the executable that is not
            // writable and has no anonymous page (`releasable`), so each of its pages is
            // an unmodified copy of the file and no Rust value is stored there. Either
            // advice only drops resident copies; the next access faults the same bytes
            // back in from the file. The address and length come from the kernel's own
            // list of this process's mappings, so they are page-aligned and mapped.
            let rc = unsafe {
                libc::madvise(
                    span.start as *mut libc::c_void,
                    span.end - span.start,
                    advice,
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if !(advice == libc::MADV_PAGEOUT && e.raw_os_error() == Some(libc::EINVAL)) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/opt/flow cast/flowcast";

    /// An smaps excerpt of a PIE executable: read-only headers and data, code, the RELRO
    /// segment (read-only now, but written by the dynamic loader), writable data, libc.
    fn smaps() -> String {
        let entry = |range: &str, perms: &str, path: &str, rss: u64, anon: u64| {
            format!(
                "{range} {perms} 00000000 fe:00 5312680                    {path}\n\
                 Size:              10000 kB\nRss:               {rss} kB\n\
                 Anonymous:         {anon} kB\nVmFlags: rd mr mw me dw sd\n"
            )
        };
        [
            entry("564cde710000-564cdeda9000", "r--p", EXE, 4324, 0),
            entry("564cdeda9000-564ce0468000", "r-xp", EXE, 9448, 0),
            entry("564ce0468000-564ce0577000", "r--p", EXE, 1084, 1080),
            entry("564ce0577000-564ce0580000", "rw-p", EXE, 36, 0),
            entry("564ce1e7e000-564ce1ffc000", "rw-p", "[heap]", 1120, 1120),
            entry(
                "7f3fa619a000-7f3fa62f0000",
                "r-xp",
                "/usr/lib/libc.so.6",
                1176,
                0,
            ),
            entry("7f3fa7000000-7f3fa7001000", "r-xs", EXE, 4, 0),
        ]
        .concat()
    }

    #[test]
    fn only_the_executables_clean_read_only_private_mappings_are_releasable() {
        let spans = releasable(&smaps(), EXE);
        assert_eq!(
            spans,
            vec![
                Span {
                    start: 0x564c_de71_0000,
                    end: 0x564c_deda_9000
                },
                Span {
                    start: 0x564c_deda_9000,
                    end: 0x564c_e046_8000
                },
            ]
        );
        assert_eq!(resident_kb(&smaps(), &spans), 4324 + 9448);
        assert!(releasable(&smaps(), "/usr/bin/other").is_empty());
    }

    #[test]
    fn a_mapping_without_an_anonymous_count_is_never_released() {
        let text = smaps().replace("Anonymous:         0 kB\n", "");
        assert!(releasable(&text, EXE).is_empty());
        let garbled = smaps().replace("Anonymous:         0 kB", "Anonymous: many kB");
        assert!(releasable(&garbled, EXE).is_empty());
    }

    #[test]
    fn malformed_headers_are_skipped() {
        for bad in [
            "zz-564c r-xp 0 fe:00 1 /x\nAnonymous: 0 kB\n",
            "5000-4000 r-xp 0 fe:00 1 /x\nAnonymous: 0 kB\n",
            "4000-5000 r-x 0 fe:00 1 /x\nAnonymous: 0 kB\n",
            "",
        ] {
            assert!(releasable(bad, "/x").is_empty(), "{bad:?}");
        }
        assert_eq!(
            releasable("4000-5000 r-xp 0 fe:00 1 /x\nAnonymous: 0 kB\n", "/x").len(),
            1
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_keeps_the_code_running() {
        let r = release_startup_pages().expect("madvise on our own mappings");
        assert!(r.mappings >= 1, "{r}");
        assert!(r.resident_before > 0, "{r}");
        // The released code and data come back on use: this runs code and reads constants
        // from the released mappings again.
        let text = smaps();
        assert_eq!(releasable(&text, EXE).len(), 2);
        assert_eq!(format!("{:x}", 0xdead_u32), "dead");
    }
}
