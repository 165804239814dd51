//! Plugin bundles: a `.zip` or `.tar.gz` holding a plugin directory, unpacked with suspicion.
//!
//! Every entry is checked before anything is written: no absolute paths, no `..`, no links, no
//! device files or FIFOs, at most [`BundleLimits::max_entries`] entries and
//! [`BundleLimits::max_unpacked`] bytes unpacked (counted while decompressing, so a bomb is
//! stopped when it crosses the limit, not after). Bundles are unpacked into a staging directory
//! that the caller moves into place only when everything passed, so a refused bundle leaves the
//! plugins directory untouched.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// How much a bundle may hold.
#[derive(Debug, Clone, Copy)]
pub struct BundleLimits {
    /// Entries (files and directories).
    pub max_entries: usize,
    /// Bytes of all files once unpacked.
    pub max_unpacked: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_entries: 2000,
            max_unpacked: 256 * 1024 * 1024,
        }
    }
}

/// Unpacks `bytes` (zip or gzip-compressed tar, told apart by their magic bytes) into `dest`,
/// which must exist and be empty. Returns the directory holding `plugin.toml`: `dest` itself,
/// or its single top-level directory when the bundle wraps the plugin in one.
pub fn unpack(bytes: &[u8], dest: &Path, limits: BundleLimits) -> Result<PathBuf, String> {
    let mut budget = Budget {
        limits,
        entries: 0,
        bytes: 0,
    };
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        unpack_zip(bytes, dest, &mut budget)?;
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        unpack_tar_gz(bytes, dest, &mut budget)?;
    } else {
        return Err("the bundle is neither a .zip nor a .tar.gz archive".into());
    }
    if dest.join("plugin.toml").is_file() {
        return Ok(dest.to_path_buf());
    }
    let dirs: Vec<PathBuf> = std::fs::read_dir(dest)
        .map_err(|e| format!("cannot read the unpacked bundle: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    match dirs.as_slice() {
        [only] if only.join("plugin.toml").is_file() => Ok(only.clone()),
        _ => Err("the bundle has no plugin.toml at its top level".into()),
    }
}

struct Budget {
    limits: BundleLimits,
    entries: usize,
    bytes: u64,
}

impl Budget {
    fn entry(&mut self, name: &str) -> Result<(), String> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(format!(
                "the bundle has more than {} entries (at {name:?})",
                self.limits.max_entries
            ));
        }
        Ok(())
    }

    /// Copies one file's content, stopping as soon as the unpacked total crosses the limit.
    fn copy(
        &mut self,
        name: &str,
        mut from: impl Read,
        to: &Path,
        mode: u32,
    ) -> Result<(), String> {
        let left = self.limits.max_unpacked - self.bytes;
        let mut file =
            std::fs::File::create(to).map_err(|e| format!("cannot write {name:?}: {e}"))?;
        let copied = std::io::copy(&mut (&mut from).take(left + 1), &mut file)
            .map_err(|e| format!("cannot unpack {name:?}: {e}"))?;
        if copied > left {
            return Err(format!(
                "the bundle unpacks to more than {} bytes (at {name:?}): refused as a possible archive bomb",
                self.limits.max_unpacked
            ));
        }
        self.bytes += copied;
        file.flush()
            .map_err(|e| format!("cannot write {name:?}: {e}"))?;
        // Keep the executable bits, never setuid, setgid or sticky; group and others read-only.
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set permissions of {name:?}: {e}"))
    }
}

/// The safe relative path of an entry, or why it is refused.
fn safe_path(name: &str) -> Result<PathBuf, String> {
    if name.contains('\0') || name.contains('\\') {
        return Err(format!(
            "entry {name:?} has a forbidden character in its name"
        ));
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("entry {name:?} climbs out of the bundle with '..'"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry {name:?} has an absolute path"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("entry {name:?} has an empty path"));
    }
    Ok(out)
}

fn make_dirs(dest: &Path, rel: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dest.join(rel))
        .map_err(|e| format!("cannot create {}: {e}", rel.display()))
}

fn unpack_zip(bytes: &[u8], dest: &Path, budget: &mut Budget) -> Result<(), String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("the zip archive is unreadable: {e}"))?;
    if archive.len() > budget.limits.max_entries {
        return Err(format!(
            "the bundle has {} entries, more than the {} allowed",
            archive.len(),
            budget.limits.max_entries
        ));
    }
    for i in 0..archive.len() {
        let file = archive
            .by_index(i)
            .map_err(|e| format!("zip entry {i} is unreadable: {e}"))?;
        let name = file.name().to_owned();
        budget.entry(&name)?;
        let rel = safe_path(&name)?;
        let kind = file.unix_mode().map_or(0, |m| m & 0o170000);
        if file.is_symlink() || kind == 0o120000 {
            return Err(format!(
                "entry {name:?} is a symbolic link; links are not allowed"
            ));
        }
        if file.is_dir() {
            make_dirs(dest, &rel)?;
            continue;
        }
        if kind != 0 && kind != 0o100000 {
            return Err(format!("entry {name:?} is not a regular file"));
        }
        if file.size() > budget.limits.max_unpacked - budget.bytes {
            return Err(format!(
                "the bundle unpacks to more than {} bytes (at {name:?}): refused as a possible archive bomb",
                budget.limits.max_unpacked
            ));
        }
        if let Some(parent) = rel.parent() {
            make_dirs(dest, parent)?;
        }
        let mode = file.unix_mode().unwrap_or(0o644);
        budget.copy(&name, file, &dest.join(&rel), mode)?;
    }
    Ok(())
}

fn unpack_tar_gz(bytes: &[u8], dest: &Path, budget: &mut Budget) -> Result<(), String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = archive
        .entries()
        .map_err(|e| format!("the tar.gz archive is unreadable: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("the tar.gz archive is unreadable: {e}"))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        budget.entry(&name)?;
        let rel = safe_path(&name)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        match kind {
            tar::EntryType::Directory => make_dirs(dest, &rel)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().unwrap_or(u64::MAX);
                if size > budget.limits.max_unpacked - budget.bytes {
                    return Err(format!(
                        "the bundle unpacks to more than {} bytes (at {name:?}): refused as a possible archive bomb",
                        budget.limits.max_unpacked
                    ));
                }
                if let Some(parent) = rel.parent() {
                    make_dirs(dest, parent)?;
                }
                budget.copy(&name, entry, &dest.join(&rel), mode)?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(format!("entry {name:?} is a link; links are not allowed"))
            }
            // pax and GNU long-name headers describe the next entry; the tar crate applies them.
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(format!(
                    "entry {name:?} is a {other:?}, not a regular file or directory"
                ))
            }
        }
    }
    Ok(())
}

/// The file in an installed plugin's directory naming the bundle it came from.
pub const MARKER: &str = ".bundle-sha256";

/// Unpacks `body` into `.install-*` under the plugins directory, validates its manifest, and
/// renames it into place as `<plugins_dir>/<name>` (moving an older version aside first), with
/// a [`MARKER`] holding `sha256`. Returns the manifest and whether it replaced a version.
pub fn place(
    body: &[u8],
    sha256: &str,
    plugins_dir: &Path,
) -> Result<(crate::manifest::Manifest, bool), String> {
    let staging = plugins_dir.join(format!(".install-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let result = (|| {
        let root = unpack(body, &staging, BundleLimits::default())?;
        let manifest = crate::manifest::load(&root.join(crate::manifest::MANIFEST_FILE))
            .map_err(|e| format!("the bundle's manifest is invalid: {}", e.message))?;
        std::fs::write(root.join(MARKER), sha256)
            .map_err(|e| format!("cannot mark the bundle: {e}"))?;
        let target = plugins_dir.join(&manifest.name);
        let upgraded = target.exists();
        let old = plugins_dir.join(format!(
            ".old-{}-{:016x}",
            manifest.name,
            rand::random::<u64>()
        ));
        if upgraded {
            std::fs::rename(&target, &old)
                .map_err(|e| format!("cannot move the old version aside: {e}"))?;
        }
        if let Err(e) = std::fs::rename(&root, &target) {
            if upgraded {
                let _ = std::fs::rename(&old, &target);
            }
            return Err(format!("cannot move the bundle into place: {e}"));
        }
        let _ = std::fs::remove_dir_all(&old);
        let manifest = crate::manifest::load(&target.join(crate::manifest::MANIFEST_FILE))
            .map_err(|e| e.to_string())?;
        Ok((manifest, upgraded))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Removes an installed plugin's directory: first renamed out of discovery's sight (a
/// dot-directory), so a rescan never sees it half-deleted, then deleted. Blocking. Only the
/// rename can fail the removal: a trash directory that cannot be deleted is logged and left.
pub fn remove_installed(plugins_dir: &Path, dir: &Path, name: &str) -> std::io::Result<()> {
    let trash = plugins_dir.join(format!(".trash-{name}-{:016x}", rand::random::<u64>()));
    std::fs::rename(dir, &trash)?;
    if let Err(e) = std::fs::remove_dir_all(&trash) {
        tracing::warn!("cannot delete {}: {e}", trash.display());
    }
    Ok(())
}

/// The sha256 of the bundle a plugin directory was installed from, if it was.
pub fn installed_sha256(plugin_dir: &Path) -> Option<String> {
    std::fs::read_to_string(plugin_dir.join(MARKER))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The sha256 of a bundle, in hex.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default();
            for (name, data) in entries {
                w.start_file(*name, opts).expect("start");
                w.write_all(data).expect("write");
            }
            w.finish().expect("finish");
        }
        buf.into_inner()
    }

    fn tar_gz_of(
        build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>),
    ) -> Vec<u8> {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        build(&mut b);
        b.into_inner().expect("tar").finish().expect("gz")
    }

    fn file(b: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).expect("append");
    }

    fn refused(bytes: &[u8], limits: BundleLimits) -> (String, usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = unpack(bytes, dir.path(), limits).expect_err("refused");
        let written = walk(dir.path());
        (err, written)
    }

    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        1 + if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            0
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    #[test]
    fn good_bundles_unpack_with_or_without_a_top_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = zip_of(&[
            ("plugin.toml", b"name = \"a\""),
            ("bin/run", b"#!/bin/sh\n"),
        ]);
        let root = unpack(&bytes, dir.path(), BundleLimits::default()).expect("zip");
        assert_eq!(root, dir.path());
        assert!(root.join("bin/run").is_file());

        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = tar_gz_of(|b| {
            file(b, "hello-1.0/plugin.toml", b"name = \"a\"");
            file(b, "hello-1.0/run.sh", b"#!/bin/sh\n");
        });
        let root = unpack(&bytes, dir.path(), BundleLimits::default()).expect("tar.gz");
        assert_eq!(root, dir.path().join("hello-1.0"));
        let mode = std::fs::metadata(root.join("run.sh"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn traversal_absolute_paths_and_links_are_refused() {
        let limits = BundleLimits::default();
        let (err, _) = refused(&zip_of(&[("../evil", b"x")]), limits);
        assert!(err.contains("'..'"), "{err}");
        let (err, _) = refused(&zip_of(&[("/etc/evil", b"x")]), limits);
        assert!(err.contains("absolute"), "{err}");
        let link = tar_gz_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "plugin.toml", "/etc/passwd")
                .expect("link");
        });
        let (err, written) = refused(&link, limits);
        assert!(err.contains("link"), "{err}");
        assert_eq!(written, 0);
        let device = tar_gz_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Char);
            h.set_size(0);
            b.append_data(&mut h, "null", std::io::empty())
                .expect("dev");
        });
        let (err, _) = refused(&device, limits);
        assert!(err.contains("Char"), "{err}");
    }

    #[test]
    fn bombs_and_entry_floods_are_stopped_at_the_limit() {
        let limits = BundleLimits {
            max_entries: 10,
            max_unpacked: 1024 * 1024,
        };
        // 64 MiB of zeros compresses to almost nothing.
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let (err, _) = refused(&tar_gz_of(|b| file(b, "plugin.toml", &zeros)), limits);
        assert!(err.contains("archive bomb"), "{err}");
        let (err, _) = refused(&zip_of(&[("plugin.toml", &zeros)]), limits);
        assert!(err.contains("archive bomb"), "{err}");
        let many: Vec<(String, &[u8])> = (0..20).map(|i| (format!("f{i}"), &b"x"[..])).collect();
        let refs: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let (err, _) = refused(&zip_of(&refs), limits);
        assert!(err.contains("entries"), "{err}");
        let (err, _) = refused(b"not an archive", limits);
        assert!(err.contains("neither"), "{err}");
    }
}
