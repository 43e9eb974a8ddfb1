//! What the fuzz targets share: a global allocator that records the largest single allocation, so
//! that a target can check that decoding an input of `n` bytes never asks for more memory than the
//! input can justify. libFuzzer's own `-malloc_limit_mb` only catches absolute sizes, which inputs of
//! a few KB never reach even when the decoder trusts a size field it should not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, recording the largest allocation (or reallocation) since [`reset`].
pub struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated besides.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Bytes one input byte may justify: deflate expands at most 1032:1 (zlib's bound), and a decoded
/// 1-byte sample becomes a 4-byte `f32`.
pub const BYTES_PER_INPUT_BYTE: usize = 4 * 1032;

/// Allowance for buffers whose size does not depend on the input length: the 2-byte label lookup
/// table (128 KB), and hdf5-reader's room for the message count (a `u16`) a v1 object header
/// declares, reserved before a message is read: up to 65535 x 144 bytes = 9.4 MB per header
/// (found by this check; a third-party allocation, bounded per header, see docs/reliability.md).
pub const FIXED_ALLOWANCE: usize = 16 << 20;

/// Runs `decode` on an input of `input_len` bytes and panics (a fuzz finding) if any single
/// allocation it made was larger than [`FIXED_ALLOWANCE`] + [`BYTES_PER_INPUT_BYTE`] x `input_len`.
pub fn with_allocation_bound(input_len: usize, decode: impl FnOnce()) {
    LARGEST.store(0, Ordering::Relaxed);
    decode();
    let largest = LARGEST.load(Ordering::Relaxed);
    let bound = FIXED_ALLOWANCE + BYTES_PER_INPUT_BYTE * input_len;
    assert!(
        largest <= bound,
        "an input of {input_len} bytes made a {largest}-byte allocation (bound {bound})"
    );
}
