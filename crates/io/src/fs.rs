//! File-system helpers of the data path: atomic writes that only ever replace a regular file,
//! reading that refuses anything but a regular file, and gzip sniffing and decompression.
//!
//! Why refuse special files: renaming a temporary file over a FIFO, a device (`/dev/stdout`) or a
//! directory would silently replace it instead of writing to it, and opening a FIFO for reading
//! blocks until a writer appears (forever, for a mistyped path). Both give [`Error::NotRegularFile`]
//! naming the path instead.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn not_regular(path: &Path, kind: impl Into<String>) -> Error {
    Error::NotRegularFile {
        path: path.to_path_buf(),
        kind: kind.into(),
    }
}

/// What a (non-regular) file is, in words.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "FIFO";
        }
        if ft.is_char_device() {
            return "character device";
        }
        if ft.is_block_device() {
            return "block device";
        }
        if ft.is_socket() {
            return "socket";
        }
    }
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// The file an atomic write of `path` renames over: `path` itself when it does not exist or is a
/// regular file; the file a symbolic link resolves to when that is a regular file (so the link
/// survives and keeps pointing at the new content); an error naming `path` for anything else
/// (FIFO, device, directory, socket, a link to one of those, a dangling link).
fn replace_target(path: &Path) -> Result<PathBuf> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(io_err(path, e)),
    };
    if meta.is_file() {
        return Ok(path.to_path_buf());
    }
    if !meta.file_type().is_symlink() {
        return Err(not_regular(path, kind_of(meta.file_type())));
    }
    match std::fs::metadata(path) {
        Ok(target) if target.is_file() => std::fs::canonicalize(path).map_err(|e| io_err(path, e)),
        Ok(target) => Err(not_regular(
            path,
            format!("symbolic link to a {}", kind_of(target.file_type())),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(not_regular(path, "dangling symbolic link"))
        }
        Err(e) => Err(io_err(path, e)),
    }
}

/// A temporary name next to `target`, unique per process and call: `.<name>.tmp<pid>-<n>`.
fn temp_path(target: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", target.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(target.with_file_name(tmp_name))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename over
/// `path`. Readers see the old content or the new, never a partial file. `path` must not exist or
/// be a regular file (or a symbolic link to one, which is kept: its target is replaced); anything
/// else is [`Error::NotRegularFile`] and left as it is. The parent folder must exist. On failure
/// the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] for callers that serialise straight into the file: `write` gets a buffered
/// writer on the temporary file; an error it returns (e.g. `std::io::Error::other(serde_error)`)
/// aborts the write, removes the temporary file and comes back as [`Error::Io`] naming `path`.
pub fn write_atomic_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let target = replace_target(path)?;
    let tmp = temp_path(&target)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_err(path, e))?;
    let result = (|| {
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &target)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, source));
    }
    // Make the rename itself durable (best effort: not every platform can sync a folder).
    #[cfg(unix)]
    if let Some(dir) = target.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file (symbolic links followed); anything else is
/// [`Error::NotRegularFile`], without blocking on a FIFO. A missing file is [`Error::Io`].
pub fn open_regular(path: &Path) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    // Non-blocking open: a FIFO without a writer opens at once (and is then refused) instead of
    // hanging; the flag changes nothing for a regular file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| io_err(path, e))?;
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, kind_of(meta.file_type())));
    }
    Ok(file)
}

/// Reads a whole regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut bytes = Vec::with_capacity(len);
    file.read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    Ok(bytes)
}

/// Whether `bytes` start with the gzip magic.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// The most a deflate stream can expand: 1032 output bytes per input byte (zlib's documented bound
/// for the longest match per code). A multi-member gzip file obeys it member by member, so
/// `1032 * file length` bounds any gzip file's decoded size.
pub const MAX_DEFLATE_RATIO: u64 = 1032;

/// How many bytes a gzip stream may decode to beyond the size its header declares (a file may
/// carry some bytes after its content) before [`gunzip_bounded`] refuses it.
pub const TRAILING_SLACK: u64 = 1 << 20;

/// Memory the OS could give this process now (`MemAvailable` of `/proc/meminfo`), or `None` where
/// that is unknown (other platforms, restricted `/proc`).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Reads a whole regular file, decompressing it when it is gzip (detected by content, not name),
/// with the decoded size bounded by [`gunzip_bounded`]'s rules.
pub fn read_maybe_gz_bounded(
    path: &Path,
    prefix: usize,
    declared: impl FnOnce(&[u8]) -> Result<u64>,
) -> Result<Vec<u8>> {
    let raw = read_regular(path)?;
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    gunzip_bounded(&raw, path, prefix, declared)
}

/// Decompresses a (possibly multi-member) gzip buffer (CRC-32 and length of every member are
/// checked). Errors are [`Error::Gzip`] naming `path`. Bounded like [`gunzip_bounded`] with no
/// header: at most [`MAX_DEFLATE_RATIO`] times the input and the memory available.
pub fn gunzip(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    gunzip_bounded(raw, path, 0, |_| Ok(u64::MAX))
}

/// Decompresses a gzip buffer whose content starts with a header that declares the content's size,
/// without ever holding more than that size: the first `prefix` decoded bytes (or all of them, if
/// fewer) are passed to `declared`, which returns the decoded size the header promises (or an error
/// for a bad header). That size is then checked before anything larger is allocated: it must fit
/// the input ([`MAX_DEFLATE_RATIO`]) and the memory available ([`available_memory`]), and decoding
/// stops with an error as soon as the stream yields more than it (and [`TRAILING_SLACK`]). So a
/// small "gzip bomb" costs at most what its header honestly declares, never what its stream would
/// expand to.
pub fn gunzip_bounded(
    raw: &[u8],
    path: &Path,
    prefix: usize,
    declared: impl FnOnce(&[u8]) -> Result<u64>,
) -> Result<Vec<u8>> {
    let gz_err = |kind: std::io::ErrorKind, msg: String| Error::Gzip {
        path: path.to_path_buf(),
        source: std::io::Error::new(kind, msg),
    };
    let ratio_bound = (raw.len() as u64).saturating_mul(MAX_DEFLATE_RATIO);
    let too_large = |size: u64, why: String| Error::TooLarge {
        path: path.to_path_buf(),
        size,
        reason: why,
    };
    let longer_than = |limit: u64| {
        too_large(
            limit,
            format!("the stream decodes to more than the {limit} bytes its header declares"),
        )
    };
    // The limit is known once `prefix` bytes are decoded; until then decode only that many.
    let mut declared = Some(declared);
    let mut limit: Option<u64> = None;
    let mut decide = |head: &[u8]| -> Result<u64> {
        let Some(f) = declared.take() else {
            return Ok(u64::MAX);
        };
        let size = f(head)?;
        if size == u64::MAX {
            // Nothing declared: deflate's own bound is all there is.
            return Ok(ratio_bound);
        }
        if size > ratio_bound {
            return Err(too_large(
                size,
                format!(
                    "its header declares {size} bytes, more than a {}-byte gzip file can hold",
                    raw.len()
                ),
            ));
        }
        if let Some(mem) = available_memory() {
            if size > mem {
                return Err(too_large(
                    size,
                    format!("decoding needs {size} bytes; {mem} bytes of memory are available"),
                ));
            }
        }
        Ok(size.saturating_add(TRAILING_SLACK).min(ratio_bound))
    };
    // ISIZE (last 4 bytes) is the uncompressed size mod 2^32 (of the last member): a capacity hint.
    let hint = match raw.len().checked_sub(4) {
        Some(at) => u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]) as u64,
        None => 0,
    };
    let mut out: Vec<u8> = Vec::with_capacity(prefix);
    if prefix == 0 {
        limit = Some(decide(&[])?);
    }
    let mut input = raw;
    loop {
        let mut inflate = flate2::Decompress::new_gzip(15);
        loop {
            if limit.is_none() && out.len() >= prefix {
                limit = Some(decide(&out[..prefix])?);
            }
            if out.len() == out.capacity() {
                let want = match limit {
                    // +1: a full buffer would cost one more call just to see the stream end, and
                    // a byte past the limit is how an over-long stream is caught.
                    Some(limit) => {
                        let room = limit.saturating_add(1).saturating_sub(out.len() as u64);
                        if room == 0 {
                            return Err(longer_than(limit));
                        }
                        let first = hint.max(out.len() as u64).max(1 << 16);
                        usize::try_from(room.min(first)).unwrap_or(usize::MAX)
                    }
                    None => prefix - out.len(),
                };
                out.reserve_exact(want);
            }
            let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
            let consumed = usize::try_from(before_in).unwrap_or(usize::MAX);
            let status = inflate
                .decompress_vec(
                    input.get(consumed..).unwrap_or_default(),
                    &mut out,
                    flate2::FlushDecompress::Finish,
                )
                .map_err(|e| gz_err(std::io::ErrorKind::InvalidData, e.to_string()))?;
            if status == flate2::Status::StreamEnd {
                break;
            }
            if inflate.total_in() == before_in && inflate.total_out() == before_out {
                // Room left in `out` and nothing consumed: the input ended inside the member.
                return Err(gz_err(
                    std::io::ErrorKind::UnexpectedEof,
                    "gzip stream ends before its end marker".into(),
                ));
            }
        }
        if let Some(limit) = limit {
            if out.len() as u64 > limit {
                return Err(longer_than(limit));
            }
        }
        let consumed = usize::try_from(inflate.total_in()).unwrap_or(usize::MAX);
        input = input.get(consumed..).unwrap_or_default();
        if input.is_empty() {
            if limit.is_none() {
                // Shorter than the header: let the format's own check name what is missing.
                decide(&out)?;
            }
            return Ok(out);
        }
        if !is_gzip(input) {
            return Err(gz_err(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} bytes after the gzip stream are not another gzip member",
                    input.len()
                ),
            ));
        }
    }
}

/// An exclusive advisory lock on a folder (`flock` on `<dir>/.lock`), held until the guard is
/// dropped. The OS releases it when the process dies, so a killed run never leaves a stale lock.
/// Re-entrant within one process: a second guard for the same folder shares the first one's lock.
#[derive(Debug)]
pub struct FolderLock {
    key: PathBuf,
}

type LockTable = std::sync::Mutex<std::collections::HashMap<PathBuf, (File, usize)>>;

fn lock_table() -> &'static LockTable {
    static TABLE: std::sync::OnceLock<LockTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Takes the lock of `dir` (which must exist) without waiting: [`Error::Locked`] when another
/// process holds it.
pub fn lock_folder(dir: &Path) -> Result<FolderLock> {
    let key = std::fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
    let mut table = lock_table()
        .lock()
        .map_err(|_| Error::Invalid("folder lock table poisoned".into()))?;
    if let Some((_, count)) = table.get_mut(&key) {
        *count += 1;
        return Ok(FolderLock { key });
    }
    let path = key.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
                Error::Locked {
                    path: dir.to_path_buf(),
                }
            } else {
                io_err(&path, err)
            });
        }
    }
    table.insert(key.clone(), (file, 1));
    Ok(FolderLock { key })
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        if let Ok(mut table) = lock_table().lock() {
            let last = match table.get_mut(&self.key) {
                Some((_, count)) => {
                    *count -= 1;
                    *count == 0
                }
                None => false,
            };
            if last {
                // closing the descriptor releases the flock
                table.remove(&self.key);
            }
        }
    }
}

/// Removes the temporary files that a killed [`write_atomic`] left in `dir` (`.<name>.tmp<pid>-<n>`);
/// returns how many. Call it only while holding the folder's lock.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_temp = name.starts_with('.')
            && name.rsplit_once(".tmp").is_some_and(|(_, tail)| {
                tail.split_once('-').is_some_and(|(pid, n)| {
                    !pid.is_empty()
                        && pid.bytes().all(|b| b.is_ascii_digit())
                        && !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit())
                })
            });
        if is_temp && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::testutil::{scratch, small_nii};
    use crate::DataType;

    /// The files in `dir` that look like our temporary files.
    fn temp_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect()
    }

    /// `f()`, failing the test instead of hanging when it blocks (a FIFO opened the blocking way).
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("blocked for 10 s")
    }

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo {}", path.display());
    }

    #[test]
    fn write_atomic_creates_and_replaces_a_regular_file() {
        let dir = scratch("fs_replace");
        let path = dir.join("out.json");
        write_atomic(&path, b"first, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first, longer");
        write_atomic(&path, b"second").unwrap();
        assert_eq!(read_regular(&path).unwrap(), b"second");
        write_atomic_with(&path, |w| {
            w.write_all(b"streamed ")?;
            write!(w, "{}", 42)
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"streamed 42");
        write_atomic(&path, b"").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_neither_replaced_nor_read() {
        use std::os::unix::fs::FileTypeExt;
        let dir = scratch("fs_fifo");
        let fifo = dir.join("pipe.nii");
        mkfifo(&fifo);
        let e = write_atomic(&fifo, b"x").unwrap_err();
        assert!(
            matches!(&e, Error::NotRegularFile { path, kind } if path == &fifo && kind == "FIFO"),
            "{e}"
        );
        assert!(e.to_string().contains("pipe.nii"), "{e}");
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        // Reading neither blocks waiting for a writer nor reads: the NIfTI and HDF5 readers too.
        let f = fifo.clone();
        let (open, nifti) = within_10s(move || {
            (
                open_regular(&f).map(|_| ()),
                crate::nifti::read_nifti(&f).map(|_| ()),
            )
        });
        assert!(
            matches!(open, Err(Error::NotRegularFile { .. })),
            "{open:?}"
        );
        assert!(
            matches!(nifti, Err(Error::NotRegularFile { .. })),
            "{nifti:?}"
        );
        let h5 = dir.join("pipe.h5");
        mkfifo(&h5);
        let read = within_10s(move || crate::read_h5_dataset(&h5, "image").map(|_| ()));
        assert!(
            matches!(read, Err(Error::NotRegularFile { .. })),
            "{read:?}"
        );
        // A link to a FIFO is refused as well.
        let link = dir.join("link.nii");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let e = write_atomic(&link, b"x").unwrap_err();
        assert!(
            matches!(&e, Error::NotRegularFile { kind, .. } if kind == "symbolic link to a FIFO"),
            "{e}"
        );
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    }

    #[test]
    fn a_directory_or_device_is_not_replaced() {
        let dir = scratch("fs_dir");
        let sub = dir.join("sub.nii");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("keep"), b"k").unwrap();
        let e = write_atomic(&sub, b"x").unwrap_err();
        assert!(
            matches!(&e, Error::NotRegularFile { path, kind } if path == &sub && kind == "directory"),
            "{e}"
        );
        assert_eq!(std::fs::read(sub.join("keep")).unwrap(), b"k");
        assert!(matches!(
            open_regular(&sub),
            Err(Error::NotRegularFile { .. })
        ));
        #[cfg(unix)]
        {
            let link = dir.join("to_dir");
            std::os::unix::fs::symlink(&sub, &link).unwrap();
            let e = write_atomic(&link, b"x").unwrap_err();
            assert!(
                matches!(&e, Error::NotRegularFile { kind, .. } if kind == "symbolic link to a directory"),
                "{e}"
            );
            assert!(sub.join("keep").exists());
            // A device (no test would dare `/dev/stdout`: it may be a file under redirection).
            let null = Path::new("/dev/null");
            let e = write_atomic(null, b"x").unwrap_err();
            assert!(
                matches!(&e, Error::NotRegularFile { kind, .. } if kind == "character device"),
                "{e}"
            );
            use std::os::unix::fs::FileTypeExt;
            assert!(std::fs::metadata(null)
                .unwrap()
                .file_type()
                .is_char_device());
            assert!(matches!(
                read_regular(null),
                Err(Error::NotRegularFile { .. })
            ));
        }
        assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_a_regular_file_is_kept_and_its_target_replaced() {
        let dir = scratch("fs_link");
        std::fs::write(dir.join("real.json"), b"old").unwrap();
        let link = dir.join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(dir.join("real.json")).unwrap(), b"new");
        let dangling = dir.join("dangling.json");
        std::os::unix::fs::symlink("nowhere.json", &dangling).unwrap();
        let e = write_atomic(&dangling, b"x").unwrap_err();
        assert!(
            matches!(&e, Error::NotRegularFile { kind, .. } if kind == "dangling symbolic link"),
            "{e}"
        );
        assert!(!dir.join("nowhere.json").exists());
        assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_content() {
        let dir = scratch("fs_fail");
        let path = dir.join("ckpt.bin");
        write_atomic(&path, b"old").unwrap();
        let e = write_atomic_with(&path, |w| {
            w.write_all(&[7u8; 100_000])?;
            Err(std::io::Error::other("serialiser failed"))
        })
        .unwrap_err();
        assert!(
            matches!(&e, Error::Io { path: p, .. } if p == &path)
                && e.to_string().contains("serialiser failed"),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
        // A missing folder: an I/O error naming the path, nothing created.
        let missing = dir.join("no/such/x.nii");
        let e = write_atomic(&missing, b"x").unwrap_err();
        assert!(
            matches!(&e, Error::Io { path: p, .. } if p == &missing),
            "{e}"
        );
        assert!(matches!(
            write_atomic(Path::new(""), b"x"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            read_regular(&dir.join("missing.nii")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn temp_names_are_unique_per_call_so_concurrent_writers_do_not_collide() {
        let a = temp_path(Path::new("out.nii")).unwrap();
        let b = temp_path(Path::new("out.nii")).unwrap();
        assert_ne!(a, b);
        let prefix = format!(".out.nii.tmp{}-", std::process::id());
        assert!(a.to_string_lossy().starts_with(&prefix), "{}", a.display());
        let dir = scratch("fs_concurrent");
        let path = dir.join("shared.json");
        let writers: Vec<_> = (0..8u8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        write_atomic(&path, &[t; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let last = std::fs::read(&path).unwrap();
        assert_eq!(last.len(), 4096);
        assert!(last.iter().all(|&b| b == last[0]));
        assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    }

    #[test]
    fn multi_member_gzip_is_read_and_trailing_garbage_is_an_error() {
        use std::io::Write as _;
        let gzip = |b: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(b).unwrap();
            enc.finish().unwrap()
        };
        let p = Path::new("m.nii.gz");
        let nii = small_nii(DataType::I16);
        let (a, b) = nii.split_at(100);
        let mut two = gzip(a);
        two.extend(gzip(b));
        assert_eq!(gunzip(&two, p).unwrap(), nii);
        let mut junk = gzip(&nii);
        junk.extend(b"junk");
        assert!(matches!(gunzip(&junk, p), Err(Error::Gzip { .. })));
        // A wrong CRC is caught.
        let mut crc = gzip(&nii);
        let n = crc.len();
        crc[n - 8] ^= 1;
        assert!(matches!(gunzip(&crc, p), Err(Error::Gzip { .. })));
    }

    #[test]
    fn folder_lock_is_reentrant_in_process_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("duoseg-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = lock_folder(&dir).unwrap();
        let b = lock_folder(&dir).unwrap();
        drop(a);
        // still held (b): another descriptor cannot take it
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let f = File::open(dir.join(".lock")).unwrap();
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            assert_ne!(rc, 0, "the lock should be held");
            drop(b);
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            assert_eq!(rc, 0, "the lock should be free after the last guard");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temp_files_are_removed_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("duoseg-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            ".log.jsonl.tmp123-0",
            ".x.safetensors.tmp9-17",
            "keep.json",
            ".lock",
            ".notes.tmp",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temp_files(&dir).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".lock", ".notes.tmp", "keep.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
