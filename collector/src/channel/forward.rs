//! The `forward` channel of a site collector (`[forward] centre`): every alert, its
//! cancellation, and the acknowledgements and resolutions made at the site go to the central
//! collector through [`crate::forward::Forwarder`], like any channel: from the outbox, retried
//! with backoff while the centre is down or refuses. A job is done only when the centre
//! answered (`sos_ack` once it stored the alert, `cancel_ack`, `forward_update_ack`).

use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, DeliveryError, Notifier};
use crate::forward::Forwarder;
use crate::store::AlertRecord;

/// Forwarding to the centre, as a channel.
#[derive(Debug)]
pub struct Forward {
    forwarder: Arc<Forwarder>,
}

impl Forward {
    /// The channel over `forwarder`.
    pub fn new(forwarder: Arc<Forwarder>) -> Self {
        Forward { forwarder }
    }
}

impl Notifier for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    /// A message that the centre did not answer in time is retried at the usual pace: the
    /// centre deduplicates alerts by id and updates are idempotent, so a repeat shows nothing twice.
    fn timed_out(&self, after: Duration) -> DeliveryError {
        DeliveryError::transient(format!(
            "forward: the centre {} did not answer within {} s (down or unreachable?)",
            self.forwarder.centre(),
            after.as_secs()
        ))
    }

    /// Never given up: a centre down for hours gets every alert when it is back.
    fn gives_up(&self) -> bool {
        false
    }

    /// Each alert of a storm travels as its own datagram, all at once; the message is
    /// delivered when the centre answered every one (a partial failure sends them all again,
    /// which the centre answers `duplicate`).
    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let results = futures_util::future::join_all(alerts.iter().map(|a| self.forwarder.forward(a))).await;
            match results.into_iter().find_map(Result::err) {
                None => Ok(()),
                Some(reason) => Err(DeliveryError::transient(format!("forward: {reason}"))),
            }
        })
    }

    /// Administrative notices stay at the site (its other channels carry them).
    fn notice<'a>(&'a self, _subject: &'a str, _text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
