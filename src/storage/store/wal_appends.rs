//! The SQLite writer's log written with a few system calls per commit, not two per page.
//!
//! SQLite appends a frame to its write-ahead log as two writes (the 24-byte frame header, then
//! the page), so a commit of 85 pages made 170 `pwrite` calls, and the kernel's work per call
//! and per partly written page was a fifth of the writer's time at full speed. This VFS is the
//! platform's own with one change: the log's appends are gathered in memory and written (in
//! pieces of up to 120 KiB) once the commit's last frame is complete. SQLite makes a commit
//! visible to readers (in the log's shared-memory index) only after that frame is written, so
//! no reader ever finds a frame that is not in the file, and a process killed before that
//! point loses only a commit nobody had seen (as it would have without gathering).
//!
//! Everything else reaches the file as before: a write anywhere but at the end of the last one
//! (the log's header, a page rewritten in place, checksums rewritten), reads, syncs, size,
//! truncation and closing first write what is gathered. Only the writer's connection opens its
//! database through this VFS, and only the log is wrapped: the database file and the shared
//! memory are the platform VFS's own, shared with every other connection as usual.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

use rusqlite::ffi;

/// The name the writer's connection opens its database with.
const NAME: &CStr = c"ecdysis-gathered-log";

/// A frame header: page number, database size in pages after a commit (0 when the frame is
/// not a commit's last), salts and checksums (SQLite's WAL file format).
const FRAME_HEADER: usize = 24;

/// What is gathered is written once it reaches this size, commit or not (a commit carries a
/// few hundred KB at full speed; a large import is written in pieces of this size).
const MOST_GATHERED: usize = 1 << 20;

/// The most one call writes: the platform VFS's write (unix's `seekAndWriteFd`) keeps the low
/// 17 bits of a length, so a write of 128 KiB or more would be cut short.
const MOST_PER_WRITE: usize = 120 * 1024;

/// The platform VFS this one wraps, set once at registration.
static PLATFORM: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Register the VFS (once per process) and return its name, for
/// `Connection::open_with_flags_and_vfs`.
pub(super) fn vfs() -> rusqlite::Result<&'static CStr> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    let rc = *REGISTERED.get_or_init(register);
    if rc == ffi::SQLITE_OK {
        Ok(NAME)
    } else {
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some("cannot register the writer's VFS".into()),
        ))
    }
}

/// A copy of the platform's default VFS that opens logs through [`open`].
fn register() -> c_int {
    // SAFETY: `sqlite3_vfs_find` returns the default VFS, which lives as long as the process;
    // the copy is leaked, so it does too, as `sqlite3_vfs_register` requires.
    unsafe {
        let platform = ffi::sqlite3_vfs_find(ptr::null());
        if platform.is_null() {
            return ffi::SQLITE_ERROR;
        }
        let Ok(size) = c_int::try_from(inner_offset() + (*platform).szOsFile as usize) else {
            return ffi::SQLITE_ERROR;
        };
        PLATFORM.store(platform, Ordering::Release);
        let mut vfs = *platform;
        vfs.pNext = ptr::null_mut();
        vfs.zName = NAME.as_ptr();
        vfs.szOsFile = size;
        vfs.xOpen = Some(open);
        ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0)
    }
}

/// An open log: SQLite's file object first (so SQLite can use it as one), the platform's file
/// object for the same file after this struct, in the same allocation.
#[repr(C)]
struct GatheredLog {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// Appends not yet written, from file offset `start` on.
    gathered: Vec<u8>,
    start: i64,
    /// Where the last write ended (-1: unknown); an append is a write that begins there.
    end: i64,
    /// The last write was the header of a commit's last frame: the next append is its page.
    commit_header: bool,
}

/// Where the platform's file object begins inside ours (SQLite allocates 8-byte aligned).
const fn inner_offset() -> usize {
    (size_of::<GatheredLog>() + 7) & !7
}

/// Open a file: the log wrapped, any other file as the platform opens it.
unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let platform = PLATFORM.load(Ordering::Acquire);
    // SAFETY: registration set `platform` before this VFS could be found; SQLite allocated
    // `file` with this VFS's `szOsFile` bytes, room for our object and the platform's.
    unsafe {
        let Some(platform_open) = (*platform).xOpen else {
            return ffi::SQLITE_ERROR;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return platform_open(platform, name, file, flags, out_flags);
        }
        let inner = file
            .cast::<u8>()
            .add(inner_offset())
            .cast::<ffi::sqlite3_file>();
        let rc = platform_open(platform, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // Not opened: SQLite does not close a file whose methods are null.
            (*file).pMethods = ptr::null();
            return rc;
        }
        file.cast::<GatheredLog>().write(GatheredLog {
            base: ffi::sqlite3_file {
                pMethods: &LOG_METHODS,
            },
            inner,
            gathered: Vec::new(),
            start: 0,
            end: -1,
            commit_header: false,
        });
        ffi::SQLITE_OK
    }
}

/// The log's methods: version 1 (SQLite maps and shares memory through the database file,
/// never through the log).
static LOG_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Call the platform file's method `$method` with `$args` (an I/O error if it has none).
macro_rules! platform {
    ($log:expr, $method:ident $(, $arg:expr)*) => {{
        let inner = $log.inner;
        match (*(*inner).pMethods).$method {
            Some(method) => method(inner $(, $arg)*),
            None => ffi::SQLITE_IOERR,
        }
    }};
}

impl GatheredLog {
    /// # Safety
    /// `file` is a log opened by [`open`] and not yet closed.
    unsafe fn of<'a>(file: *mut ffi::sqlite3_file) -> &'a mut GatheredLog {
        // SAFETY: the caller's promise; SQLite uses a file from one thread at a time.
        unsafe { &mut *file.cast::<GatheredLog>() }
    }

    /// Write what is gathered.
    unsafe fn flush(&mut self) -> c_int {
        let mut rc = ffi::SQLITE_OK;
        let mut offset = self.start;
        for piece in self.gathered.chunks(MOST_PER_WRITE) {
            let data = piece.as_ptr().cast::<c_void>();
            // SAFETY: `inner` is the platform's open file; `data` holds the piece's bytes.
            rc = unsafe { platform!(self, xWrite, data, piece.len() as c_int, offset) };
            if rc != ffi::SQLITE_OK {
                break;
            }
            offset += piece.len() as i64;
        }
        self.gathered.clear();
        if rc != ffi::SQLITE_OK {
            // The file may hold part of it: where the next append goes is no longer known.
            self.end = -1;
        }
        rc
    }

    /// Gather an append, or write anything else at once (after what is gathered).
    unsafe fn write(&mut self, data: &[u8], offset: i64) -> c_int {
        let is_commit_header = data.len() == FRAME_HEADER && data[4..8] != [0; 4];
        let end = offset + data.len() as i64;
        if offset != self.end {
            // SAFETY: as for `flush`; `data` is SQLite's buffer of `data.len()` bytes.
            let rc = unsafe { self.flush() };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let amount = data.len() as c_int;
            let rc = unsafe { platform!(self, xWrite, data.as_ptr().cast(), amount, offset) };
            self.end = if rc == ffi::SQLITE_OK { end } else { -1 };
            self.commit_header = is_commit_header;
            return rc;
        }
        if self.gathered.is_empty() {
            self.start = offset;
        }
        self.gathered.extend_from_slice(data);
        self.end = end;
        let completes_commit = std::mem::replace(&mut self.commit_header, is_commit_header);
        if completes_commit || self.gathered.len() >= MOST_GATHERED {
            // SAFETY: as for `flush`.
            return unsafe { self.flush() };
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a log it opened through `open`, once; our fields are dropped here,
    // SQLite frees the memory.
    unsafe {
        let log = GatheredLog::of(file);
        let flushed = log.flush();
        let closed = platform!(log, xClose);
        ptr::drop_in_place(&mut log.gathered);
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes its buffer of `amount` bytes and a log opened through `open`.
    unsafe {
        let data = std::slice::from_raw_parts(data.cast::<u8>(), len);
        GatheredLog::of(file).write(data, offset)
    }
}

/// Write what is gathered, then `then`; the write's error if it failed (nothing else done).
///
/// # Safety
/// `file` is a log opened by [`open`] and not yet closed.
unsafe fn after_flush(
    file: *mut ffi::sqlite3_file,
    then: impl FnOnce(&mut GatheredLog) -> c_int,
) -> c_int {
    // SAFETY: the caller's promise.
    let log = unsafe { GatheredLog::of(file) };
    match unsafe { log.flush() } {
        ffi::SQLITE_OK => then(log),
        failed => failed,
    }
}

// SAFETY (each method below): SQLite calls it with a log opened through `open`, and with
// pointers valid for what the platform's method of the same name takes.

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    unsafe { after_flush(file, |log| platform!(log, xRead, data, amount, offset)) }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    unsafe {
        after_flush(file, |log| {
            log.end = -1;
            platform!(log, xTruncate, size)
        })
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    unsafe { after_flush(file, |log| platform!(log, xSync, flags)) }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    unsafe { after_flush(file, |log| platform!(log, xFileSize, size)) }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    unsafe { after_flush(file, |log| platform!(log, xFileControl, op, arg)) }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe { platform!(GatheredLog::of(file), xLock, level) }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe { platform!(GatheredLog::of(file), xUnlock, level) }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    unsafe { platform!(GatheredLog::of(file), xCheckReservedLock, out) }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let log = GatheredLog::of(file);
        match (*(*log.inner).pMethods).xSectorSize {
            Some(method) => method(log.inner),
            None => 4096,
        }
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let log = GatheredLog::of(file);
        match (*(*log.inner).pMethods).xDeviceCharacteristics {
            Some(method) => method(log.inner),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};

    use super::*;

    /// Write system calls this thread has made so far.
    fn writes_so_far() -> u64 {
        std::fs::read_to_string("/proc/thread-self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A connection to `file` with a write-ahead log, through `vfs` (None: the platform's).
    fn connect(file: &std::path::Path, vfs: Option<&CStr>) -> Connection {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(file, flags, vfs).unwrap(),
            None => Connection::open_with_flags(file, flags).unwrap(),
        };
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0")
            .unwrap();
        conn
    }

    /// Commit `rows` rows of 600 bytes each in one transaction; the write calls it took.
    fn commit_rows(conn: &Connection, first: i64, rows: i64) -> u64 {
        conn.execute_batch("BEGIN").unwrap();
        for id in first..first + rows {
            conn.execute("INSERT INTO t (id, body) VALUES (?1, zeroblob(600))", [id])
                .unwrap();
        }
        let before = writes_so_far();
        conn.execute_batch("COMMIT").unwrap();
        writes_so_far() - before
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    fn integrity(conn: &Connection) -> String {
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_commit_takes_a_few_writes_and_other_connections_see_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gathered.db");
        let writer = connect(&file, Some(vfs().unwrap()));
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
            .unwrap();
        // Readers use the platform's VFS, as the store's read pool does.
        let reader = connect(&file, None);
        for round in 0..10 {
            // 200 rows of 600 bytes: ~30 table pages and their parents per commit.
            let writes = commit_rows(&writer, round * 200, 200);
            assert!(
                writes <= 3,
                "round {round}: {writes} write calls for one commit"
            );
            assert_eq!(count(&reader), (round + 1) * 200);
        }
        assert_eq!(integrity(&reader), "ok");

        // The same commits through the platform's VFS: two calls per page, so the count above
        // is not a measurement that cannot fail.
        let plain_file = dir.path().join("plain.db");
        let plain = connect(&plain_file, None);
        plain
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
            .unwrap();
        let writes = commit_rows(&plain, 0, 200);
        assert!(writes >= 60, "{writes} write calls without gathering");
    }

    #[test]
    fn spills_rollbacks_and_restarted_logs_keep_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gathered.db");
        let writer = connect(&file, Some(vfs().unwrap()));
        // A cache of 10 pages: a large transaction spills pages into the log before its
        // commit, and pages written again are rewritten in place there.
        writer
            .execute_batch(
                "PRAGMA cache_size = 10;
                 CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB);
                 CREATE INDEX t_body ON t (length(body), id);",
            )
            .unwrap();
        let reader = connect(&file, None);
        let mut expected = 0;
        for round in 0..6 {
            commit_rows(&writer, round * 1000, 400);
            expected += 400;
            // A transaction that spills, then rolls back: its frames were never committed.
            writer.execute_batch("BEGIN").unwrap();
            writer
                .execute(
                    "INSERT INTO t (id, body) SELECT id + 500, zeroblob(900) FROM t
                     WHERE id BETWEEN ?1 AND ?1 + 300",
                    [round * 1000],
                )
                .unwrap();
            writer
                .execute(
                    "UPDATE t SET body = zeroblob(700) WHERE id < ?1",
                    [round * 1000],
                )
                .unwrap();
            writer.execute_batch("ROLLBACK").unwrap();
            // Rows changed all over the table in one commit (pages spilled and rewritten).
            writer
                .execute(
                    "UPDATE t SET body = zeroblob(650) WHERE id % 3 = ?1",
                    [round % 3],
                )
                .unwrap();
            assert_eq!(count(&reader), expected, "round {round}");
            if round % 2 == 1 {
                // Emptied by a checkpoint: the next commit starts the log again at its header.
                reader
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .unwrap();
            }
        }
        assert_eq!(integrity(&reader), "ok");
        assert_eq!(integrity(&writer), "ok");
        drop(reader);
        drop(writer);
        // Opened again from the files alone.
        let again = connect(&file, None);
        assert_eq!(count(&again), expected);
        assert_eq!(integrity(&again), "ok");
    }
}
