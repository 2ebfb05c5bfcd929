//! `sos-demo`: the whole path of one SOS on this machine, on embedded defaults.
//!
//! Starts the real collector (the `sos-collector` library, default settings, a fresh key and
//! store in a temporary directory) with its Slack and email channels pointed at local
//! stand-ins (an HTTP server that answers like Slack, an SMTP server), then sends a TEST SOS
//! with the real agent send path (`sos-agent send` in-process) and shows where it arrived:
//! the acknowledgement, the Slack post, the email, the log line and the store's record.
//!
//! Nothing leaves this machine: everything listens on 127.0.0.1.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sos_agent::identity::Identity;
use sos_agent::send::{default_schedule, new_sos, Sender};
use sos_collector::store::Db;
use sos_collector::Config;
use sos_e2e::{SlackStandIn, SmtpServer};
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    tracing_subscriber_init();
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sos-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The collector's own log at `warn`, so the log channel's alert line shows.
fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn demo() -> anyhow::Result<()> {
    sos_collector::install_crypto_provider();
    let dir = tempfile::Builder::new().prefix("sos-demo-").tempdir().context("cannot create a temporary directory")?;
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![]);

    // Embedded defaults, plus the two stand-in channels, a store in the temporary directory, and
    // the web console on a free loopback port.
    let console = std::net::SocketAddr::from(([127, 0, 0, 1], sos_e2e::console::free_tcp_port()));
    let mut config = Config::parse(
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\
             [notify.slack]\nwebhook_url = \"{slack}\"\n\
             [notify.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp}\ntls = \"none\"\n\
             from = \"sos@demo.invalid\"\nto = [\"security@demo.invalid\"]\n\
             [http]\nlisten = \"{console}\"\nadmins = [\"Demo Admin\"]\n",
            data = dir.path().join("sos-data").display().to_string(),
            slack = slack.url,
            smtp = smtp.port,
        ),
        None,
    )?;
    config.ensure_key()?;
    let key = config.key.clone().context("the collector has no key")?;
    let db_path = config.database_path();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let collector = tokio::spawn(sos_collector::run(socket, config, async {
            let _ = stopped.await;
        }));
        println!("SOS demo: everything below runs on this machine, on 127.0.0.1.\n");
        println!("collector  listening on {addr} (UDP), key id {}", key.id());
        println!("           store {}", db_path.display());
        println!(
            "           channels: log, Slack (stand-in at {}), email (SMTP server on port {})",
            slack.url, smtp.port
        );

        let identity = Identity::current();
        // Enrollment: a one-time code (what `sos-collector enroll --name` prints), turned into
        // the agent's own key over SPAKE2 (what `sos-agent enroll CODE --collector` does).
        let code = Db::open(&db_path)?.create_enrollment("Demo desk", 10 * 60_000, sos_collector::store::now_ms())?;
        println!("\nenroll     one-time code {code} for \"Demo desk\" (sos-collector enroll --name \"Demo desk\")");
        let (enrolled, _) =
            sos_agent::enroll::enroll(&code, &addr.to_string(), &identity.host, Duration::from_secs(10)).await?;
        let own_key = sos_shared::Key::from_base64(&enrolled.key)?;
        println!(
            "           the agent is enrolled as \"{}\" (agent {}) with its own key, key id {}",
            enrolled.name,
            enrolled.agent_id,
            own_key.id()
        );
        let _ = key;

        let sos = new_sos(&identity, "Demo desk (set `location` in the agent's config)", "This is a demo.", true);
        let alert_id = sos.alert_id;
        println!("\nagent      sending TEST SOS {alert_id} as {}@{}", identity.user, identity.host);
        let sender = Sender::with(own_key, vec![addr.to_string()], default_schedule());
        let delivered = sender.send(sos, Duration::from_secs(10)).await.context("SOS NOT DELIVERED")?;
        println!(
            "           acknowledged by {} ({:?}) in {} ms",
            delivered.collector,
            delivered.status,
            delivered.elapsed.as_millis()
        );

        let id = alert_id.to_string();
        let (slack_posts, mail) = tokio::task::spawn_blocking({
            let id = id.clone();
            move || {
                let post = slack.wait_for_text(WAIT, &id);
                let mail = smtp.wait_for_text(WAIT, &id);
                (post, mail)
            }
        })
        .await?;
        println!("\nslack      the stand-in webhook answered {} and received:", slack_posts.status);
        println!("           {}", slack_posts.body["text"].as_str().unwrap_or_default());
        anyhow::ensure!(
            slack_posts.text().contains(&format!("agent {}", enrolled.agent_id)),
            "the alert is not attributed to the enrolled agent"
        );
        println!(
            "           Enrolled as: {} (agent {}, enrolled on host {})",
            enrolled.name, enrolled.agent_id, identity.host
        );
        println!("\nemail      the SMTP server accepted:");
        for header in ["Subject:", "From:", "To:"] {
            if let Some(line) = mail.lines().find(|l| l.starts_with(header)) {
                println!("           {line}");
            }
        }

        // The store records each channel's delivery after the channel accepted it.
        let deadline = Instant::now() + WAIT;
        let deliveries = loop {
            let db = Db::open_read_only(&db_path)?;
            let rows = db.recent_alerts(1)?;
            if let Some((_, d)) = rows.into_iter().find(|(a, _)| a.alert_id == alert_id) {
                if d.iter().all(|d| d.state != "pending") || Instant::now() >= deadline {
                    break d;
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "alert {id} is not in the store");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("\nstore      alert {id}:");
        for d in &deliveries {
            println!("           {:<6} {} after {} attempt(s)", d.channel, d.state, d.attempts);
        }

        // The console: ready, and its metrics count the alert.
        let (ready, metrics) = tokio::task::spawn_blocking(move || {
            let ready = sos_e2e::console::http(console, "GET", "/readyz", "", &[]);
            let metrics = sos_e2e::console::http(console, "GET", "/metrics", "", &[]);
            (ready, metrics)
        })
        .await?;
        println!("\nconsole    http://{console}/ (log in after `sos-collector responders passwd NAME`)");
        println!("           /readyz: {} {}", ready.status, ready.body.trim());
        for line in metrics.body.lines().filter(|l| l.starts_with("sos_alerts_stored_total")) {
            println!("           /metrics: {line}");
        }

        let _ = stop.send(());
        let stats = collector.await??;
        println!("\ncollector  stopped: {stats}");
        println!(
            "\nNext: run `sos-collector run`, enroll an agent (`sos-collector enroll --name NAME`, then\n\
             `sos-agent enroll CODE --collector HOST:PORT`) or point it at the key the collector prints,\n\
             and connect a real Slack webhook and SMTP server (README.md, \"Connecting Slack and email\")."
        );
        anyhow::ensure!(deliveries.iter().all(|d| d.state == "delivered"), "not every channel delivered the alert");
        Ok(())
    })
}
