//! Acknowledgements sent once the store has committed (an SOS, a cancellation).

use sos_shared::protocol::{AckStatus, CancelAck, SosAck};
use sos_shared::{unix_now, AlertId, Message};
use tracing::{debug, error, info, warn};

use crate::stats::Stats;
use crate::store::{now_ms, Cancelled, NewAlert, Store, Stored};

use super::Reply;

pub(super) async fn store_and_ack(store: Store, alert: NewAlert, reply: Reply) {
    let alert_id = alert.sos.alert_id;
    let test = alert.sos.test;
    let attempt = alert.sos.attempt;
    match store.insert(alert).await {
        Ok(stored) => {
            let status = match stored {
                Stored::New => {
                    Stats::bump(&reply.stats.sos_stored);
                    info!(test, attempt, "SOS stored; notifying responders");
                    AckStatus::Stored
                }
                Stored::Duplicate => {
                    Stats::bump(&reply.stats.sos_duplicate);
                    debug!(attempt, "SOS retransmission of a stored alert; acknowledging again");
                    AckStatus::Duplicate
                }
            };
            let ack = Message::SosAck(SosAck { alert_id, status, server_time: unix_now() });
            reply.send(&ack).await;
        }
        Err(e) => {
            Stats::bump(&reply.stats.store_errors);
            // Bounded: every retransmission of every SOS fails while the store does.
            let line = reply
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .note(crate::refusal::Cause::StoreFailed, std::time::Instant::now());
            if let Some(line) = line {
                error!(error = %e, before = line.before, "{}", crate::refusal::Cause::StoreFailed.text());
            }
        }
    }
}

pub(super) async fn cancel_and_ack(store: Store, alert_id: AlertId, reason: String, key_id: String, reply: Reply) {
    match store.cancel(alert_id, reason.clone(), key_id, now_ms()).await {
        Ok(outcome @ (Cancelled::New | Cancelled::Already)) => {
            if outcome == Cancelled::New {
                Stats::bump(&reply.stats.cancelled);
                warn!(%reason, "SOS CANCELLED by the sender; telling responders");
            }
            let ack = Message::CancelAck(CancelAck { alert_id, server_time: unix_now() });
            reply.send(&ack).await;
        }
        Ok(Cancelled::Unknown) => {
            Stats::bump(&reply.stats.cancel_unknown);
            warn!("CANCEL for an alert this collector does not have; not acknowledged");
        }
        Err(e) => {
            Stats::bump(&reply.stats.store_errors);
            error!(error = %e, "cannot record a cancellation; not acknowledged, the agent will retry");
        }
    }
}
