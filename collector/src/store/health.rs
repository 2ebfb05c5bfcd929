//! Whether the store's writes succeed: a failing disk announced once, and its recovery.

use std::sync::Arc;

use super::StoreError;

/// How long a request to the store may wait before the log says the store is stuck.
pub(super) const STALL_WARNING: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether writes to the store succeed, so that a failing disk is announced once, loudly, and
/// its recovery too (each refused SOS is logged by the server as well).
#[derive(Debug, Default)]
pub(super) struct Health {
    pub(super) failing_since: Option<std::time::Instant>,
    pub(super) failures: u64,
    /// Shared with every [`SqliteStore`](super::SqliteStore) handle: see [`SqliteStore::is_failing`](super::SqliteStore::is_failing).
    pub(super) failing: Arc<std::sync::atomic::AtomicBool>,
    /// The first error that means the file is damaged: the writer stops after the current batch.
    pub(super) fatal: Option<String>,
    /// Since when (see [`busy_clock_ms`]) the writer works on its current batch; 0 while it
    /// waits for work. Shared with every [`SqliteStore`](super::SqliteStore) handle: a batch that takes
    /// longer than the stall warning (a frozen or hung disk) makes the store failing, even when
    /// no request waits on it.
    pub(super) busy_since_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Milliseconds on a monotonic clock since the first call, plus one (0 means "idle").
pub(super) fn busy_clock_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

impl Health {
    /// A read failed: the store is failing until a write succeeds. A read that succeeds proves
    /// nothing about writes, so it clears nothing.
    pub(super) fn observe_read(&mut self, error: Option<&StoreError>) {
        if error.is_some() {
            self.observe(error);
        }
    }

    pub(super) fn observe(&mut self, error: Option<&StoreError>) {
        if let Some(StoreError::Corrupt(e)) = error {
            self.fatal.get_or_insert_with(|| e.clone());
        }
        self.failing.store(error.is_some(), std::sync::atomic::Ordering::SeqCst);
        match (error, self.failing_since) {
            (Some(e), None) => {
                self.failing_since = Some(std::time::Instant::now());
                self.failures = 1;
                tracing::error!(error = %e,
                    "STORE FAILING: cannot write to the data dir (full, read-only or gone?); \
                     no SOS is acknowledged until it works again, agents keep retrying");
            }
            (Some(_), Some(_)) => self.failures += 1,
            (None, Some(since)) => {
                tracing::warn!(
                    failed_writes = self.failures,
                    after_secs = since.elapsed().as_secs(),
                    "store recovered: writes succeed again"
                );
                self.failing_since = None;
            }
            (None, None) => {}
        }
    }
}
