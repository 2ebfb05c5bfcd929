//! The tray agent's delivery service, on the tokio runtime off the UI thread: it owns the spool,
//! sends every triggered alert until a collector acknowledges it, resends what an earlier run
//! left in the spool, heartbeats the collectors, and reports to the UI through a callback (in
//! the tray agent, winit's event-loop proxy).

use std::sync::Arc;
use std::time::Duration;

use sos_shared::protocol::Sos;
use sos_shared::{unix_now, AlertId};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::AgentConfig;
use crate::identity::Identity;
use crate::send::{new_sos, Sender};
use crate::spool::{Spool, SpoolError};

/// What the delivery service tells the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// An alert was triggered and is being sent.
    Sending {
        /// The alert.
        alert_id: AlertId,
        /// A drill.
        test: bool,
    },
    /// A collector acknowledged the alert.
    Delivered {
        /// The alert.
        alert_id: AlertId,
        /// A drill.
        test: bool,
        /// When the acknowledgement arrived, seconds since the Unix epoch.
        at: u64,
        /// The collector that acknowledged it.
        collector: String,
    },
    /// Not acknowledged after `warn_after_secs`; still trying.
    NotDeliveredYet {
        /// The alert.
        alert_id: AlertId,
        /// A drill.
        test: bool,
    },
    /// A heartbeat was answered (`Some(collector)`) or not (`None`).
    Connectivity(Option<String>),
    /// A cancellation was confirmed by a collector (`true`) or not within a minute (`false`).
    Cancelled {
        /// The alert.
        alert_id: AlertId,
        /// Whether a collector confirmed it.
        confirmed: bool,
    },
}

/// The handle the UI, the hotkey and the IPC server use to fire alerts.
#[derive(Clone)]
pub struct Delivery {
    spool: Spool,
    location: String,
    queue: mpsc::UnboundedSender<Sos>,
    sender: Sender,
    runtime: tokio::runtime::Handle,
    report: Arc<dyn Fn(Report) + Send + Sync>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("spool", &self.spool).finish_non_exhaustive()
    }
}

impl Delivery {
    /// Start the service on `runtime`: resend what is in the spool, then serve triggers and
    /// heartbeat every `config.heartbeat_secs`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        config: &AgentConfig,
        spool: Spool,
        report: Arc<dyn Fn(Report) + Send + Sync>,
    ) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<Sos>();
        let sender = Sender::new(config);
        let warn_after = Duration::from_secs(config.warn_after_secs);
        let leftover = match spool.pending() {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot read the spool; alerts from an earlier run are not resent");
                Vec::new()
            }
        };
        for sos in leftover {
            info!(alert_id = %sos.alert_id, "resending an alert left unacknowledged by an earlier run");
            let _ = queue.send(sos);
        }
        {
            let spool = spool.clone();
            let sender = sender.clone();
            let report = report.clone();
            runtime.spawn(async move {
                while let Some(sos) = rx.recv().await {
                    tokio::spawn(deliver(sos, sender.clone(), spool.clone(), warn_after, report.clone()));
                }
            });
        }
        let every = Duration::from_secs(config.heartbeat_secs);
        runtime.spawn(heartbeats(sender.clone(), every, report.clone()));
        Delivery { spool, location: config.location.clone(), queue, sender, runtime: runtime.clone(), report }
    }

    /// Withdraw an acknowledged alert (a false alarm); the outcome is reported as
    /// [`Report::Cancelled`].
    pub fn cancel(&self, alert_id: AlertId) {
        let sender = self.sender.clone();
        let report = self.report.clone();
        self.runtime.spawn(async move {
            let confirmed =
                match sender.cancel(alert_id, "cancelled by the sender from the tray", Duration::from_secs(60)).await {
                    Ok(_) => true,
                    Err(e) => {
                        warn!(%alert_id, error = %e, "the cancellation was not confirmed");
                        false
                    }
                };
            report(Report::Cancelled { alert_id, confirmed });
        });
    }

    /// Fire an SOS now. When this returns `Ok`, the alert is on disk and being sent.
    ///
    /// # Errors
    /// If the spool cannot be written; the alert is then still sent (and the caller should
    /// tell the user it is not protected against a crash).
    pub fn trigger(&self, test: bool, message: &str) -> (AlertId, Result<(), SpoolError>) {
        let sos = new_sos(&Identity::current(), &self.location, message, test);
        let id = sos.alert_id;
        let spooled = self.spool.put(&sos);
        if let Err(e) = &spooled {
            error!(alert_id = %id, error = %e, "the alert could not be spooled; sending it anyway");
        }
        info!(alert_id = %id, test, "SOS triggered");
        let _ = self.queue.send(sos);
        (id, spooled)
    }
}

/// Send one alert until acknowledged, warning once after `warn_after`.
async fn deliver(
    sos: Sos,
    sender: Sender,
    spool: Spool,
    warn_after: Duration,
    report: Arc<dyn Fn(Report) + Send + Sync>,
) {
    let (alert_id, test) = (sos.alert_id, sos.test);
    report(Report::Sending { alert_id, test });
    let mut deadline = warn_after;
    let mut warned = false;
    loop {
        match sender.send(sos.clone(), deadline).await {
            Ok(d) => {
                if let Err(e) = spool.remove(alert_id) {
                    warn!(%alert_id, error = %e, "acknowledged, but cannot be removed from the spool; it may be resent (the collector deduplicates it)");
                }
                report(Report::Delivered { alert_id, test, at: unix_now(), collector: d.collector.to_string() });
                return;
            }
            Err(e) => {
                if !warned {
                    warn!(%alert_id, error = %e, "SOS not delivered yet; still trying");
                    report(Report::NotDeliveredYet { alert_id, test });
                    warned = true;
                }
                // Keep trying, in long rounds; the sender keeps its backoff within a round.
                deadline = Duration::from_secs(300);
            }
        }
    }
}

/// Heartbeat every `every`; report whether a collector answers.
async fn heartbeats(sender: Sender, every: Duration, report: Arc<dyn Fn(Report) + Send + Sync>) {
    let identity = Identity::current();
    let mut last: Option<Option<String>> = None;
    loop {
        let answer = match sender.heartbeat(&identity, Duration::from_secs(5)).await {
            Ok(a) => a.map(|(from, _)| from.to_string()),
            Err(e) => {
                warn!(error = %e, "cannot send a heartbeat");
                None
            }
        };
        if last.as_ref() != Some(&answer) {
            match &answer {
                Some(c) => info!(collector = %c, "a collector answers"),
                None => warn!("no collector answers heartbeats"),
            }
        }
        // Every time: the tray's status line shows the last contact.
        report(Report::Connectivity(answer.clone()));
        last = Some(answer);
        tokio::time::sleep(every).await;
    }
}
