//! A damaged store (docs/RELIABILITY.md, "A damaged store"): a real SQLite file with garbage
//! written into one page of the alerts table is refused at start with a message that names the
//! file and the way out; `sos-collector store check` says it is damaged; `store recover` copies
//! every alert it can still read into a new file and names, by id, every alert it could not; the
//! recovered file passes the check and the collector starts on it.

use std::collections::BTreeSet;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sos_collector::store::{Db, NewAlert};
use sos_e2e::bin::bin;
use sos_e2e::site::Site;
use sos_e2e::{CollectorProcess, Peer, SlackStandIn};
use sos_shared::protocol::Sos;
use sos_shared::AlertId;

const ALERTS: u128 = 200;

/// `sos-collector ARGS --config CONFIG`, to completion within 60 s.
fn collector(args: &[&str], config: &Path) -> Output {
    let child = Command::new(bin("sos-collector"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("sos-collector {args:?} did not exit within 60 s");
        }
    }
}

/// 200 alerts with a message each, stored by the collector's own store code: several leaf pages.
fn fill(db_path: &Path) {
    let mut db = Db::open(db_path).unwrap();
    let now = sos_collector::store::now_ms();
    let alerts: Vec<NewAlert> = (1..=ALERTS)
        .map(|i| NewAlert {
            sos: Sos {
                alert_id: AlertId::from_u128(i * 0x1_0000_0000_0001),
                test: false,
                triggered_at: now as u64 / 1000,
                attempt: 0,
                user: format!("user{i}"),
                host: format!("desk-{i}"),
                ip: "10.0.0.7".into(),
                location: "Building A, floor 2, reception".into(),
                message: "An aggressive visitor at the front desk, please come quickly".into(),
                agent: "sos-agent test".into(),
            },
            received_at_ms: now,
            source: "127.0.0.1:40000".parse().unwrap(),
            key_id: "0011223344556677".into(),
            enrolled: None,
            site: None,
        })
        .collect();
    db.insert_alerts(&alerts, &["log"], now).unwrap();
}

/// Overwrite the first 64 bytes (page header and cell pointers) of a leaf page in the middle of
/// the alerts table, found from its root page (a WITHOUT ROWID table: an index b-tree).
fn corrupt_a_middle_leaf_of_alerts(db_path: &Path) -> u32 {
    let (page_size, root): (u64, u64) = {
        let c = rusqlite::Connection::open(db_path).unwrap();
        let page_size = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let root = c.query_row("SELECT rootpage FROM sqlite_master WHERE name = 'alerts'", [], |r| r.get(0)).unwrap();
        (page_size, root)
    };
    assert!(!db_path.with_extension("db-wal").exists(), "the WAL was checkpointed on close");
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(db_path).unwrap();
    let mut page = vec![0u8; page_size as usize];
    f.seek(SeekFrom::Start((root - 1) * page_size)).unwrap();
    f.read_exact(&mut page).unwrap();
    assert_eq!(page[0], 0x02, "the root of alerts is an interior index page (enough rows for several leaves)");
    let cells = u16::from_be_bytes([page[3], page[4]]) as usize;
    assert!(cells >= 2, "{cells} cells");
    let at = 12 + 2 * (cells / 2);
    let cell = u16::from_be_bytes([page[at], page[at + 1]]) as usize;
    let leaf = u32::from_be_bytes(page[cell..cell + 4].try_into().unwrap());
    f.seek(SeekFrom::Start((u64::from(leaf) - 1) * page_size)).unwrap();
    f.write_all(&[0xA5; 64]).unwrap();
    f.sync_all().unwrap();
    leaf
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_corrupt_page_in_the_alerts_table_is_refused_at_start_and_recovered_with_every_lost_alert_named() {
    let site = Site::new();
    let config = site.dir.path().join("collector.toml");
    std::fs::write(&config, site.collector_config(None, None)).unwrap();
    let db_path = site.data_dir().join("sos.db");
    fill(&db_path);
    corrupt_a_middle_leaf_of_alerts(&db_path);

    let mark = site.data_dir().join("sos.db.check-failed");
    let refused_before_serving = |when: &str| {
        let out = collector(&["run"], &config);
        let said = text(&out);
        eprintln!("--- {when}:\n{said}");
        assert!(!out.status.success(), "{said}");
        assert!(said.contains(&db_path.display().to_string()) && said.contains("damaged"), "{said}");
        assert!(said.contains("sos-collector store recover --config"), "{said}");
        assert!(!said.contains("collector ready"), "{said}");
        assert!(mark.exists(), "the mark of damage is left: {said}");
    };
    // No collector has started on this store since the machine booted (it may have been a power
    // cut): checked before serving, refused, marked.
    refused_before_serving("first start of the boot on the damaged store");

    // A restart within the same boot (as after a crash of the process, which cannot damage the
    // store) of a store not known damaged: checked beside the service, which already serves.
    // The check finds the damage: the collector stops, non-zero, naming the file and the way
    // out, and leaves the mark.
    std::fs::remove_file(&mark).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("Linux's boot id");
    let store = std::fs::metadata(&db_path).unwrap();
    let record = {
        use std::os::unix::fs::MetadataExt as _;
        format!("{} {} {}\n", boot.trim(), store.dev(), store.ino())
    };
    std::fs::write(site.data_dir().join("sos.db.boot"), record).unwrap();
    let out = collector(&["run"], &config);
    let said = text(&out);
    eprintln!("--- restart within the boot on the damaged store:\n{said}");
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("collector ready"), "served while it checked: {said}");
    assert!(said.contains("THE STORE IS DAMAGED: found by the check at start"), "the check found it: {said}");
    assert!(said.contains(&db_path.display().to_string()) && said.contains("damaged"), "{said}");
    assert!(said.contains("sos-collector store recover --config"), "{said}");
    assert!(mark.exists(), "the mark of damage is left: {said}");
    // Every later start: the full check before serving, refused, until a check passes.
    refused_before_serving("start on the marked store");

    let out = collector(&["store", "check"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("DAMAGED"), "{}", text(&out));

    // Recovery: a new file beside the store; the damaged one is only read.
    let before = std::fs::read(&db_path).unwrap();
    let out = collector(&["store", "recover"], &config);
    let report = text(&out);
    eprintln!("--- store recover:\n{report}");
    assert_eq!(out.status.code(), Some(1), "something was lost: {report}");
    assert_eq!(std::fs::read(&db_path).unwrap(), before, "the damaged store is left as it was");
    let lost: BTreeSet<String> =
        report.lines().filter_map(|l| l.trim().strip_prefix("lost alert: ")).map(str::to_owned).collect();
    let recovered_path = site.data_dir().join("sos.db.recovered");
    let recovered: BTreeSet<String> = {
        let c = rusqlite::Connection::open(&recovered_path).unwrap();
        let mut stmt = c.prepare("SELECT alert_id FROM alerts").unwrap();
        let ids = stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
        ids
    };
    let all: BTreeSet<String> = (1..=ALERTS).map(|i| AlertId::from_u128(i * 0x1_0000_0000_0001).to_string()).collect();
    assert!(!lost.is_empty(), "one page of alerts was destroyed: {report}");
    assert!(recovered.len() as u128 >= ALERTS - 40, "only one page is lost: {} recovered\n{report}", recovered.len());
    assert!(lost.is_disjoint(&recovered));
    assert_eq!(lost.union(&recovered).cloned().collect::<BTreeSet<_>>(), all, "every alert is recovered or named");
    assert!(report.contains("mv "), "says how to put the file in place: {report}");

    // Put in place as the report says; the check passes and the collector starts.
    std::fs::rename(&db_path, site.data_dir().join("sos.db.damaged")).unwrap();
    let _ = std::fs::remove_file(site.data_dir().join("sos.db-shm"));
    std::fs::rename(&recovered_path, &db_path).unwrap();
    let out = collector(&["store", "check"], &config);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!mark.exists(), "a check that passes removes the mark");
    let running = CollectorProcess::spawn(
        {
            let mut c = Command::new(bin("sos-collector"));
            c.args(["run", "--config"]).arg(&config);
            c
        },
        site.addr,
        config.clone(),
    );
    let listed = text(&running.alerts_cli());
    assert!(listed.contains(recovered.iter().next().unwrap()), "{listed}");
}

/// Garbage over the alerts table's root page while the collector runs, then a write by another
/// process (which makes the collector read pages afresh, not from its cache): the next SOS finds
/// the store damaged; it is not acknowledged, the writer stops rather than write on, and the
/// process exits non-zero with the reason, for the service manager to restart it (and meet the
/// check at start).
#[test]
fn a_store_damaged_under_a_running_collector_ends_the_process_non_zero_with_the_reason() {
    let site = Site::new();
    let db_path = site.data_dir().join("sos.db");
    fill(&db_path);
    // Nothing pending: the collector has no reason to read the alerts table before the SOS.
    rusqlite::Connection::open(&db_path).unwrap().execute("UPDATE outbox SET state = 'delivered'", []).unwrap();
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start(Some(&slack), None);
    {
        let c = rusqlite::Connection::open_with_flags(&db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let page_size: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let root: u64 =
            c.query_row("SELECT rootpage FROM sqlite_master WHERE name = 'alerts'", [], |r| r.get(0)).unwrap();
        drop(c);
        let mut f = std::fs::OpenOptions::new().write(true).open(&db_path).unwrap();
        f.seek(SeekFrom::Start((root - 1) * page_size)).unwrap();
        f.write_all(&vec![0xA5; page_size as usize]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        // The collector may have read that page since it started (its reads after "ready" are
        // not ours to order) and would then write from its cache, never reading the garbage. A
        // write through the WAL by another connection, as any other process's write would, makes
        // every connection drop its cached pages at its next transaction: the writer reads the
        // page afresh, from the file.
        let wal = db_path.with_extension("db-wal");
        let wal_before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let c = rusqlite::Connection::open(&db_path).unwrap();
        c.busy_timeout(Duration::from_secs(20)).unwrap();
        let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {version}")).unwrap();
        drop(c);
        let wal_after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(wal_after > wal_before, "the write went through the WAL ({wal_before} → {wal_after} bytes)");
    }
    let peer = Peer::new(site.addr, site.key());
    let mut sos = sos_shared::Message::Sos(Sos {
        alert_id: AlertId::random(),
        test: false,
        triggered_at: sos_shared::unix_now(),
        attempt: 0,
        user: "alice".into(),
        host: "desk-1".into(),
        ip: "10.0.0.1".into(),
        location: "Reception".into(),
        message: String::new(),
        agent: "test".into(),
    });
    peer.send(&sos);
    collector.wait_log(Duration::from_secs(20), "STORE WRITER STOPPED");
    if let sos_shared::Message::Sos(s) = &mut sos {
        s.attempt = 1;
    }
    peer.send(&sos);
    let (status, log) = collector.wait_exit();
    assert!(!status.success(), "{log}");
    assert!(log.contains("damaged") && log.contains("sos-collector store recover"), "{log}");
    assert!(site.data_dir().join("sos.db.check-failed").exists(), "the writer left the mark of damage: {log}");
    assert!(!log.contains("SOS stored"), "nothing acknowledged: {log}");
    assert_eq!(peer.recv_raw(Duration::from_millis(500)), None, "no ACK");
    // Slack, which still works, was told before the process ended.
    let told = slack.received().iter().any(|r| r.status == 200 && r.text().contains("STOPPING"));
    assert!(told, "{:?}", slack.received().iter().map(|r| r.text()).collect::<Vec<_>>());
    // The restart (by the service manager) refuses the store before it serves.
    let config = site.dir.path().join("collector.toml");
    std::fs::write(&config, site.collector_config(Some(&slack), None)).unwrap();
    let out = self::collector(&["run"], &config);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("damaged") && said.contains("sos-collector store recover --config"), "{said}");
    assert!(!said.contains("collector ready"), "{said}");
}
