//! Acknowledgements sent once the store has committed (an SOS, a cancellation).

use sos_shared::protocol::{
    AckStatus, CancelAck, ForwardEvent, ForwardUpdate, ForwardUpdateAck, NoticeEvent, RespondAck, RespondStatus, SosAck,
};
use sos_shared::{unix_now, AlertId, Message};
use tracing::{debug, error, info, warn};

use crate::stats::Stats;
use crate::store::{now_ms, Cancelled, EnrolledAs, NewAlert, Response as _, Store, Stored, Transition, Via};

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

/// A responder desktop's "I'm responding": the acknowledgement is recorded (one transaction
/// that stops every pending page of the alert and queues the sender's notice), then answered.
pub(super) async fn respond_and_ack(store: Store, alert_id: AlertId, responder: String, note: String, reply: Reply) {
    let status = match store.acknowledge(alert_id, responder.clone(), Via::Popup, note).await {
        Ok(Transition::New { .. }) => {
            info!(
                "SOS ACKNOWLEDGED by {responder} from a responder desktop; telling the sender and stopping escalation"
            );
            RespondStatus::Acknowledged
        }
        // This responder's own acknowledgement, retransmitted because its answer was lost:
        // the answer it missed, not "someone else is responding".
        Ok(Transition::Already { by }) if by == responder => RespondStatus::Acknowledged,
        Ok(Transition::Already { by }) => {
            debug!(%by, "respond for an alert acknowledged already");
            RespondStatus::Already
        }
        Ok(Transition::Closed(state)) => {
            debug!(state = state.name(), "respond for a closed alert");
            RespondStatus::Closed
        }
        Ok(Transition::Unknown) => {
            warn!("respond for an alert this collector does not have; not answered");
            return;
        }
        Err(e) => {
            Stats::bump(&reply.stats.store_errors);
            error!(error = %e, "cannot record an acknowledgement; not answered, the responder's agent will retry");
            return;
        }
    };
    let ack = Message::RespondAck(RespondAck { alert_id, status, server_time: unix_now() });
    reply.send(&ack).await;
}

/// The first receipt of a broadcast from a responder desktop: the popup was shown.
pub(super) async fn popup_shown(store: Store, alert_id: AlertId, responder: String) {
    if let Err(e) = store.record_event(alert_id, "popup_shown", responder, Via::Popup, String::new()).await {
        debug!(%alert_id, error = %e, "cannot record that a popup was shown");
    }
}

/// A sender confirmed a notice: it is no longer repeated.
pub(super) async fn confirm_notice(store: Store, alert_id: AlertId, event: NoticeEvent) {
    if let Err(e) = store.confirm_notice(alert_id, event).await {
        // Not confirmed: the notice is pushed again after a while, and confirmed again.
        debug!(%alert_id, error = %e, "cannot record a notice receipt");
    }
}

/// A site collector's `forward_update`: recorded only for an alert that site forwarded (the
/// alert's enrolled identity is the site's), as an acknowledgement or resolution made at the
/// site (`Via::Site`, the responder named "NAME (at site SITE)"), then answered. Recording it
/// stops the centre's escalation of the alert like any acknowledgement.
pub(super) async fn forward_update_and_ack(
    store: Store,
    update: ForwardUpdate,
    site: EnrolledAs,
    stats: std::sync::Arc<Stats>,
    reply: Reply,
) {
    let alert_id = update.alert_id;
    let forwarded_by_site = match store.timeline(alert_id).await {
        Ok(Some((alert, _, _))) => {
            alert.site.is_some() && alert.enrolled.as_ref().is_some_and(|e| e.agent_id == site.agent_id)
        }
        Ok(None) => false,
        Err(e) => {
            Stats::bump(&stats.store_errors);
            error!(error = %e, "cannot read the alert of a forward_update; not answered, the site will retry");
            return;
        }
    };
    if !forwarded_by_site {
        Stats::bump(&stats.forward_refused);
        warn!(site = %site.name, "{}", crate::refusal::Cause::NotASite.text());
        return;
    }
    let responder = format!("{} (at site {})", crate::store::clean_note(&update.responder), site.name);
    let note = crate::store::clean_note(&update.note);
    let outcome = match update.event {
        ForwardEvent::Acknowledged => store.acknowledge(alert_id, responder.clone(), Via::Site, note).await,
        ForwardEvent::Resolved => store.resolve(alert_id, responder.clone(), Via::Site, note, String::new()).await,
    };
    match outcome {
        Ok(Transition::New { .. }) => {
            info!(event = ?update.event, %responder, "the site recorded a response to a forwarded alert; recorded here too")
        }
        Ok(Transition::Already { .. } | Transition::Closed(_)) => {
            debug!(event = ?update.event, "forward_update for an alert answered here already")
        }
        Ok(Transition::Unknown) => return,
        Err(e) => {
            Stats::bump(&stats.store_errors);
            error!(error = %e, "cannot record a forward_update; not answered, the site will retry");
            return;
        }
    }
    let ack = Message::ForwardUpdateAck(ForwardUpdateAck { alert_id, event: update.event, server_time: unix_now() });
    reply.send(&ack).await;
}
