//! CPU memory for full-size activations.
//!
//! A (2, 16, 112, 112, 80) f32 activation is 128 MiB. glibc serves allocations that large with a
//! fresh `mmap` and unmaps them on free, so every new activation pays one page fault per 4 KiB page
//! when first written: on the 2-core development VM that costs about 100 ms per 128 MiB, more than
//! the arithmetic of a batch-norm pass. Two remedies, measured with `bench_nn3d`:
//!
//! - [`f32_buffer`] (used by this crate's kernels for their outputs) asks for transparent huge pages
//!   (`madvise(MADV_HUGEPAGE)`), which cuts the fault cost of the buffers this crate allocates.
//! - [`retain_freed_memory`], called once by a binary at start-up, makes glibc keep freed memory and
//!   reuse it, so after the first training step no activation buffer, ours or candle's, faults again.
//!   It is process-wide, hence the binary's decision, never done by a library on its own.

use std::mem::MaybeUninit;

/// Buffers at least this large get the huge-page advice (a few 2 MiB pages).
#[cfg(target_os = "linux")]
const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;

/// Makes the process allocator (glibc on Linux) serve large blocks from its heap instead of fresh
/// `mmap`s and keep freed memory instead of returning it to the OS, so activation buffers are reused
/// without page faults. The resident size then stays at the peak of the run. Returns whether the
/// setting took effect (false on other platforms or C libraries). Call it at the start of `main`.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; both values are valid for them.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// An uninitialised buffer of `len` f32 for a kernel that writes every element; large ones are
/// advised to use transparent huge pages. Finish with [`assume_init`].
pub(crate) fn f32_buffer(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v: Vec<MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation and the capacity is `len`.
    unsafe { v.set_len(len) };
    #[cfg(target_os = "linux")]
    {
        let bytes = len * std::mem::size_of::<f32>();
        if bytes >= HUGE_PAGE_MIN_BYTES {
            const PAGE: usize = 4096;
            let start = v.as_mut_ptr() as usize;
            let aligned = start.next_multiple_of(PAGE);
            let end = (start + bytes) / PAGE * PAGE;
            if end > aligned {
                // SAFETY: the range lies inside this allocation and is page aligned; the advice only
                // changes how the kernel backs it and failure is harmless.
                unsafe {
                    libc::madvise(
                        aligned as *mut libc::c_void,
                        end - aligned,
                        libc::MADV_HUGEPAGE,
                    );
                }
            }
        }
    }
    v
}

/// The buffer after every element has been written.
///
/// # Safety
/// Every element of `v` must have been initialised.
pub(crate) unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller guarantees initialisation; pointer,
    // length and capacity come from a live Vec that is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, v.len(), v.capacity()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_round_trip_at_every_size() {
        // the last one is above the huge-page threshold and not a multiple of the page size
        for len in [0usize, 1, 1000, (9 << 20) / 4 + 3] {
            let mut v = f32_buffer(len);
            assert_eq!(v.len(), len);
            for (i, o) in v.iter_mut().enumerate() {
                o.write(i as f32);
            }
            // SAFETY: every element was written just above
            let v = unsafe { assume_init(v) };
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
    }

    #[test]
    fn retaining_freed_memory_works_on_glibc() {
        let took = retain_freed_memory();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
        // allocation still works afterwards
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
