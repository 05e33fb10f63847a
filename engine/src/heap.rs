//! Heap policy of the engine process.
//!
//! A CPU job allocates and frees tensors of tens to hundreds of MB in every layer (matmul
//! outputs, attention scores). glibc serves each such block with a fresh `mmap` and unmaps it
//! on free, so every layer pays a page fault and a page clear per 4 KiB again: on the 2-core CI
//! machine that was a fifth of the flow estimator's non-matmul time (`docs/perf.md`). The
//! engine instead keeps freed memory in its heap for the next layer to reuse, and hands it back
//! to the system when a job ends ([`release_free_memory`]), so an idle shared engine stays small.

/// Serve every allocation from the heap and never trim it automatically. Call once at start-up,
/// before the model loads (the `songgen` binary, benches and examples do).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before the
    // engine's worker threads start and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Returns the heap's free memory to the system (after a job: the next one may be minutes away).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
