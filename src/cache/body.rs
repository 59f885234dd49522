//! Stored bodies: small ones on the heap, large ones (at least [`FILE_MIN`]) in an anonymous
//! memory file (`memfd_create`), so that a plain-HTTP hit can hand them to the kernel with
//! `sendfile(2)` (`proxy::fast::sendfile`) instead of copying them through a user-space write.
//!
//! Why: a 1 MiB hit on loopback costs two copies of the body (ours into the socket, the
//! client's out of it) and on a 2-core box the proxy and its clients share the CPU. With
//! `sendfile` the socket takes references to the file's pages, and our copy disappears
//! (measured in `loadtest/cpu.py /c/1m`).
//!
//! Every other reader (pingora's hit path for TLS, HTTP/2, ranges and revalidation) sees the
//! same bytes through a read-only shared mapping of the file, wrapped as `Bytes` without a copy.
//! A memory file costs one descriptor and one mapping for its life, so how many may exist at
//! once is capped well below the process's descriptor limit and the kernel's mapping limit;
//! past the cap, or when any step fails, the body simply stays on the heap. A file is sealed
//! once written (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK`), so the kernel enforces that
//! its bytes never change under the mappings and `sendfile`s that share them.

use bytes::{Bytes, BytesMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

/// Bodies from this size up are kept in a memory file.
pub const FILE_MIN: usize = 64 << 10;

/// A stored body.
#[derive(Clone)]
pub enum Body {
    Heap(Bytes),
    File(Arc<BodyFile>),
}

/// A body in a memory file, and a read-only mapping of it.
pub struct BodyFile {
    fd: OwnedFd,
    bytes: Bytes,
}

/// Memory files alive now, and how many may be.
static FILES: AtomicUsize = AtomicUsize::new(0);
static FILE_LIMIT: LazyLock<usize> = LazyLock::new(file_limit);

impl Body {
    /// The body collected by a fill, in the cheapest form to keep and to send.
    pub fn new(body: BytesMut) -> Body {
        if body.len() >= FILE_MIN {
            if let Some(file) = BodyFile::create(&body) {
                return Body::File(Arc::new(file));
            }
        }
        Body::Heap(exact(body))
    }

    /// The bytes, shared (no copy).
    pub fn bytes(&self) -> Bytes {
        match self {
            Body::Heap(b) => b.clone(),
            Body::File(f) => f.bytes.clone(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Body::Heap(b) => b.len(),
            Body::File(f) => f.bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory file holding the body, if it has one.
    pub fn file(&self) -> Option<&Arc<BodyFile>> {
        match self {
            Body::Heap(_) => None,
            Body::File(f) => Some(f),
        }
    }
}

impl BodyFile {
    fn create(body: &[u8]) -> Option<BodyFile> {
        if FILES.fetch_add(1, Ordering::Relaxed) >= *FILE_LIMIT {
            FILES.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let file = Self::create_unchecked(body);
        if file.is_none() {
            FILES.fetch_sub(1, Ordering::Relaxed);
        }
        file
    }

    fn create_unchecked(body: &[u8]) -> Option<BodyFile> {
        // SAFETY: a plain syscall on a NUL-terminated name; the result is checked.
        let raw = unsafe {
            libc::memfd_create(
                c"crossfade-body".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut written = 0;
        while written < body.len() {
            let rest = &body[written..];
            // SAFETY: writes from a live slice of the stated length.
            let n = unsafe { libc::write(raw, rest.as_ptr().cast(), rest.len()) };
            match n {
                n if n > 0 => written += n as usize,
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => return None,
            }
        }
        // The kernel, not only this module, now guarantees what every reader relies on: the
        // bytes never change and the file never shrinks under a mapping (a shrink would turn
        // a read of the mapping into SIGBUS).
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor we own; the result is checked.
        if unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, seals) } != 0 {
            return None;
        }
        let map = Mapping::new(raw, body.len())?;
        Some(BodyFile {
            fd,
            bytes: Bytes::from_owner(map),
        })
    }

    /// The file's descriptor, for `sendfile`.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Drop for BodyFile {
    fn drop(&mut self) {
        FILES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A read-only shared mapping of a whole memory file; unmapped when the last `Bytes` that
/// views it is dropped (which may be after the file's descriptor is closed: the mapping keeps
/// the pages).
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and never changes while mapped; the file is written once,
// before it is mapped, and nothing writes to it after.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: RawFd, len: usize) -> Option<Mapping> {
        // SAFETY: maps `len` bytes of a file of exactly that length, read-only.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`, once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// How many memory files may exist: a quarter of the descriptor limit (the rest is for
/// clients, origins and files), and a quarter of the kernel's per-process mapping limit.
fn file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: fills a local struct.
    let fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur as usize / 4
    } else {
        0
    };
    let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65530);
    fds.min(maps / 4)
}

/// `body` in an allocation of exactly its length: a buffer that grew by doubling (no or a
/// wrong Content-Length) would otherwise keep up to half its size as slack for the object's
/// whole life. A buffer that is already full becomes `Bytes` without a copy or another
/// allocation.
fn exact(body: BytesMut) -> Bytes {
    if body.len() == body.capacity() {
        body.freeze()
    } else {
        Bytes::copy_from_slice(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_live_in_a_file_that_reads_back_the_same() {
        let data: Vec<u8> = (0..FILE_MIN + 12_345).map(|i| (i % 251) as u8).collect();
        let body = Body::new(BytesMut::from(&data[..]));
        let file = body.file().expect("a large body gets a memory file");
        assert_eq!(file.len(), data.len());
        assert_eq!(&body.bytes()[..], &data[..]);
        // What sendfile would send: the file's own contents.
        let mut back = vec![0u8; data.len()];
        // SAFETY: reads into a live buffer of the stated length.
        let n = unsafe { libc::pread(file.raw_fd(), back.as_mut_ptr().cast(), back.len(), 0) };
        assert_eq!(n as usize, data.len());
        assert_eq!(back, data);
        // Sealed: neither written nor resized, by anyone holding the descriptor.
        let fd = file.raw_fd();
        // SAFETY: plain syscalls on a live descriptor, from live buffers.
        unsafe {
            assert_eq!(libc::pwrite(fd, b"x".as_ptr().cast(), 1, 0), -1);
            assert_eq!(libc::ftruncate(fd, 10), -1);
            assert_eq!(libc::ftruncate(fd, (data.len() * 2) as libc::off_t), -1);
            assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, 0), -1, "sealed for good");
        }
        assert_eq!(&body.bytes()[..], &data[..]);
        // A view outlives the body and its descriptor.
        let view = body.bytes().slice(10..20);
        drop(body);
        assert_eq!(&view[..], &data[10..20]);
    }

    #[test]
    fn small_bodies_stay_on_the_heap() {
        let body = Body::new(BytesMut::from(&b"hello"[..]));
        assert!(body.file().is_none());
        assert_eq!(&body.bytes()[..], b"hello");
    }
}
