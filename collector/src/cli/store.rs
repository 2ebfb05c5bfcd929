//! `sos-collector store check` and `store recover`: what to do with a damaged SQLite store (on
//! PostgreSQL they refuse and name PostgreSQL's own tools: [`POSTGRES_CHECK`], [`POSTGRES_RECOVER`]).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sos_collector::integrity::{self, Integrity};
use sos_collector::Config;

/// What to use instead of `store check` when the store is PostgreSQL.
pub const POSTGRES_CHECK: &str = "Check PostgreSQL with its own tools, on the database server: `pg_amcheck` \
     (damaged tables and indexes) and the server's log; back it up with `pg_dump` or the site's PostgreSQL backups.";

/// What to use instead of `store recover` when the store is PostgreSQL.
pub const POSTGRES_RECOVER: &str = "Restore PostgreSQL from its backups (`pg_restore` of a `pg_dump`, or the \
     site's base backup and WAL archive); the collectors reconnect by themselves when it is back.";

/// `store check`: SQLite's full integrity check. Exit status 1 if the store is damaged.
pub fn check(config: &Config) -> anyhow::Result<bool> {
    let path = config.database_path();
    if !path.exists() {
        anyhow::bail!("no store at {} (has the collector run with this data_dir?)", path.display());
    }
    // The mark as it was before the check (inode and time): only that one is removed.
    let mark_before = integrity::file_identity(&integrity::damage_mark(&path));
    match integrity::check(&path, true, None)? {
        Integrity::Ok => {
            println!("{}: OK (SQLite integrity_check found no problem)", path.display());
            // A store found damaged before and recovered since: the collector need not check it
            // again before it serves. Not a mark left while this check ran (by a collector
            // running beside it, whose writer found damage this check's snapshot did not show).
            let mark_now = integrity::file_identity(&integrity::damage_mark(&path));
            if mark_now.is_some() && mark_now == mark_before {
                integrity::clear_damage_mark(&path)
                    .with_context(|| format!("cannot remove {}", integrity::damage_mark(&path).display()))?;
            }
            Ok(true)
        }
        Integrity::Damaged(problems) => {
            // The collector refuses it before serving from now on, until a check passes.
            if let Err(e) = integrity::mark_damaged(&path, &problems) {
                eprintln!("cannot leave the mark of damage {}: {e}", integrity::damage_mark(&path).display());
            }
            println!("{}: DAMAGED. SQLite reports:", path.display());
            for p in problems {
                println!("    {p}");
            }
            println!(
                "\nStop the collector, then run `sos-collector store recover` (with the same --config) to copy what \
                 can still be read into a new file."
            );
            Ok(false)
        }
        Integrity::Unfinished => anyhow::bail!("the check of {} did not finish", path.display()),
    }
}

/// `store recover`: salvage into `output` (default: beside the store), and report.
pub fn recover(config: &Config, output: Option<PathBuf>, config_arg: Option<&Path>) -> anyhow::Result<bool> {
    let path = config.database_path();
    if !path.exists() {
        anyhow::bail!("no store at {} (has the collector run with this data_dir?)", path.display());
    }
    let output = output.unwrap_or_else(|| integrity::default_output(&path));
    let now = sos_collector::store::now_ms();
    let since = now - config.outbox.give_up_after.as_millis().min(i64::MAX as u128) as i64;
    let salvage = integrity::recover(&path, &output, &config.channel_names(), since, now)
        .with_context(|| format!("cannot recover {} into {}", path.display(), output.display()))?;
    println!("Recovered what could be read of {} into {}:", path.display(), output.display());
    for t in &salvage.tables {
        let status = match (t.complete, t.lost.is_empty()) {
            (true, true) => "complete".to_owned(),
            (false, true) => "INCOMPLETE: rows on damaged pages are lost (none of them known by key)".to_owned(),
            (_, false) => format!("INCOMPLETE: {} rows known to exist could not be read", t.lost.len()),
        };
        println!("    {:<17} {:>7} rows copied  {status}", t.name, t.copied);
        if !t.lost.is_empty() {
            let what = if t.name == "alerts" { "lost alert" } else { "lost row" };
            for k in &t.lost {
                println!("        {what}: {k}");
            }
        }
    }
    for p in &salvage.problems {
        println!("    COULD NOT READ {p}");
    }
    if salvage.orphan_jobs > 0 {
        println!("    {} delivery records of lost alerts dropped", salvage.orphan_jobs);
    }
    if salvage.orphan_deadlines > 0 {
        println!("    {} escalation deadlines of lost alerts dropped", salvage.orphan_deadlines);
    }
    if !salvage.requeued.is_empty() {
        println!(
            "    {} deliveries of recent alerts had lost their records and are queued again (a channel may get them twice):",
            salvage.requeued.len()
        );
        for (id, channel) in &salvage.requeued {
            println!("        {id} on {channel}");
        }
    }
    let lost_alerts = salvage.tables.iter().find(|t| t.name == "alerts").map(|t| t.lost.len()).unwrap_or(0);
    if lost_alerts > 0 {
        println!(
            "\n{lost_alerts} alerts could not be recovered: look them up in the collector's log (journalctl -u sos-collector) \
             and make sure responders know of them."
        );
    }
    let config_flag = config_arg.map(|c| format!(" --config {}", c.display())).unwrap_or_default();
    println!(
        "\nTo use the recovered store (with the collector stopped; the damaged files are kept):\n\n    \
         mv {db} {db}.damaged\n    [ -e {db}-wal ] && mv {db}-wal {db}.damaged-wal\n    rm -f {db}-shm\n    \
         mv {out} {db}\n    sos-collector store check{config_flag}\n",
        db = path.display(),
        out = output.display()
    );
    Ok(salvage.lossless())
}
