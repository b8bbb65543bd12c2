//! `deploy/Dockerfile` without Docker (not installed here): the structure the issue asks
//! for, and a build context made of exactly the files its build stage copies, which must
//! hold every target file Cargo.toml names (a manifest naming a test or bench file the
//! image does not copy breaks `docker build` at its first cargo command).

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dockerfile() -> String {
    std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("deploy/Dockerfile")
}

#[test]
fn the_image_is_multi_stage_distroless_and_non_root() {
    let text = dockerfile();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let runtime = froms.last().expect("a runtime stage");
    assert!(
        runtime.contains("distroless"),
        "distroless runtime: {runtime}"
    );
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        user.split(':')
            .all(|id| id.parse::<u32>().is_ok_and(|n| n != 0)),
        "numeric non-root user: {user}"
    );
    assert!(text.contains("--locked"), "the build uses Cargo.lock");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("flowcast")),
        "runs flowcast"
    );
}

/// Copies every `COPY <src...> <dst>` of the build stage (sources relative to the
/// repository) into a fresh directory and checks the manifest's targets there.
#[test]
fn the_build_stage_copies_everything_cargo_needs() {
    let text = dockerfile();
    let ctx = std::env::temp_dir().join(format!("flowcast-docker-ctx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).expect("context dir");
    // [0] is the header comment, [1] the build stage, the last the runtime.
    let build_stage = text.split("\nFROM ").nth(1).expect("a build stage");
    let mut copied = 0;
    for line in build_stage.lines().filter(|l| l.starts_with("COPY ")) {
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (sources, _dest) = parts.split_at(parts.len() - 1);
        for src in sources {
            copy_tree(&repo().join(src), &ctx.join(src));
            copied += 1;
        }
    }
    assert!(copied >= 3, "the build stage copies the sources");
    let missing = missing_targets(&ctx);
    let _ = std::fs::remove_dir_all(&ctx);
    assert!(
        missing.is_empty(),
        "Cargo.toml names targets the image does not copy, so cargo cannot parse it: {missing:?}"
    );
}

/// The files of the explicitly declared `[[bin]]`/`[[test]]`/`[[bench]]`/`[[example]]`
/// targets that are missing under `root`, by cargo's rule: `path`, else
/// `<dir>/<name>.rs` or `<dir>/<name>/main.rs`. (`cargo metadata` does not check this and
/// `cargo fetch` needs the network for optional crates, so the rule is applied here.)
fn missing_targets(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let mut missing = Vec::new();
    let mut section = None::<(&str, Option<String>, Option<String>)>;
    let mut check = |s: &Option<(&str, Option<String>, Option<String>)>| {
        if let Some((dir, name, path)) = s {
            let candidates: Vec<PathBuf> = match (path, name) {
                (Some(p), _) => vec![root.join(p)],
                (None, Some(n)) => vec![
                    root.join(dir).join(format!("{n}.rs")),
                    root.join(dir).join(n).join("main.rs"),
                ],
                (None, None) => Vec::new(),
            };
            if !candidates.is_empty() && !candidates.iter().any(|c| c.is_file()) {
                missing.push(format!("{}", candidates[0].display()));
            }
        }
    };
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            check(&section);
            section = match line {
                "[[bin]]" => Some(("src/bin", None, None)),
                "[[test]]" => Some(("tests", None, None)),
                "[[bench]]" => Some(("benches", None, None)),
                "[[example]]" => Some(("examples", None, None)),
                _ => None,
            };
        } else if let Some((_, name, path)) = section.as_mut() {
            let value = |l: &str| {
                l.split_once('=')
                    .map(|(_, v)| v.trim().trim_matches('"').to_string())
            };
            if line.starts_with("name") {
                *name = value(line);
            } else if line.starts_with("path") {
                *path = value(line);
            }
        }
    }
    check(&section);
    missing
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir").flatten() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}
