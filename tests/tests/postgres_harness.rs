//! The harness of the several-collectors tests, tested on its own: a PostgreSQL cluster of the
//! test's own that starts, keeps committed rows across a crash and a restart, and a TCP proxy
//! that blackholes a connection (a stall, not a reset) and heals it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use sos_e2e::postgres::{self, PgCluster};
use sos_e2e::tcpproxy::TcpProxy;

#[test]
fn a_cluster_starts_as_an_unprivileged_user_and_keeps_committed_rows_across_a_crash_and_a_restart() {
    if !postgres::available() {
        return;
    }
    let pg = PgCluster::start();
    assert!(pg.is_ready());
    assert!(pg.url().starts_with("postgres://sos:") && pg.url().ends_with(&format!("@127.0.0.1:{}/sos", pg.port)));
    // Not root: PostgreSQL refuses to, and the tests must not need it.
    let owner =
        pg.query("SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()");
    assert_eq!(owner.trim(), "sos");
    let uid = |p: &std::path::Path| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap());
    if uid("/proc/self".as_ref()) == 0 {
        assert_ne!(uid(&pg.data_dir()), 0, "the cluster runs as root");
    }

    pg.query("CREATE TABLE t (n integer PRIMARY KEY)");
    pg.query("INSERT INTO t VALUES (1)");
    pg.kill();
    assert!(!pg.is_ready(), "still answering after an immediate stop");
    assert!(!pg.try_query("SELECT 1").status.success());
    pg.start_again();
    assert_eq!(pg.query("SELECT n FROM t").trim(), "1", "a committed row was lost in the crash");
    assert!(
        pg.log().contains("database system was interrupted") || pg.log().contains("not properly shut down"),
        "no crash recovery in the log:\n{}",
        pg.log()
    );

    pg.query("INSERT INTO t VALUES (2)");
    let port = pg.port;
    pg.restart();
    assert_eq!(pg.port, port);
    assert_eq!(pg.query("SELECT string_agg(n::text, ',' ORDER BY n) FROM t").trim(), "1,2");

    // The password is needed: a wrong one is refused.
    let wrong = std::process::Command::new(postgres::bin_dir().unwrap().join("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "sos", "-d", "sos", "-c", "SELECT 1"])
        .env("PGPASSWORD", "not-the-password")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));

    let dir = pg.data_dir();
    drop(pg);
    assert!(!dir.exists(), "the cluster's directory was left behind");
}

#[test]
fn two_clusters_run_side_by_side_on_their_own_ports() {
    if !postgres::available() {
        return;
    }
    let a = PgCluster::start();
    let b = PgCluster::start();
    assert_ne!(a.port, b.port);
    a.query("CREATE TABLE only_in_a (n integer)");
    assert!(!b.try_query("SELECT * FROM only_in_a").status.success());
}

/// An echo server on 127.0.0.1: every connection gets its bytes back.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn read_exact_within(s: &mut TcpStream, n: usize, timeout: Duration) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn the_proxy_blackholes_both_ways_without_closing_and_heals_in_order() {
    let proxy = TcpProxy::start(echo_server());
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"hello").unwrap();
    assert_eq!(read_exact_within(&mut s, 5, Duration::from_secs(10)).unwrap(), b"hello");

    proxy.blackhole();
    assert!(proxy.is_blackholed());
    s.write_all(b"held").unwrap();
    // A stall: the read times out; it neither ends (EOF) nor is reset.
    let e = read_exact_within(&mut s, 4, Duration::from_millis(500)).unwrap_err();
    assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e:?}");
    // A new connection is accepted but reaches nothing.
    let mut fresh = TcpStream::connect(proxy.addr).unwrap();
    fresh.write_all(b"new").unwrap();
    let e = read_exact_within(&mut fresh, 3, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e:?}");

    proxy.heal();
    // What was held arrives, in order, and the path carries on.
    assert_eq!(read_exact_within(&mut s, 4, Duration::from_secs(10)).unwrap(), b"held");
    assert_eq!(read_exact_within(&mut fresh, 3, Duration::from_secs(10)).unwrap(), b"new");
    s.write_all(b"after").unwrap();
    assert_eq!(read_exact_within(&mut s, 5, Duration::from_secs(10)).unwrap(), b"after");
    assert_eq!(proxy.accepted(), 2);
}

#[test]
fn a_query_through_a_blackholed_proxy_stalls_and_completes_once_healed() {
    if !postgres::available() {
        return;
    }
    let pg = PgCluster::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", pg.port).parse().unwrap());
    let psql = postgres::bin_dir().unwrap().join("psql");
    let url = pg.url_via(proxy.addr.port());
    let run = |sql: &str, timeout: &str| {
        std::process::Command::new(&psql)
            .args(["-X", "-At", "-d", &url, "-c", sql])
            .env("PGCONNECT_TIMEOUT", timeout)
            .output()
            .unwrap()
    };
    let out = run("SELECT 40 + 2", "10");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    proxy.blackhole();
    let out = run("SELECT 1", "2");
    assert!(!out.status.success(), "a query went through a blackholed proxy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timeout"), "not a stall: {err}");

    // A query started while cut off completes once the path heals.
    let waiting = {
        let psql = psql.clone();
        let url = url.clone();
        std::thread::spawn(move || {
            std::process::Command::new(psql).args(["-X", "-At", "-d", &url, "-c", "SELECT 'through'"]).output().unwrap()
        })
    };
    // The proxy has the new connection (it is accepted, and held) before the path heals.
    assert!(sos_e2e::eventually(Duration::from_secs(10), || proxy.accepted() >= 3));
    proxy.heal();
    let out = waiting.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "through");
}
