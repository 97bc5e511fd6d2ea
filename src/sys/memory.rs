//! Returning freed heap memory to the system.

/// Asks glibc's allocator to give back free memory at the top of its heaps
/// and in unused pages of its arenas. Freed memory otherwise stays mapped,
/// so the daemon's resident size would stay at its peak after the kernel
/// drops a large tree of inodes.
pub fn trim_heap() {
    // SAFETY: malloc_trim takes a plain integer (the padding to keep) and
    // only rearranges the allocator's own free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
