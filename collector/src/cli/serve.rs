//! `sos-collector run`: the async runtime, the UDP socket, the first-run hints, the signals
//! that stop the service. The service itself is [`sos_collector::Collector`].

use anyhow::Context as _;
use sos_collector::Config;

/// Run the service until SIGINT or SIGTERM.
pub fn run(mut config: Config) -> anyhow::Result<()> {
    sos_collector::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sos-collector")
        .build()
        .context("cannot start the async runtime")?;
    // The socket first: a collector that cannot listen creates no file and tells nobody to point
    // an agent at it.
    let socket = rt.block_on(async { tokio::net::UdpSocket::bind(config.listen).await }).with_context(|| {
        format!("cannot listen on UDP {} (in use by another collector? not an address of this host?)", config.listen)
    })?;
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    if let Some(path) = config.ensure_key()? {
        let abs = std::fs::canonicalize(&path).unwrap_or(path);
        eprintln!(
            "No key configured: using {} (created if new, mode 0600).\n\
             Point an agent at this collector with an agent config like:\n\n    \
             collectors = [\"{}\"]\n    key_file = \"{}\"\n\n\
             then: sos-agent send --test --config agent.toml\n",
            abs.display(),
            config.listen,
            abs.display()
        );
    }
    let served = rt.block_on(async move {
        let want = config.socket_buffer_bytes;
        let got = sos_collector::udp::size_socket_buffers(&socket, want);
        if cfg!(unix) && got.receive < want {
            tracing::warn!(
                asked = want,
                receive = got.receive,
                send = got.send,
                "the kernel granted a smaller UDP receive buffer than socket_buffer_bytes: a storm of SOS may be \
                 dropped before the collector reads it; raise net.core.rmem_max and net.core.wmem_max \
                 (the Debian package installs /usr/lib/sysctl.d/60-sos-collector.conf) or lower socket_buffer_bytes"
            );
        } else {
            tracing::info!(receive = got.receive, send = got.send, "UDP socket buffers");
        }
        sos_collector::run(socket, config, shutdown_signal()).await?;
        Ok(())
    });
    // A blocking task stuck on a disk that no longer answers (the writer's last join, the mark
    // of a damaged store) must not keep the process alive: the service manager restarts it.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    served
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
