//! Workspace snapshots as archives: walking a workspace without following links, packing it into
//! a zstd-compressed tar with names stored byte for byte, and restoring such an archive so that
//! nothing it says can reach outside the target directory.
//!
//! Restoring works relative to a directory handle (`cap-std`, `openat`-style) and resolves every
//! name one component at a time without following symlinks: an entry whose parent path holds a
//! symlink is refused, and so are absolute names, `..`, hard links, devices and fifos. A
//! symlink entry is stored as a symlink, never followed while restoring.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use cap_std::fs::{Dir, MetadataExt as _, OpenOptions, OpenOptionsExt as _};

/// zstd level: fast, and still a good ratio on source trees and logs.
const ZSTD_LEVEL: i32 = 3;

/// Room for one entry's header, long name, long link target and pax records. Real names stop
/// at `PATH_MAX` (4 KiB); this stops an archive whose "name" is gigabytes long.
const ENTRY_OVERHEAD: u64 = 64 * 1024;

/// Why an archive cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the entry {} {problem}", quoted(path))]
    Refused { path: Vec<u8>, problem: String },
    #[error(
        "it unpacks to more than {:.1} MB; raise sandbox.workspace_max_mb to restore it",
        *cap as f64 / (1024.0 * 1024.0)
    )]
    TooLarge { cap: u64 },
    #[error("an entry's header or name is larger than {} KiB", ENTRY_OVERHEAD / 1024)]
    OversizedHeader,
}

/// A name as bytes, quoted and escaped (a 0xFF byte shows as `\xFF`, U+FFFD as itself).
fn quoted(bytes: &[u8]) -> String {
    format!("{:?}", OsStr::from_bytes(bytes))
}

fn refused(path: &[u8], problem: impl Into<String>) -> ArchiveError {
    ArchiveError::Refused {
        path: path.to_vec(),
        problem: problem.into(),
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Io { what, source }
}

/// Walk a directory without following links: every entry in a stable order (depth-first, by
/// name bytes), with its exact relative path and metadata.
pub(super) fn walk(
    dir: &Path,
    mut visit: impl FnMut(&Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(prefix) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(dir.join(&prefix))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let relative = prefix.join(name);
            let meta = fs::symlink_metadata(dir.join(&relative))?;
            visit(&relative, &meta)?;
            if meta.is_dir() {
                subdirs.push(relative);
            }
        }
        // Depth-first in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// The directory as a zstd-compressed tar: names and link targets byte for byte (the tar crate
/// writes Unix paths as bytes, with GNU long-name records past 100 bytes), links stored as
/// links, sockets and devices skipped.
pub(super) fn pack(dir: &Path) -> io::Result<Bytes> {
    let encoder = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    walk(dir, |relative, meta| {
        let path = dir.join(relative);
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        if meta.is_dir() {
            header.set_size(0);
            builder.append_data(&mut header, relative, io::empty())
        } else if meta.is_file() {
            let mut file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            // The size of what is read, even if the file changed since the walk saw it.
            let meta = file.metadata()?;
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            builder.append_data(&mut header, relative, (&mut file).take(meta.len()))
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path)?;
            header.set_size(0);
            builder.append_link(&mut header, relative, target)
        } else {
            Ok(())
        }
    })?;
    let encoder = builder.into_inner()?;
    Ok(Bytes::from(encoder.finish()?))
}

/// Restore an archive made by [`pack`] into the empty directory `dir`. Refuses more than `cap`
/// bytes of file content, and every entry that could touch anything outside `dir`. Returns the
/// bytes of content written.
///
/// Regular files, directories and symlinks are restored with their modes (less setuid and
/// setgid: the restoring process is often root) and modification times; they belong to the
/// restoring user (the sandbox hands the tree to the channel's uid before a run). Hard links
/// are refused rather than resolved: [`pack`] never writes one (a file linked twice is stored
/// twice), so a link entry only comes from an archive made elsewhere, and a link to a file
/// outside the workspace would hand that file to the sandbox user.
pub(super) fn unpack(archive: &[u8], dir: &Path, cap: u64) -> Result<u64, ArchiveError> {
    let root = Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(io_error(format!("opening {}", dir.display())))?;
    let decoder = zstd::stream::Decoder::new(archive).map_err(io_error("reading the archive"))?;
    let meter = Rc::new(Meter {
        allowance: Cell::new(ENTRY_OVERHEAD),
        tripped: Cell::new(false),
    });
    let mut archive = tar::Archive::new(Metered {
        inner: decoder,
        meter: meter.clone(),
    });
    let restore = Restore {
        root,
        cached: None,
        directories: BTreeMap::new(),
    };
    match restore.all(&mut archive, &meter, cap) {
        Err(_) if meter.tripped.get() => Err(ArchiveError::OversizedHeader),
        result => result,
    }
}

/// How many more bytes the archive may yield before the next entry.
struct Meter {
    allowance: Cell<u64>,
    tripped: Cell<bool>,
}

/// A reader that fails once more bytes are read than the [`Meter`] allows.
struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.meter.allowance.get();
        if left == 0 && !buf.is_empty() {
            self.meter.tripped.set(true);
            return Err(io::Error::other("archive entry over its byte allowance"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        self.meter.allowance.set(left - read as u64);
        Ok(read)
    }
}

/// The parts of an entry's name: refuses absolute names and `..`; skips empty and `.` parts.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, ArchiveError> {
    if path.first() == Some(&b'/') {
        return Err(refused(path, "has an absolute name"));
    }
    let mut parts = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(refused(path, "has `..` in its name")),
            part => parts.push(part),
        }
    }
    Ok(parts)
}

/// What a name in an opened directory is, looked at without following it.
enum Child {
    Dir(Dir),
    Missing,
    Other,
}

/// Open the directory `name` in `parent` without following a symlink: `lstat` says it is a
/// directory, and the opened handle is that same directory (device and inode), so a swap
/// between the two cannot redirect it. `cap-std` keeps the open itself inside the tree.
fn child(parent: &Dir, name: &OsStr) -> io::Result<Child> {
    let meta = match parent.symlink_metadata(name) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Child::Missing),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(Child::Other);
    }
    let dir = parent.open_dir(name)?;
    let opened = dir.dir_metadata()?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err(io::Error::other(
            "a directory changed while it was being restored",
        ));
    }
    Ok(Child::Dir(dir))
}

/// One restore in progress.
struct Restore {
    /// The target directory; every path is resolved from here.
    root: Dir,
    /// The parent directory of the last entry (entries come grouped by directory). Sound
    /// because a directory, once restored, is never removed or replaced.
    cached: Option<(Vec<Vec<u8>>, Dir)>,
    /// Directory modes and times, set when all contents are written.
    directories: BTreeMap<Vec<Vec<u8>>, (u32, u64)>,
}

impl Restore {
    /// Restore every entry, then the directories' modes and times.
    fn all<R: Read>(
        mut self,
        archive: &mut tar::Archive<R>,
        meter: &Meter,
        cap: u64,
    ) -> Result<u64, ArchiveError> {
        let mut total: u64 = 0;
        for entry in archive.entries().map_err(io_error("reading the archive"))? {
            let mut entry = entry.map_err(io_error("reading the archive"))?;
            total = total.saturating_add(entry.size());
            if total > cap {
                return Err(ArchiveError::TooLarge { cap });
            }
            // This entry's content, then the next entry's header.
            meter
                .allowance
                .set(entry.size().saturating_add(ENTRY_OVERHEAD));
            self.entry(&mut entry)?;
        }
        self.finish()?;
        Ok(total)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let path = entry.path_bytes().into_owned();
        let parts = components(&path)?;
        let Some((name, parents)) = parts.split_last() else {
            // `./` for the target itself: nothing to create.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(refused(&path, "has an empty name"))
            };
        };
        let name = OsStr::from_bytes(name);
        let mode = entry.header().mode().unwrap_or(0o644);
        let mtime = entry.header().mtime().unwrap_or(0);
        if kind.is_hard_link() {
            return Err(refused(&path, "is a hard link"));
        }
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(refused(
                &path,
                format!("is of a kind that is not restored ({kind:?})"),
            ));
        }
        let parent = self.parent(&path, parents)?;
        let what = || format!("restoring {}", quoted(&path));
        let existing = child(&parent, name).map_err(io_error(what()))?;
        match (&existing, kind.is_dir()) {
            (Child::Dir(_), true) => {}
            (Child::Dir(_), false) => {
                return Err(refused(&path, "names an existing directory"));
            }
            // An earlier entry of the same name (archives written before names were exact
            // could hold two): the later one wins; unlinking never follows a symlink.
            (Child::Other, _) => parent.remove_file(name).map_err(io_error(what()))?,
            (Child::Missing, _) => {}
        }
        if kind.is_dir() {
            if !matches!(existing, Child::Dir(_)) {
                parent.create_dir(name).map_err(io_error(what()))?;
            }
            let key = parts.iter().map(|p| p.to_vec()).collect();
            self.directories.insert(key, (mode, mtime));
        } else if kind.is_symlink() {
            let Some(target) = entry.link_name_bytes() else {
                return Err(refused(&path, "is a symlink without a target"));
            };
            parent
                .symlink_contents(OsStr::from_bytes(&target), name)
                .map_err(io_error(what()))?;
        } else {
            // `create_new` is O_EXCL: it never opens or follows what is already there.
            let file = parent
                .open_with(
                    name,
                    OpenOptions::new().write(true).create_new(true).mode(0o600),
                )
                .map_err(io_error(what()))?;
            let mut file = file.into_std();
            io::copy(entry, &mut file).map_err(io_error(what()))?;
            set_mode_and_time(&file, mode & 0o777, mtime).map_err(io_error(what()))?;
        }
        Ok(())
    }

    /// The directory that holds `path`, opened component by component without following a
    /// symlink; missing directories are created.
    fn parent(&mut self, path: &[u8], parents: &[&[u8]]) -> Result<Dir, ArchiveError> {
        let what = || format!("restoring {}", quoted(path));
        if let Some((cached, dir)) = &self.cached
            && cached.iter().map(Vec::as_slice).eq(parents.iter().copied())
        {
            return dir.try_clone().map_err(io_error(what()));
        }
        let mut dir = self.root.try_clone().map_err(io_error(what()))?;
        for (depth, part) in parents.iter().enumerate() {
            let name = OsStr::from_bytes(part);
            dir = match child(&dir, name).map_err(io_error(what()))? {
                Child::Dir(next) => next,
                Child::Missing => {
                    dir.create_dir(name).map_err(io_error(what()))?;
                    match child(&dir, name).map_err(io_error(what()))? {
                        Child::Dir(next) => next,
                        _ => {
                            return Err(refused(path, "has a parent that changed while restoring"));
                        }
                    }
                }
                Child::Other => {
                    return Err(refused(
                        path,
                        format!(
                            "goes through {}, which is a symlink or a file, not a directory",
                            quoted(&parents[..=depth].join(&b'/'))
                        ),
                    ));
                }
            };
        }
        let cached = dir.try_clone().map_err(io_error(what()))?;
        self.cached = Some((parents.iter().map(|p| p.to_vec()).collect(), cached));
        Ok(dir)
    }

    /// Set directory modes and times, deepest first (a read-only directory is filled before
    /// it becomes read-only, and writing into a directory changes its time).
    fn finish(mut self) -> Result<(), ArchiveError> {
        self.cached = None;
        let mut directories: Vec<_> = std::mem::take(&mut self.directories).into_iter().collect();
        directories.sort_by_key(|(parts, _)| std::cmp::Reverse(parts.len()));
        for (parts, (mode, mtime)) in directories {
            let path = parts.join(&b'/');
            let Some((name, parents)) = parts.split_last() else {
                continue;
            };
            let parents: Vec<&[u8]> = parents.iter().map(Vec::as_slice).collect();
            let what = || format!("setting the mode of {}", quoted(&path));
            let parent = self.parent(&path, &parents)?;
            let Child::Dir(dir) =
                child(&parent, OsStr::from_bytes(name)).map_err(io_error(what()))?
            else {
                return Err(refused(&path, "is no longer a directory"));
            };
            // A readable handle of the directory itself (cap-std's directory handles are
            // O_PATH, which fchmod and futimens do not take).
            let file = dir.open(".").map_err(io_error(what()))?.into_std();
            set_mode_and_time(&file, mode & 0o1777, mtime).map_err(io_error(what()))?;
        }
        Ok(())
    }
}

/// `fchmod` and `futimens` on an open file: the inode just created, whatever its name now is.
fn set_mode_and_time(file: &fs::File, mode: u32, mtime: u64) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
}

#[cfg(test)]
mod tests {
    use super::{pack, unpack};
    use std::ffi::OsStr;
    use std::fs;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::{Path, PathBuf};

    /// One entry of a hand-made archive: the bytes go into the header as they are.
    struct Raw<'a> {
        kind: tar::EntryType,
        path: &'a [u8],
        link: &'a [u8],
        mode: u32,
        data: &'a [u8],
    }

    fn raw(kind: tar::EntryType, path: &[u8], mode: u32) -> Raw<'_> {
        Raw {
            kind,
            path,
            link: b"",
            mode,
            data: b"",
        }
    }

    fn link<'a>(kind: tar::EntryType, path: &'a [u8], target: &'a [u8]) -> Raw<'a> {
        Raw {
            link: target,
            ..raw(kind, path, 0o777)
        }
    }

    fn file<'a>(path: &'a [u8], data: &'a [u8]) -> Raw<'a> {
        Raw {
            data,
            ..raw(tar::EntryType::Regular, path, 0o644)
        }
    }

    /// A zstd-compressed tar of `entries`, names and link targets copied byte for byte (the
    /// tar crate's builder refuses `..` and absolute names; an attacker's archive does not).
    fn archive(entries: &[Raw<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(entry.kind);
            header.set_size(entry.data.len() as u64);
            header.set_mode(entry.mode);
            header.set_mtime(1_700_000_000);
            header.as_old_mut().name[..entry.path.len()].copy_from_slice(entry.path);
            header.as_old_mut().linkname[..entry.link.len()].copy_from_slice(entry.link);
            header.set_cksum();
            builder.append(&header, entry.data).unwrap();
        }
        zstd::encode_all(&builder.into_inner().unwrap()[..], 3).unwrap()
    }

    /// A scratch area: `host` stands for a directory of the host outside the workspace (mode
    /// 0700, one file), `dst` is a fresh, empty restore target beside it.
    struct Scene {
        _temp: tempfile::TempDir,
        base: PathBuf,
        host: PathBuf,
    }

    impl Scene {
        fn new() -> Self {
            let temp = tempfile::tempdir().unwrap();
            let base = temp.path().to_path_buf();
            let host = base.join("host");
            fs::create_dir(&host).unwrap();
            fs::write(host.join("keep"), "host file").unwrap();
            fs::set_permissions(host.join("keep"), fs::Permissions::from_mode(0o600)).unwrap();
            fs::set_permissions(&host, fs::Permissions::from_mode(0o700)).unwrap();
            Self {
                _temp: temp,
                base,
                host,
            }
        }

        /// A new empty directory to restore into.
        fn dst(&self, name: &str) -> PathBuf {
            let dst = self.base.join(name);
            fs::create_dir(&dst).unwrap();
            dst
        }

        fn host_bytes(&self) -> Vec<u8> {
            self.host.as_os_str().as_bytes().to_vec()
        }

        /// The host directory is as [`Scene::new`] made it: mode, entries, the file.
        fn assert_host_untouched(&self) {
            let meta = fs::symlink_metadata(&self.host).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o700, "the host dir's mode changed");
            let mut names: Vec<_> = fs::read_dir(&self.host)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            assert_eq!(
                names,
                vec![std::ffi::OsString::from("keep")],
                "host dir changed"
            );
            let keep = fs::symlink_metadata(self.host.join("keep")).unwrap();
            assert_eq!(keep.nlink(), 1, "the host file got a hard link");
            assert_eq!(keep.mode() & 0o7777, 0o600, "the host file's mode changed");
            assert_eq!(fs::read(self.host.join("keep")).unwrap(), b"host file");
        }
    }

    #[test]
    fn tar_slip_by_dotdot_or_absolute_names_is_refused() {
        let scene = Scene::new();
        let host_dir = [scene.host_bytes(), b"/abs-dir".to_vec()].concat();
        let host_file = [scene.host_bytes(), b"/abs-file".to_vec()].concat();
        let cases: Vec<Vec<Raw<'_>>> = vec![
            vec![raw(tar::EntryType::Directory, b"../up-dir", 0o777)],
            vec![raw(tar::EntryType::Directory, b"ok/../../up-dir", 0o777)],
            vec![raw(tar::EntryType::Directory, &host_dir, 0o777)],
            vec![file(b"../up-file", b"x")],
            vec![file(&host_file, b"x")],
            vec![link(tar::EntryType::Symlink, b"../up-link", b"/")],
        ];
        for (i, entries) in cases.iter().enumerate() {
            let dst = scene.dst(&format!("dst{i}"));
            let result = unpack(&archive(entries), &dst, 1 << 20);
            for name in ["up-dir", "up-file", "up-link"] {
                assert!(
                    fs::symlink_metadata(scene.base.join(name)).is_err(),
                    "case {i} wrote {name} outside the workspace"
                );
            }
            scene.assert_host_untouched();
            assert!(result.is_err(), "case {i} was restored");
        }
    }

    #[test]
    fn files_through_a_symlink_are_refused() {
        let scene = Scene::new();
        let host = scene.host_bytes();
        let keep = [scene.host_bytes(), b"/keep".to_vec()].concat();
        let cases: Vec<Vec<Raw<'_>>> = vec![
            vec![
                link(tar::EntryType::Symlink, b"link", &host),
                file(b"link/sub/owned", b"pwned"),
            ],
            vec![
                link(tar::EntryType::Symlink, b"link", &host),
                file(b"link/owned", b"pwned"),
            ],
            vec![
                link(tar::EntryType::Symlink, b"link", &host),
                file(b"link/keep", b"pwned"),
            ],
            vec![
                link(tar::EntryType::Symlink, b"rel", b"../host"),
                file(b"rel/owned", b"pwned"),
            ],
            vec![
                link(tar::EntryType::Symlink, b"link", &host),
                link(tar::EntryType::Symlink, b"link/owned", b"/etc/passwd"),
            ],
            // The directory's mode must not land on the host file the later symlink names.
            vec![
                raw(tar::EntryType::Directory, b"x", 0o777),
                link(tar::EntryType::Symlink, b"x", &keep),
            ],
        ];
        for (i, entries) in cases.iter().enumerate() {
            let dst = scene.dst(&format!("dst{i}"));
            let result = unpack(&archive(entries), &dst, 1 << 20);
            scene.assert_host_untouched();
            assert!(result.is_err(), "case {i} was restored");
        }
    }

    #[test]
    fn directories_through_a_symlink_are_refused() {
        let scene = Scene::new();
        let host = scene.host_bytes();
        let cases: Vec<Vec<Raw<'_>>> = vec![
            vec![
                link(tar::EntryType::Symlink, b"link", &host),
                raw(tar::EntryType::Directory, b"link/pwned", 0o777),
            ],
            vec![
                link(tar::EntryType::Symlink, b"rel", b"../host"),
                raw(tar::EntryType::Directory, b"rel/a/b", 0o777),
            ],
        ];
        for (i, entries) in cases.iter().enumerate() {
            let dst = scene.dst(&format!("dst{i}"));
            let result = unpack(&archive(entries), &dst, 1 << 20);
            scene.assert_host_untouched();
            assert!(result.is_err(), "case {i} was restored");
        }
        // A directory entry named like an existing symlink never changes the link's target.
        let dst = scene.dst("dst-chmod");
        let result = unpack(
            &archive(&[
                link(tar::EntryType::Symlink, b"link", &host),
                raw(tar::EntryType::Directory, b"link", 0o777),
            ]),
            &dst,
            1 << 20,
        );
        scene.assert_host_untouched();
        if result.is_ok() {
            let meta = fs::symlink_metadata(dst.join("link")).unwrap();
            assert!(meta.is_dir(), "the later directory entry wins");
        }
    }

    #[test]
    fn hard_links_are_refused() {
        let scene = Scene::new();
        let host = scene.host_bytes();
        let keep = [scene.host_bytes(), b"/keep".to_vec()].concat();
        let cases: Vec<Vec<Raw<'_>>> = vec![
            vec![link(tar::EntryType::Link, b"hl", &keep)],
            vec![
                link(tar::EntryType::Symlink, b"link", &host),
                link(tar::EntryType::Link, b"hl", b"link/keep"),
            ],
            vec![
                file(b"inside", b"x"),
                link(tar::EntryType::Link, b"hl", b"inside"),
            ],
        ];
        for (i, entries) in cases.iter().enumerate() {
            let dst = scene.dst(&format!("dst{i}"));
            let result = unpack(&archive(entries), &dst, 1 << 20);
            scene.assert_host_untouched();
            assert!(result.is_err(), "case {i} was restored");
        }
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        let scene = Scene::new();
        for (i, kind) in [
            tar::EntryType::Char,
            tar::EntryType::Block,
            tar::EntryType::Fifo,
        ]
        .into_iter()
        .enumerate()
        {
            let dst = scene.dst(&format!("dst{i}"));
            let result = unpack(&archive(&[raw(kind, b"dev", 0o666)]), &dst, 1 << 20);
            assert!(result.is_err(), "{kind:?} was restored");
            assert!(fs::symlink_metadata(dst.join("dev")).is_err());
        }
    }

    /// The review's repro: a directory named byte 0xFF (mode 0777, with `pwned` in it) and a
    /// symlink named U+FFFD to a host directory.
    #[test]
    fn a_0xff_directory_and_a_fffd_symlink_stay_apart() {
        let scene = Scene::new();
        let src = scene.dst("src");
        let ff = OsStr::from_bytes(b"\xff");
        let fffd = OsStr::from_bytes("\u{FFFD}".as_bytes());
        fs::create_dir_all(src.join(ff).join("pwned")).unwrap();
        fs::set_permissions(src.join(ff), fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(
            src.join(ff).join("pwned"),
            fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        symlink(&scene.host, src.join(fffd)).unwrap();
        let archive = pack(&src).unwrap();
        let dst = scene.dst("dst");
        unpack(&archive, &dst, 1 << 20).unwrap();
        scene.assert_host_untouched();
        let dir = fs::symlink_metadata(dst.join(ff)).unwrap();
        assert!(dir.is_dir());
        assert_eq!(dir.mode() & 0o7777, 0o777);
        assert!(
            fs::symlink_metadata(dst.join(ff).join("pwned"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(fs::read_link(dst.join(fffd)).unwrap(), scene.host);
        assert_eq!(listing(&src), listing(&dst));
    }

    /// One entry of a [`listing`]: relative path, kind, mode, mtime, content or link target.
    type Listed = (Vec<u8>, char, u32, i64, Vec<u8>);

    /// Everything a workspace holds, byte-exact.
    fn listing(dir: &Path) -> Vec<Listed> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(relative) = stack.pop() {
            for entry in fs::read_dir(dir.join(&relative)).unwrap() {
                let entry = entry.unwrap();
                let path = relative.join(entry.file_name());
                let meta = fs::symlink_metadata(dir.join(&path)).unwrap();
                let (kind, body) = if meta.is_dir() {
                    stack.push(path.clone());
                    ('d', Vec::new())
                } else if meta.is_file() {
                    let mut body = Vec::new();
                    fs::File::open(dir.join(&path))
                        .unwrap()
                        .read_to_end(&mut body)
                        .unwrap();
                    ('f', body)
                } else {
                    let target = fs::read_link(dir.join(&path)).unwrap();
                    ('l', target.as_os_str().as_bytes().to_vec())
                };
                let mode = if kind == 'l' { 0 } else { meta.mode() & 0o7777 };
                let mtime = if kind == 'l' { 0 } else { meta.mtime() };
                out.push((
                    path.as_os_str().as_bytes().to_vec(),
                    kind,
                    mode,
                    mtime,
                    body,
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_legitimate_workspace_round_trips() {
        let scene = Scene::new();
        let src = scene.dst("src");
        fs::create_dir_all(src.join("src/deep/er")).unwrap();
        fs::create_dir_all(src.join("empty/nested-empty")).unwrap();
        fs::write(src.join("src/deep/er/file.txt"), "hello").unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(src.join("src/secret"), "s").unwrap();
        fs::set_permissions(src.join("src/secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(src.join("readonly")).unwrap();
        fs::write(src.join("readonly/inside"), "ro").unwrap();
        fs::set_permissions(
            src.join("readonly/inside"),
            fs::Permissions::from_mode(0o444),
        )
        .unwrap();
        fs::set_permissions(src.join("readonly"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(src.join("src/deep"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("deep/er/file.txt", src.join("src/link")).unwrap();
        symlink("../src", src.join("empty/up")).unwrap();
        symlink("/usr/bin/python3", src.join("python")).unwrap();
        symlink("missing", src.join("dangling")).unwrap();
        fs::write(src.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")), "bytes").unwrap();
        let long = "a-rather-long-directory-name-".repeat(5);
        fs::create_dir_all(src.join(&long).join(&long)).unwrap();
        fs::write(src.join(&long).join(&long).join("f"), "deep").unwrap();
        symlink(format!("../{long}/{long}/f"), src.join("long-link")).unwrap();
        // Directory times are set after their contents are written.
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        for dir in ["src", "src/deep", "empty", "readonly"] {
            fs::File::open(src.join(dir))
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        let archive = pack(&src).unwrap();
        let dst = scene.dst("dst");
        let bytes = unpack(&archive, &dst, 1 << 20).unwrap();
        assert_eq!(bytes, 5 + 18 + 1 + 2 + 5 + 4);
        assert_eq!(listing(&src), listing(&dst));
        // Put the write bit back so the temporary directory can be removed.
        fs::set_permissions(dst.join("readonly"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(src.join("readonly"), fs::Permissions::from_mode(0o755)).unwrap();
    }
    /// A snapshot written before names were exact: the symlink and the directory share the
    /// name U+FFFD. The later directory replaces the link; nothing reaches the host.
    #[test]
    fn an_old_lossy_archive_with_the_collision_stays_inside() {
        let scene = Scene::new();
        let fffd = "\u{FFFD}".as_bytes();
        let pwned = "\u{FFFD}/pwned".as_bytes();
        let dst = scene.dst("dst");
        unpack(
            &archive(&[
                link(tar::EntryType::Symlink, fffd, &scene.host_bytes()),
                raw(tar::EntryType::Directory, fffd, 0o777),
                raw(tar::EntryType::Directory, pwned, 0o777),
            ]),
            &dst,
            1 << 20,
        )
        .unwrap();
        scene.assert_host_untouched();
        let restored = dst.join(OsStr::from_bytes(fffd));
        assert!(fs::symlink_metadata(&restored).unwrap().is_dir());
        assert!(restored.join("pwned").is_dir());
    }

    #[test]
    fn repeated_names_replace_files_and_never_directories() {
        let scene = Scene::new();
        let dst = scene.dst("files");
        unpack(
            &archive(&[
                link(tar::EntryType::Symlink, b"f", &scene.host_bytes()),
                file(b"f", b"one"),
                file(b"f", b"two"),
            ]),
            &dst,
            1 << 20,
        )
        .unwrap();
        assert_eq!(fs::read(dst.join("f")).unwrap(), b"two");
        scene.assert_host_untouched();
        let dst = scene.dst("dirs");
        let e = unpack(
            &archive(&[
                raw(tar::EntryType::Directory, b"d", 0o755),
                file(b"d/inside", b"x"),
                file(b"d", b"over a directory"),
            ]),
            &dst,
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("existing directory"), "{e}");
        assert_eq!(fs::read(dst.join("d/inside")).unwrap(), b"x");
    }

    #[test]
    fn refusals_say_which_entry_and_why() {
        let scene = Scene::new();
        let host = scene.host_bytes();
        let cases: Vec<(Vec<Raw<'_>>, &str)> = vec![
            (vec![file(b"../x", b"")], "`..`"),
            (vec![file(b"/x", b"")], "absolute"),
            (vec![link(tar::EntryType::Link, b"x", b"y")], "hard link"),
            (vec![raw(tar::EntryType::Fifo, b"x", 0o644)], "Fifo"),
            (
                vec![
                    link(tar::EntryType::Symlink, b"l\xff", &host),
                    file(b"l\xff/x", b""),
                ],
                r#"goes through "l\xFF", which is a symlink"#,
            ),
        ];
        for (i, (entries, expected)) in cases.iter().enumerate() {
            let dst = scene.dst(&format!("dst{i}"));
            let e = unpack(&archive(entries), &dst, 1 << 20).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
        }
    }

    #[test]
    fn setuid_and_setgid_bits_are_dropped() {
        let scene = Scene::new();
        let dst = scene.dst("dst");
        unpack(
            &archive(&[
                Raw {
                    mode: 0o6755,
                    ..file(b"tool", b"#!")
                },
                raw(tar::EntryType::Directory, b"shared", 0o3775),
            ]),
            &dst,
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            fs::metadata(dst.join("tool")).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::metadata(dst.join("shared")).unwrap().mode() & 0o7777,
            0o1775
        );
    }

    #[test]
    fn archives_over_the_cap_are_refused() {
        let scene = Scene::new();
        let src = scene.dst("src");
        fs::write(src.join("a"), vec![7u8; 4096]).unwrap();
        let archive = pack(&src).unwrap();
        let e = unpack(&archive, &scene.dst("small"), 1000).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        assert_eq!(unpack(&archive, &scene.dst("big"), 1 << 20).unwrap(), 4096);
    }

    /// A GNU long-name record is read whole before the entry it names: one of a few MB in a
    /// tiny compressed archive must not be read into memory.
    #[test]
    fn a_huge_long_name_is_refused_before_it_is_read() {
        let scene = Scene::new();
        let name = vec![b'a'; 8 << 20];
        let archive = archive(&[
            Raw {
                data: &name,
                ..raw(tar::EntryType::GNULongName, b"././@LongLink", 0o644)
            },
            file(b"short", b"x"),
        ]);
        assert!(archive.len() < 64 * 1024, "{}", archive.len());
        let e = unpack(&archive, &scene.dst("dst"), 1 << 30).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }
}
