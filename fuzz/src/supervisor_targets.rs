//! The bodies of the supervisor fuzz targets (`manifest`, `bundle`).
//!
//! Shared by the cargo-fuzz binaries in `fuzz/fuzz_targets/` (through the `plugd_fuzz` library)
//! and by the corpus replay in `supervisor/tests/it/fuzz_corpus.rs` (which includes this file
//! with `#[path]`), so a stable `cargo test` runs every seed through exactly what the fuzzer runs.

use plugd::manifest::bundle::{unpack, BundleLimits};
use plugd::manifest::{parse, validate_limits, Manifest};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `manifest`: parses and validates `data` as a `plugin.toml` (text that is not UTF-8 is
/// skipped, as `manifest::load` refuses it before parsing). An accepted manifest must hold what
/// validation promises; a refused one must say why.
pub fn manifest(data: &[u8]) -> Option<Result<Manifest, String>> {
    let text = std::str::from_utf8(data).ok()?;
    let result = parse(text);
    match &result {
        Ok(m) => {
            assert!(
                !m.name.is_empty() && m.name.len() <= 64,
                "name {:?}",
                m.name
            );
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
                "name {:?}",
                m.name
            );
            assert!(!m.name.starts_with(['-', '_']), "name {:?}", m.name);
            assert!(!m.version.trim().is_empty(), "empty version accepted");
            assert!(!m.command.trim().is_empty(), "empty command accepted");
            for key in m.env.keys() {
                assert!(
                    !key.starts_with("PLUGD_") && !key.is_empty() && !key.contains(['=', '\0']),
                    "env key {key:?} accepted"
                );
            }
            assert!(
                validate_limits(&m.limits).is_ok(),
                "invalid limits accepted"
            );
            let _ = m.program();
        }
        Err(message) => assert!(!message.is_empty(), "a refusal without a reason"),
    }
    Some(result)
}

/// The limits the `bundle` target unpacks with: small, so bombs and entry floods hit them fast.
pub const BUNDLE_LIMITS: BundleLimits = BundleLimits {
    max_entries: 64,
    max_unpacked: 1024 * 1024,
};

/// The directories between the temporary directory and the destination. An entry that climbs
/// out of the destination by up to this many levels plus one lands where the check below sees it.
const ABOVE: [&str; 3] = ["a", "b", "c"];

/// What the `bundle` target saw.
#[derive(Debug)]
pub struct BundleOutcome {
    /// `unpack`'s answer, with the plugin root relative to the destination (empty: the
    /// destination itself).
    pub result: Result<PathBuf, String>,
    /// Regular files found under the destination afterwards.
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// `bundle`: unpacks `data` (a ZIP or a .tar.gz, as an upload would be) into an empty
/// destination under a fresh temporary directory, then checks that nothing was written outside
/// it, that it holds only regular files (no setuid bits) and directories, that the unpacked size
/// stayed within the limit, and that an accepted bundle's root holds a `plugin.toml`.
pub fn bundle(data: &[u8]) -> BundleOutcome {
    let tmp = tempfile::tempdir().expect("create a temporary directory");
    let mut parent = tmp.path().to_path_buf();
    parent.extend(ABOVE);
    let dest = parent.join("dest");
    std::fs::create_dir_all(&dest).expect("create the destination");

    let result = unpack(data, &dest, BUNDLE_LIMITS);

    let mut dir = tmp.path().to_path_buf();
    for name in ABOVE.iter().chain(&["dest"]) {
        assert_eq!(
            names(&dir),
            [name.to_string()],
            "something was written outside the destination, in {}",
            dir.display()
        );
        dir.push(name);
        let meta = std::fs::symlink_metadata(&dir).expect("stat");
        assert!(meta.is_dir(), "{} was replaced", dir.display());
    }
    let (files, bytes) = walk(&dest);
    let result = result.map(|root| {
        let rel = root
            .strip_prefix(&dest)
            .unwrap_or_else(|_| panic!("the plugin root {} is outside", root.display()))
            .to_path_buf();
        assert!(
            rel.components().count() <= 1,
            "root {} too deep",
            rel.display()
        );
        assert!(
            root.join("plugin.toml").is_file(),
            "accepted without plugin.toml"
        );
        rel
    });
    // A refused file is cut one byte past the limit; an accepted bundle stays within it.
    let limit = BUNDLE_LIMITS.max_unpacked + u64::from(result.is_err());
    assert!(bytes <= limit, "{bytes} bytes unpacked, over the limit");
    if let Err(message) = &result {
        assert!(!message.is_empty(), "a refusal without a reason");
    }
    BundleOutcome {
        result,
        files,
        bytes,
    }
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read a directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Counts the regular files under `dir` and their bytes, checking that nothing else is there.
fn walk(dir: &Path) -> (usize, u64) {
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir).expect("read a directory") {
        let path = entry.expect("entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            let (f, b) = walk(&path);
            files += f;
            bytes += b;
        } else if meta.is_file() {
            assert_eq!(
                meta.permissions().mode() & 0o7000,
                0,
                "{} has setuid, setgid or sticky bits",
                path.display()
            );
            files += 1;
            bytes += meta.len();
        } else {
            panic!("{} is neither a file nor a directory", path.display());
        }
    }
    (files, bytes)
}
