//! A damaged store: the bounded check at start, `sos-collector store check`, and
//! `sos-collector store recover`, which copies what a damaged store still holds into a new file
//! and lists what it could not.
//!
//! SQLite's own `.recover` (which reads pages directly) lives in the sqlite3 shell, not in the
//! library. Recovery here uses only SQL: each table is read forwards from its first row and
//! backwards from its last until a damaged page stops the scan, then every row whose key is
//! still known from an index (or, for alerts, from the outbox) is looked up one by one. What sat
//! on a damaged page is lost; the alerts among it are reported by id when anything still names
//! them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use crate::store::{Db, StoreError};

/// The longest the check at start may take; past it the collector starts and says that the
/// check did not finish (a very large store on a slow disk).
pub const START_CHECK_BUDGET: Duration = Duration::from_secs(10);

/// The mark of a store found damaged: a small text file beside it (`sos.db.check-failed`),
/// written when a check (at start, beside the service, or by `store check`) or the writer finds
/// the store damaged. While it exists, the collector runs the full check, without a time
/// budget, **before** it serves, and refuses the store if it is still damaged; a check that
/// passes removes it.
pub fn damage_mark(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(std::ffi::OsString::from).unwrap_or_default();
    name.push(".check-failed");
    path.with_file_name(name)
}

/// Whether the store at `path` was found damaged and not checked since ([`damage_mark`]).
pub fn marked_damaged(path: &Path) -> bool {
    damage_mark(path).exists()
}

/// Leave the mark of damage beside the store at `path`, with what was found (mode 0600,
/// written to a temporary file, synced, renamed, and the directory synced: it survives a
/// power cut right after).
///
/// # Errors
/// If the mark cannot be written (the caller logs it: the next start then checks beside the
/// service again, and finds the damage again).
pub fn mark_damaged(path: &Path, problems: &[String]) -> std::io::Result<()> {
    use std::io::Write as _;
    // First, what needs no free space: without the boot record, the next start checks the
    // store before serving even if the mark cannot be written (a full disk).
    forget_boot(path);
    let mark = damage_mark(path);
    let mut tmp_name = mark.file_name().map(std::ffi::OsString::from).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = mark.with_file_name(tmp_name);
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        let text = format!(
            "The store {} was found damaged at {} (Unix time, ms):\n{}\n\nThe collector checks it before serving \
         while this file exists. With the collector stopped, run `sos-collector store recover`; a check that \
         passes removes this file.\n",
            path.display(),
            crate::store::now_ms(),
            problems.iter().map(|p| format!("    {p}")).collect::<Vec<_>>().join("\n"),
        );
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &mark)?;
        if let Some(dir) = mark.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Remove the mark of damage (a check passed, or there is no store any more).
///
/// # Errors
/// If it exists and cannot be removed.
pub fn clear_damage_mark(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(damage_mark(path)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The machine's boot: Linux's boot id, new at every boot (`None` elsewhere).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Where the collector records the boot it last started on, beside the store (`sos.db.boot`).
pub fn boot_record(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(std::ffi::OsString::from).unwrap_or_default();
    name.push(".boot");
    path.with_file_name(name)
}

/// Forget that a collector started on the store at `path` during this boot: the next start
/// checks it before serving.
pub fn forget_boot(path: &Path) {
    let _ = std::fs::remove_file(boot_record(path));
}

/// What identifies this boot and this store file in the boot record: the boot id, and the
/// store's device and inode (a file put in place since, by `mv` or a restore, is another file).
#[cfg(unix)]
fn boot_line(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let id = boot_id()?;
    let m = std::fs::metadata(path).ok()?;
    Some(format!("{id} {} {}", m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn boot_line(_: &Path) -> Option<String> {
    None
}

/// What tells one version of a file from another: its inode (on Unix) and modification time;
/// `None` if it does not exist.
pub fn file_identity(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((ino, m.modified().ok()?))
}

/// Whether a collector already started on the store at `path` since the machine last booted.
///
/// Then what ended the last run (the process crashed, was killed, or was stopped) cannot have
/// damaged the store: a process that dies leaves its writes in the operating system's page
/// cache, and SQLite's WAL makes every commit whole. What damages a store across
/// a crash is the machine going down (power, kernel) on a disk that lies about `fsync` — and
/// that is a new boot. So the service checks the store before serving on its first start of a
/// boot, and beside the service on the restarts within one.
pub fn started_this_boot(path: &Path) -> bool {
    match (boot_line(path), std::fs::read_to_string(boot_record(path))) {
        (Some(now), Ok(recorded)) => recorded.trim() == now,
        _ => false,
    }
}

/// Record that a collector started on the store at `path` during this boot, and its check
/// passed (see [`started_this_boot`]). Not synced: a record lost in a crash of the machine only
/// makes the next start check before serving, which a new boot does anyway.
///
/// # Errors
/// If it cannot be written.
pub fn record_boot(path: &Path) -> std::io::Result<()> {
    let Some(line) = boot_line(path) else { return Ok(()) };
    let record = boot_record(path);
    let mut tmp_name = record.file_name().map(std::ffi::OsString::from).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = record.with_file_name(tmp_name);
    std::fs::write(&tmp, format!("{line}\n"))?;
    std::fs::rename(&tmp, &record)
}

/// The check at start on a restart within the same boot ([`started_this_boot`]), with no
/// [`damage_mark`]: SQLite's `quick_check` on a read-only connection of its own, on a thread of
/// its own, while the collector already serves, within `budget`. `hold` (the writer's WAL
/// catch-up hold) is dropped as soon as the check's read ends. If the check finds damage it
/// leaves the mark (so that the next start refuses the store before serving), then `done` gets
/// what was found: the service stops, as it does when its writer finds damage. `done` is called
/// once; a check that panicked is reported to it as an error.
///
/// # Errors
/// If the thread cannot be started.
pub fn check_while_serving<H: Send + 'static>(
    path: &Path,
    budget: Duration,
    hold: H,
    done: impl FnOnce(Result<Integrity, StoreError>) + Send + 'static,
) -> std::io::Result<()> {
    let path = path.to_path_buf();
    std::thread::Builder::new().name("sos-store-check".into()).spawn(move || {
        let found =
            std::panic::catch_unwind(|| check_with(&path, false, Some(budget), OpenFlags::SQLITE_OPEN_READ_ONLY))
                .unwrap_or_else(|_| Err(StoreError::Sqlite("the integrity check panicked".into())));
        drop(hold);
        if let Ok(Integrity::Damaged(problems)) = &found {
            if let Err(e) = mark_damaged(&path, problems) {
                tracing::error!(store = %path.display(), error = %e, "cannot leave the mark of a damaged store");
            }
        }
        done(found);
    })?;
    Ok(())
}

/// What an integrity check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// No problem found.
    Ok,
    /// SQLite reported these problems (at most [`MAX_PROBLEMS`]).
    Damaged(Vec<String>),
    /// The check did not finish within its time budget.
    Unfinished,
}

/// The most problems a check reports.
pub const MAX_PROBLEMS: usize = 10;

/// Check the store at `path`: SQLite's `quick_check` (page and b-tree structure, every row
/// readable: O(size of the file)), or with `full` its `integrity_check` (also every index
/// against its table). With a `budget`, the check is interrupted when it runs out.
///
/// # Errors
/// If the file cannot be opened (missing, no permission): [`StoreError::Open`], naming it.
pub fn check(path: &Path, full: bool, budget: Option<Duration>) -> Result<Integrity, StoreError> {
    check_with(path, full, budget, OpenFlags::SQLITE_OPEN_READ_WRITE)
}

fn check_with(path: &Path, full: bool, budget: Option<Duration>, flags: OpenFlags) -> Result<Integrity, StoreError> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Open { path: path.to_path_buf(), message: e.to_string() })?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    if let Some(budget) = budget {
        let interrupt = conn.get_interrupt_handle();
        std::thread::Builder::new()
            .name("sos-store-check".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(budget) {
                    interrupt.interrupt();
                }
            })
            .map_err(|e| StoreError::Sqlite(format!("cannot start the check: {e}")))?;
    }
    let pragma = if full { "integrity_check" } else { "quick_check" };
    let result = (|| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({MAX_PROBLEMS})"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    drop(done);
    match result {
        Ok(rows) if rows == ["ok"] => Ok(Integrity::Ok),
        Ok(rows) => Ok(Integrity::Damaged(rows)),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => Ok(Integrity::Unfinished),
        Err(e) => match StoreError::from(e) {
            StoreError::Corrupt(problem) => Ok(Integrity::Damaged(vec![problem])),
            StoreError::Sqlite(message) => Err(StoreError::Open { path: path.to_path_buf(), message }),
            other => Err(other),
        },
    }
}

/// What [`recover`] saved and what it could not.
#[derive(Debug, Clone, Default)]
pub struct Salvage {
    /// Per table, in copy order.
    pub tables: Vec<TableSalvage>,
    /// Alerts recent enough to matter (younger than the give-up time) whose delivery records
    /// were lost: queued again for every channel, so they may reach a channel twice.
    pub requeued: Vec<(String, String)>,
    /// Outbox rows of alerts that were lost: dropped (they could never be delivered).
    pub orphan_jobs: u64,
    /// Escalation deadlines of alerts that were lost: dropped (they could never fire, and the
    /// escalation engine would find one due every time it looked, for ever).
    pub orphan_deadlines: u64,
    /// Problems that stopped a whole table (or the schema) from being read.
    pub problems: Vec<String>,
}

/// What was saved of one table.
#[derive(Debug, Clone, Default)]
pub struct TableSalvage {
    /// The table.
    pub name: String,
    /// Rows copied.
    pub copied: u64,
    /// Whether every row was reached by the scans (nothing lost unless `lost` says so).
    pub complete: bool,
    /// Keys of rows known to exist (an index or another table names them) that could not be
    /// read; for `alerts`, the alert ids.
    pub lost: Vec<String>,
}

impl Salvage {
    /// Whether anything at all was lost or is unknown.
    pub fn lossless(&self) -> bool {
        self.problems.is_empty()
            && self.orphan_jobs == 0
            && self.orphan_deadlines == 0
            && self.tables.iter().all(|t| t.complete && t.lost.is_empty())
    }
}

/// The tables in copy order (alerts before the outbox and the responder loop's tables that
/// refer to them).
const TABLES: &[&str] = &[
    "alerts",
    "outbox",
    "responses",
    "alert_events",
    "escalations",
    "sender_notices",
    "enrolled",
    "enrollments",
    "agents",
    "registry_version",
];

/// Copy what can be read of the store at `damaged` into a new store at `output`, then queue
/// again, on each of `channels`, every alert received after `requeue_since_ms` that lost its
/// delivery record there. `damaged` is only read.
///
/// # Errors
/// If `output` exists already, or cannot be created or written; or if `damaged` cannot be
/// opened at all.
pub fn recover(
    damaged: &Path,
    output: &Path,
    channels: &[&str],
    requeue_since_ms: i64,
    now_ms: i64,
) -> Result<Salvage, StoreError> {
    if output.exists() {
        return Err(StoreError::Open {
            path: output.to_path_buf(),
            message: "it exists already; move it away or choose another --output".into(),
        });
    }
    let src = Connection::open_with_flags(damaged, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Open { path: damaged.to_path_buf(), message: e.to_string() })?;
    let _ = src.busy_timeout(Duration::from_secs(5));
    let mut dst = Db::open(output)?;
    dst.conn.pragma_update(None, "foreign_keys", "OFF")?;
    let mut salvage = Salvage::default();
    let tx = dst.conn.transaction()?;
    for table in TABLES {
        match salvage_table(&src, &tx, table) {
            Ok(t) => salvage.tables.push(t),
            Err(e) => {
                salvage.problems.push(format!("{table}: {e}"));
                salvage.tables.push(TableSalvage { name: (*table).into(), ..TableSalvage::default() });
            }
        }
    }
    salvage.orphan_jobs =
        tx.execute("DELETE FROM outbox WHERE alert_id NOT IN (SELECT alert_id FROM alerts)", [])? as u64;
    salvage.orphan_deadlines =
        tx.execute("DELETE FROM escalations WHERE alert_id NOT IN (SELECT alert_id FROM alerts)", [])? as u64;
    // The responses' copy of their alert's time (the schema's `V_OPEN_BY_TIME`), which a store
    // older than it did not have, and -1 for a lost alert's (it must take no real alert's place
    // in the popup read), as the migration fills them.
    tx.execute(
        "UPDATE responses SET received_at_ms = COALESCE(
             (SELECT a.received_at_ms FROM alerts a WHERE a.alert_id = responses.alert_id), -1)
         WHERE received_at_ms = 0 OR alert_id NOT IN (SELECT alert_id FROM alerts)",
        [],
    )?;
    for channel in channels {
        let mut stmt = tx.prepare(
            "INSERT INTO outbox (alert_id, channel, state, created_at_ms, next_attempt_at_ms)
             SELECT alert_id, ?1, 'pending', ?2, ?2 FROM alerts
             WHERE received_at_ms >= ?3
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.alert_id = alerts.alert_id
                               AND o.channel = ?1 AND o.kind = 'alert')
             RETURNING alert_id",
        )?;
        let ids = stmt.query_map(rusqlite::params![channel, now_ms, requeue_since_ms], |r| r.get::<_, String>(0))?;
        for id in ids {
            salvage.requeued.push((id?, (*channel).to_owned()));
        }
    }
    tx.commit()?;
    dst.conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(salvage)
}

/// The columns of `table` in `conn` (name, position in the primary key or 0).
fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(5)?)))?;
    rows.collect()
}

/// Run `sql` and collect rows of `width` values until the end or the first error. Returns the
/// rows and whether the end was reached.
fn scan(conn: &Connection, sql: &str, width: usize) -> (Vec<Vec<Value>>, bool) {
    let mut out = Vec::new();
    let Ok(mut stmt) = conn.prepare(sql) else { return (out, false) };
    let Ok(mut rows) = stmt.query([]) else { return (out, false) };
    loop {
        match rows.next() {
            Ok(Some(row)) => match (0..width).map(|i| row.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>() {
                Ok(values) => out.push(values),
                Err(_) => return (out, false),
            },
            Ok(None) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

fn show(key: &[Value]) -> String {
    key.iter()
        .map(|v| match v {
            Value::Text(t) => t.clone(),
            Value::Integer(i) => i.to_string(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn salvage_table(src: &Connection, dst: &Connection, table: &str) -> rusqlite::Result<TableSalvage> {
    let have = columns(src, table)?;
    if have.is_empty() {
        // Not in this (older) store: nothing to copy.
        return Ok(TableSalvage { name: table.into(), complete: true, ..TableSalvage::default() });
    }
    let want: BTreeSet<String> = columns(dst, table)?.into_iter().map(|(c, _)| c).collect();
    let cols: Vec<String> = have.iter().map(|(c, _)| c.clone()).filter(|c| want.contains(c)).collect();
    let mut pk: Vec<(String, i64)> = have.iter().filter(|(_, p)| *p > 0).cloned().collect();
    pk.sort_by_key(|(_, p)| *p);
    let pk: Vec<String> = pk.into_iter().map(|(c, _)| c).collect();
    let pk = if pk.is_empty() { vec!["rowid".to_owned()] } else { pk };
    let quoted = |v: &[String]| v.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let col_list = quoted(&cols);
    let pk_list = quoted(&pk);
    let order = |dir: &str| pk.iter().map(|c| format!("\"{c}\" {dir}")).collect::<Vec<_>>().join(", ");
    // Every selected row starts with its key, then the columns to copy.
    let select = format!("SELECT {pk_list}, {col_list} FROM \"{table}\"");
    let width = pk.len() + cols.len();
    let mut insert = dst.prepare(&format!(
        "INSERT OR REPLACE INTO \"{table}\" ({col_list}) VALUES ({})",
        vec!["?"; cols.len()].join(", ")
    ))?;
    let mut copied_keys = BTreeSet::<String>::new();
    let mut copied = 0u64;
    let mut copy = |row: &[Value], copied_keys: &mut BTreeSet<String>| -> rusqlite::Result<()> {
        if copied_keys.insert(show(&row[..pk.len()])) {
            insert.execute(rusqlite::params_from_iter(&row[pk.len()..]))?;
            copied += 1;
        }
        Ok(())
    };
    let (rows, complete) = scan(src, &format!("{select} ORDER BY {}", order("ASC")), width);
    for r in &rows {
        copy(r, &mut copied_keys)?;
    }
    if !complete {
        let (rows, _) = scan(src, &format!("{select} ORDER BY {}", order("DESC")), width);
        for r in &rows {
            copy(r, &mut copied_keys)?;
        }
    }
    // Keys still known elsewhere: the table's own indexes (read without touching the table),
    // and for alerts the outbox.
    let mut known: Vec<Vec<Value>> = Vec::new();
    if !complete {
        let mut indexes: Vec<String> = Vec::new();
        {
            let mut stmt = src.prepare(&format!("PRAGMA index_list(\"{table}\")"))?;
            let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
            for n in names.flatten() {
                indexes.push(n);
            }
        }
        let mut sources: Vec<String> =
            indexes.iter().map(|i| format!("SELECT {pk_list} FROM \"{table}\" INDEXED BY \"{i}\"")).collect();
        if table == "alerts" {
            sources.push("SELECT alert_id FROM outbox".into());
        }
        for s in sources {
            for dir in ["ASC", "DESC"] {
                // The index's own order: ask for it forwards and backwards by rowid-free means.
                let sql = if dir == "ASC" { s.clone() } else { format!("SELECT * FROM ({s}) ORDER BY 1 DESC") };
                known.extend(scan(src, &sql, pk.len()).0);
            }
        }
    }
    let lookup = format!(
        "{select} WHERE {}",
        pk.iter().enumerate().map(|(i, c)| format!("\"{c}\" = ?{}", i + 1)).collect::<Vec<_>>().join(" AND ")
    );
    let mut lost = BTreeSet::new();
    for key in known {
        let shown = show(&key);
        if copied_keys.contains(&shown) || lost.contains(&shown) {
            continue;
        }
        let found = src.prepare(&lookup).and_then(|mut stmt| {
            stmt.query_row(rusqlite::params_from_iter(&key), |r| {
                (0..width).map(|i| r.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>()
            })
        });
        match found {
            Ok(row) => copy(&row, &mut copied_keys)?,
            Err(rusqlite::Error::QueryReturnedNoRows) => {}
            Err(_) => {
                lost.insert(shown);
            }
        }
    }
    Ok(TableSalvage { name: table.into(), copied, complete, lost: lost.into_iter().collect() })
}

/// Where `store recover` writes by default: beside the damaged file.
pub fn default_output(damaged: &Path) -> PathBuf {
    let mut name = damaged.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".recovered");
    damaged.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_store_checks_ok_and_recovers_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let alert = crate::store::tests::alert;
        {
            let mut db = Db::open(&path).unwrap();
            db.insert_alerts(&(1..=50).map(alert).collect::<Vec<_>>(), &["log", "slack"], 1000).unwrap();
            db.create_enrollment("Reception", 600_000, 1000).unwrap();
        }
        assert_eq!(check(&path, false, Some(START_CHECK_BUDGET)).unwrap(), Integrity::Ok);
        assert_eq!(check(&path, true, None).unwrap(), Integrity::Ok);
        let out = default_output(&path);
        // Slack's records were intact: nothing queued again; email had none: queued for the
        // recent alerts only (received at 1000 ms, so `since` 0 takes all of them).
        let s = recover(&path, &out, &["log", "slack"], 0, 5000).unwrap();
        assert!(s.lossless(), "{s:?}");
        assert!(s.requeued.is_empty());
        let counts: Vec<_> = s.tables.iter().map(|t| (t.name.as_str(), t.copied)).collect();
        assert_eq!(&counts[..2], &[("alerts", 50), ("outbox", 100)]);
        assert_eq!(check(&out, true, None).unwrap(), Integrity::Ok);
        let e = recover(&path, &out, &["log"], 0, 5000).unwrap_err().to_string();
        assert!(e.contains("exists already") && e.contains("sos.db.recovered"), "{e}");
        let again = dir.path().join("again.db");
        let s = recover(&path, &again, &["log", "email"], 0, 5000).unwrap();
        assert_eq!(s.requeued.len(), 50, "email had no record of any alert");
        let e = check(&dir.path().join("missing.db"), false, None).unwrap_err().to_string();
        assert!(e.contains("missing.db"), "{e}");
    }

    /// An alert lost with a damaged page leaves its escalation deadline behind: it could never
    /// fire, and the escalation engine found it due every time it looked, for ever (helper-45).
    /// Recovery drops it, as it drops the lost alert's delivery records.
    #[test]
    fn a_lost_alerts_deadline_and_jobs_are_dropped_by_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let alert = crate::store::tests::alert;
        {
            let mut db = Db::open(&path).unwrap();
            db.insert_alerts(&(1..=3).map(alert).collect::<Vec<_>>(), &["log"], 1000).unwrap();
            // As a damaged page loses a row: the alert alone.
            db.conn.pragma_update(None, "foreign_keys", false).unwrap();
            let lost = sos_shared::AlertId::from_u128(2).to_string();
            db.conn.execute("DELETE FROM alerts WHERE alert_id = ?1", [&lost]).unwrap();
        }
        let out = dir.path().join("out.db");
        let s = recover(&path, &out, &["log"], 0, 5000).unwrap();
        assert_eq!((s.orphan_jobs, s.orphan_deadlines), (1, 1), "{s:?}");
        assert!(!s.lossless());
        let db = Db::open(&out).unwrap();
        let deadlines: i64 = db.conn.query_row("SELECT count(*) FROM escalations", [], |r| r.get(0)).unwrap();
        assert_eq!(deadlines, 2, "the two alerts left keep theirs");
    }

    /// A store from before the responses kept their alert's time (the schema's
    /// `V_OPEN_BY_TIME`) recovered into a new one: each response gets its alert's time, and the
    /// popup read finds the open alerts by it.
    #[test]
    fn a_store_from_before_the_open_index_is_recovered_with_its_alerts_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let alert = crate::store::tests::alert;
        {
            let mut db = Db::open(&path).unwrap();
            db.insert_alerts(&(1..=3).map(alert).collect::<Vec<_>>(), &["log"], 1000).unwrap();
            as_version_12(&db);
        }
        let out = dir.path().join("out.db");
        let s = recover(&path, &out, &["log"], 0, 5000).unwrap();
        assert!(s.lossless(), "{s:?}");
        let db = Db::open(&out).unwrap();
        let times: Vec<(i64, i64)> = db
            .conn
            .prepare("SELECT r.received_at_ms, a.received_at_ms FROM responses r JOIN alerts a USING (alert_id)")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(times, vec![(1000, 1000); 3]);
        assert_eq!(db.popup_targets(5000).unwrap().len(), 3);
    }

    /// The responses table as version 12 had it (before the schema's `V_OPEN_BY_TIME`).
    fn as_version_12(db: &Db) {
        db.conn
            .execute_batch(
                "DROP INDEX responses_open; DROP INDEX responses_closed;
                 ALTER TABLE responses DROP COLUMN received_at_ms;
                 CREATE INDEX responses_recent ON responses (changed_at_ms);
                 PRAGMA user_version = 12;",
            )
            .unwrap();
    }

    fn popup_read_of_everything(db: &Db, now_ms: i64) -> Vec<String> {
        db.popup_ids_read_from_every_alert(now_ms, crate::store::MAX_POPUP_TARGETS as i64)
    }

    fn popup_read(db: &Db, now_ms: i64) -> Vec<String> {
        db.popup_targets(now_ms).unwrap().iter().map(|t| t.alert.alert_id.to_string()).collect()
    }

    /// A store of `n` open alerts, alert `i` received at `1000 + i` ms, whose alerts `lost` are
    /// then lost as a damaged page loses rows (their responses stay).
    fn store_with_lost_alerts(path: &Path, n: u128, lost: impl IntoIterator<Item = u128>) -> Db {
        let mut db = Db::open(path).unwrap();
        let alerts: Vec<_> = (1..=n)
            .map(|i| {
                let mut a = crate::store::tests::alert(i);
                a.received_at_ms = 1_000 + i as i64;
                a
            })
            .collect();
        db.insert_alerts(&alerts, &["log"], 1000).unwrap();
        db.conn.pragma_update(None, "foreign_keys", false).unwrap();
        for i in lost {
            db.conn
                .execute("DELETE FROM alerts WHERE alert_id = ?1", [&sos_shared::AlertId::from_u128(i).to_string()])
                .unwrap();
        }
        db
    }

    /// The responses `store recover` keeps of lost alerts stay open for ever: they must take no
    /// real alert's place among the 500 popups, whether recovered by this collector or by an
    /// older one and then migrated (helper-46: 490 popups instead of 500).
    #[test]
    fn the_responses_of_lost_alerts_take_no_real_alerts_popup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        drop(store_with_lost_alerts(&path, 520, 511..=520));
        let out = dir.path().join("out.db");
        recover(&path, &out, &["log"], 0, 5000).unwrap();
        let db = Db::open(&out).unwrap();
        let want = popup_read_of_everything(&db, 10_000);
        assert_eq!(want.len(), 500);
        assert_eq!(popup_read(&db, 10_000), want);

        // A store of the version before the copy, with the same orphans, migrated.
        let old = dir.path().join("old.db");
        as_version_12(&store_with_lost_alerts(&old, 520, 511..=520));
        let db = Db::open(&old).unwrap();
        assert_eq!(popup_read(&db, 10_000), popup_read_of_everything(&db, 10_000));
    }

    /// A lost alert sent again after `store recover` takes the place of its newest time among
    /// the popups, not of the old row's (helper-46: left out, behind 599 older alerts).
    #[test]
    fn a_lost_alert_sent_again_after_recovery_is_the_newest_popup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        drop(store_with_lost_alerts(&path, 600, [1]));
        let out = dir.path().join("out.db");
        recover(&path, &out, &["log"], 0, 5000).unwrap();
        let mut db = Db::open(&out).unwrap();
        let mut again = crate::store::tests::alert(1);
        again.received_at_ms = 1_000_000;
        assert_eq!(db.insert_alerts(&[again], &["log"], 1_000_000).unwrap(), vec![crate::store::Stored::New]);
        let want = popup_read_of_everything(&db, 1_000_000);
        assert_eq!(want[0], sos_shared::AlertId::from_u128(1).to_string());
        assert_eq!(popup_read(&db, 1_000_000), want);
    }

    /// The check beside the service: on a store with a page overwritten while a writer holds it
    /// open, it reports the damage and leaves the mark (0600, naming the file); a check that
    /// passes is reported as such and leaves none; the mark is removed by `clear_damage_mark`.
    #[test]
    fn the_check_beside_the_service_reports_damage_and_leaves_the_mark() {
        use std::io::{Seek as _, SeekFrom, Write as _};
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let alert = crate::store::tests::alert;
        let mut db = Db::open(&path).unwrap();
        db.insert_alerts(&(1..=300).map(alert).collect::<Vec<_>>(), &["log", "slack"], 1000).unwrap();
        let found = |path: &Path| {
            let (tx, rx) = std::sync::mpsc::channel();
            check_while_serving(path, START_CHECK_BUDGET, (), move |found| tx.send(found).unwrap()).unwrap();
            rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap()
        };
        assert_eq!(found(&path), Integrity::Ok);
        assert!(!marked_damaged(&path));

        // Checkpoint everything into the file, then overwrite a leaf of the outbox in it.
        db.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        let (page_size, pages): (u64, u64) = (
            db.conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap(),
            db.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap(),
        );
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start((pages / 2) * page_size)).unwrap();
        f.write_all(&vec![0xA5; page_size as usize]).unwrap();
        f.sync_all().unwrap();
        match found(&path) {
            Integrity::Damaged(problems) => assert!(!problems.is_empty()),
            other => panic!("the damage was not found: {other:?}"),
        }
        assert!(marked_damaged(&path));
        let mark = damage_mark(&path);
        assert_eq!(mark, dir.path().join("sos.db.check-failed"));
        assert_eq!(std::fs::metadata(&mark).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&mark).unwrap();
        assert!(text.contains(&path.display().to_string()) && text.contains("store recover"), "{text}");
        clear_damage_mark(&path).unwrap();
        assert!(!marked_damaged(&path));
        clear_damage_mark(&path).unwrap();
    }

    /// The boot record: a store no collector started on during this boot is checked before
    /// serving; after `record_boot`, restarts within the boot check beside the service; a
    /// record of another boot (the machine went down since) does not count.
    #[test]
    fn only_a_start_recorded_during_this_boot_lets_the_check_run_beside_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        std::fs::write(&path, b"").unwrap();
        assert!(!started_this_boot(&path));
        record_boot(&path).unwrap();
        assert_eq!(started_this_boot(&path), boot_id().is_some(), "Linux has a boot id");
        // Another file put in place (a restore, the recovered store moved in): not this one.
        std::fs::rename(&path, dir.path().join("old.db")).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(!started_this_boot(&path));
        record_boot(&path).unwrap();
        assert_eq!(started_this_boot(&path), boot_id().is_some());
        forget_boot(&path);
        assert!(!started_this_boot(&path));
        std::fs::write(boot_record(&path), "00000000-0000-0000-0000-000000000000 1 2\n").unwrap();
        assert!(!started_this_boot(&path));
        assert_eq!(boot_record(&path), dir.path().join("sos.db.boot"));
    }
}
