//! How much disk a workspace takes, measured while a command runs so that the run can be
//! stopped when it passes `sandbox.workspace_max_mb`; and, after such a run, taking back what
//! the run added.
//!
//! An entry counts as the larger of its size and its allocated blocks, and at least
//! [`ENTRY_BYTES`] (so millions of empty files are not free). Nothing is followed: symbolic
//! links count as links, and entries that vanish during a walk are skipped.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::{self, ErrorKind};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The least an entry (file, directory, link) counts for: one file-system block.
pub const ENTRY_BYTES: u64 = 4096;

/// What one entry costs.
pub fn charge(meta: &Metadata) -> u64 {
    let size = if meta.is_file() { meta.len() } else { 0 };
    size.max(meta.blocks().saturating_mul(512)).max(ENTRY_BYTES)
}

/// The workspace's size, stopping early (with a total over `stop_above`) once it is over.
pub fn measure(dir: &Path, stop_above: u64) -> io::Result<u64> {
    let mut total = 0u64;
    walk(dir, &mut |_, meta| {
        total = total.saturating_add(charge(meta));
        if total > stop_above {
            Walk::Stop
        } else {
            Walk::Continue
        }
    })?;
    Ok(total)
}

/// What the workspace held before a run: each entry's identity and charge, by relative path.
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<PathBuf, (u64, u64, u64)>,
    total: u64,
}

impl Index {
    pub fn take(dir: &Path) -> io::Result<Self> {
        let mut index = Index::default();
        walk(dir, &mut |relative, meta| {
            let cost = charge(meta);
            index.total = index.total.saturating_add(cost);
            index
                .entries
                .insert(relative.to_path_buf(), (meta.dev(), meta.ino(), cost));
            Walk::Continue
        })?;
        Ok(index)
    }

    /// The workspace's size when the index was taken.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Remove what was added since the index was taken: new files, links and directories
    /// (with everything in them), and files that grew. Returns the bytes given back. Only for
    /// a workspace no command is using.
    pub fn remove_additions(&self, dir: &Path) -> io::Result<u64> {
        let mut doomed: Vec<(PathBuf, bool, u64)> = Vec::new();
        walk(dir, &mut |relative, meta| {
            let known = self
                .entries
                .get(relative)
                .filter(|(dev, ino, _)| *dev == meta.dev() && *ino == meta.ino());
            match known {
                None => {
                    doomed.push((relative.to_path_buf(), meta.is_dir(), charge(meta)));
                    Walk::SkipChildren
                }
                Some((_, _, before)) if !meta.is_dir() && charge(meta) > *before => {
                    doomed.push((relative.to_path_buf(), false, charge(meta)));
                    Walk::Continue
                }
                Some(_) => Walk::Continue,
            }
        })?;
        let mut freed = 0u64;
        for (relative, is_dir, cost) in doomed {
            let path = dir.join(&relative);
            let removed = if is_dir {
                let inside = measure(&path, u64::MAX).unwrap_or(cost);
                fs::remove_dir_all(&path).map(|()| inside)
            } else {
                fs::remove_file(&path).map(|()| cost)
            };
            match removed {
                Ok(bytes) => freed = freed.saturating_add(bytes),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(freed)
    }
}

enum Walk {
    Continue,
    SkipChildren,
    Stop,
}

/// Visit every entry under `dir` (not `dir` itself) with its path relative to `dir`, without
/// following links.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &Metadata) -> Walk) -> io::Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let entries = match fs::read_dir(dir.join(&relative)) {
            Ok(entries) => entries,
            // Removed (or replaced by a file) while we walked.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // DirEntry::metadata does not follow symbolic links.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let path = relative.join(entry.file_name());
            match visit(&path, &meta) {
                Walk::Stop => return Ok(()),
                Walk::SkipChildren => {}
                Walk::Continue => {
                    if meta.is_dir() {
                        stack.push(path);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_count_blocks_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..10 {
            fs::write(root.join(format!("empty-{i}")), "").unwrap();
        }
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/data"), vec![1u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let total = measure(root, u64::MAX).unwrap();
        // 10 empty files, a link and a directory at one block each, 100 KB of data.
        assert!(total >= 12 * ENTRY_BYTES + 100_000, "{total}");
        assert!(total < 12 * ENTRY_BYTES + 100_000 + 16 * 1024, "{total}");
        // Early stop: over the bound, and no further.
        let partial = measure(root, 5 * ENTRY_BYTES).unwrap();
        assert!(partial > 5 * ENTRY_BYTES && partial <= total, "{partial}");
    }

    #[test]
    fn additions_are_removed_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("src")).unwrap();
        fs::write(root.join("src/main.py"), "print(1)\n").unwrap();
        fs::write(root.join("notes.txt"), "keep").unwrap();
        fs::write(root.join("log.txt"), "small").unwrap();
        let index = Index::take(root).unwrap();
        // The run: new files, a new tree, a file that grew.
        fs::write(root.join("big.bin"), vec![0u8; 300_000]).unwrap();
        fs::create_dir_all(root.join("src/cache/deep")).unwrap();
        fs::write(root.join("src/cache/deep/x"), vec![0u8; 50_000]).unwrap();
        fs::write(root.join("log.txt"), vec![b'x'; 200_000]).unwrap();
        let freed = index.remove_additions(root).unwrap();
        assert!(freed >= 550_000, "{freed}");
        assert!(root.join("src/main.py").exists());
        assert!(!root.join("big.bin").exists());
        assert!(!root.join("src/cache").exists());
        assert!(!root.join("log.txt").exists());
        assert_eq!(fs::read_to_string(root.join("notes.txt")).unwrap(), "keep");
        assert!(measure(root, u64::MAX).unwrap() <= index.total());
    }
}
