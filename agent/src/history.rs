//! The record of delivered alerts: what this workstation's alerts became after a collector
//! acknowledged them, so that `sos-agent cancel` can withdraw one without a tray agent, and the
//! record says when, by which collector, and — once cancelled — from where (the tray or the
//! command line).
//!
//! One file per alert in `delivered/` under the spool directory, `<alert id>.json`, written
//! atomically (`tempfile`'s persist); the newest [`KEEP`] are kept.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sos_shared::AlertId;

/// How many delivered alerts the record keeps.
pub const KEEP: usize = 100;

/// Where a cancellation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledFrom {
    /// The tray menu.
    Tray,
    /// `sos-agent cancel`.
    CommandLine,
}

impl CancelledFrom {
    /// In words, for the `reason` of the CANCEL message and for people.
    pub fn words(self) -> &'static str {
        match self {
            CancelledFrom::Tray => "the tray menu",
            CancelledFrom::CommandLine => "the command line",
        }
    }
}

/// A confirmed cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    /// When a collector confirmed it, seconds since the Unix epoch.
    pub at: u64,
    /// From where it was asked.
    pub from: CancelledFrom,
    /// The collector that confirmed it.
    pub collector: String,
}

/// One delivered alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredAlert {
    /// The alert.
    pub alert_id: AlertId,
    /// A drill.
    #[serde(default)]
    pub test: bool,
    /// When the button was pressed, seconds since the Unix epoch.
    pub pressed_at: u64,
    /// When a collector acknowledged it.
    pub delivered_at: u64,
    /// The same in milliseconds, to order alerts delivered within one second.
    #[serde(default)]
    pub delivered_at_ms: u64,
    /// The collector that acknowledged it.
    pub collector: String,
    /// Set once a collector confirmed a cancellation.
    #[serde(default)]
    pub cancelled: Option<Cancellation>,
}

/// Why the record could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the record of delivered alerts {path}: {source}")]
pub struct HistoryError {
    path: PathBuf,
    source: std::io::Error,
}

/// The record, in `<spool dir>/delivered`.
#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
}

impl History {
    /// The record that lives beside the spool in `spool_dir` (created on first write).
    pub fn beside(spool_dir: &Path) -> Self {
        History { dir: spool_dir.join("delivered") }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record (or update) `alert`, then keep only the newest [`KEEP`].
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn put(&self, alert: &DeliveredAlert) -> Result<(), HistoryError> {
        let err = |source| HistoryError { path: self.dir.clone(), source };
        fs::create_dir_all(&self.dir).map_err(err)?;
        let body = serde_json::to_vec_pretty(alert).map_err(|e| err(std::io::Error::other(e)))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(err)?;
        tmp.write_all(&body).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(self.dir.join(format!("{}.json", alert.alert_id))).map_err(|e| err(e.error))?;
        let all = self.all();
        for old in all.iter().skip(KEEP) {
            let _ = fs::remove_file(self.dir.join(format!("{}.json", old.alert_id)));
        }
        Ok(())
    }

    /// One alert, if recorded.
    pub fn get(&self, id: AlertId) -> Option<DeliveredAlert> {
        let bytes = fs::read(self.dir.join(format!("{id}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every recorded alert, newest delivery first; unreadable files are skipped.
    pub fn all(&self) -> Vec<DeliveredAlert> {
        let mut v: Vec<DeliveredAlert> = fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| {
                    let p = e.ok()?.path();
                    if p.extension()? != "json" {
                        return None;
                    }
                    serde_json::from_slice(&fs::read(p).ok()?).ok()
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|a| std::cmp::Reverse((a.delivered_at, a.delivered_at_ms, a.alert_id)));
        v
    }

    /// The last delivered alert (cancelled or not): what `sos-agent cancel` withdraws by
    /// default. Never an earlier one: cancelling twice by mistake must not withdraw an older,
    /// real alert.
    pub fn last(&self) -> Option<DeliveredAlert> {
        self.all().into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: u128, at: u64) -> DeliveredAlert {
        DeliveredAlert {
            alert_id: AlertId::from_u128(id),
            test: false,
            pressed_at: at,
            delivered_at: at,
            delivered_at_ms: at * 1000,
            collector: "127.0.0.1:5000".into(),
            cancelled: None,
        }
    }

    #[test]
    fn the_last_uncancelled_alert_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::beside(dir.path());
        assert_eq!(h.last(), None);
        for i in 0..(KEEP as u128 + 5) {
            h.put(&alert(i, 1000 + i as u64)).unwrap();
        }
        assert_eq!(h.all().len(), KEEP);
        let mut last = h.last().unwrap();
        assert_eq!(last.alert_id, AlertId::from_u128(KEEP as u128 + 4));
        last.cancelled = Some(Cancellation { at: 5, from: CancelledFrom::CommandLine, collector: "c".into() });
        h.put(&last).unwrap();
        assert_eq!(h.last().unwrap().alert_id, last.alert_id, "still the last one, now cancelled");
        assert_eq!(h.get(last.alert_id).unwrap().cancelled.unwrap().from, CancelledFrom::CommandLine);
        assert_eq!(h.get(AlertId::from_u128(0)), None, "pruned");
    }
}
