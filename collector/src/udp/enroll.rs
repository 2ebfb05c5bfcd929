//! Enrollment by one-time code over the receive path (see [`sos_shared::enroll`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sos_shared::enroll::{CollectorSession, EnrollError, EnrollMessage, ENROLL_REQUEST_LEN};
use tracing::{debug, error, info, warn};

use crate::refusal::Cause;
use crate::registry::Attempt;
use crate::stats::Stats;
use crate::store::now_ms;

use super::{EnrollSession, Receiver, ENROLL_SESSION_TTL};

impl Receiver {
    /// An enrollment datagram (see [`sos_shared::enroll`]). Nothing is answered unless the
    /// code is pending; nothing is ever answered with more bytes than the request.
    ///
    /// Cheap checks come first (size, parse); then a retransmitted start and every finish of a
    /// started exchange are served from memory without any budget (capacity kept for those whose
    /// first step was valid). A new start costs a store lookup, so it is budgeted: per pending
    /// code if its code is pending, else per source address and then for everyone together, so
    /// that junk (which cannot name a pending code without knowing it) never uses the capacity
    /// of a real code.
    pub(super) fn enroll(&self, body: &str, request_len: usize, from: SocketAddr) {
        let message = match EnrollMessage::from_body(body) {
            Ok(m) if request_len >= ENROLL_REQUEST_LEN => m,
            _ => {
                self.refuse(Cause::EnrollMalformed, &self.stats.malformed, |before| {
                    debug!(%from, before, "{}", Cause::EnrollMalformed.text());
                });
                return;
            }
        };
        let code_id = message.enrollment().to_owned();
        let send = |datagram: Vec<u8>| {
            let ctx = self.reply_to(&self.key, from, request_len);
            self.in_flight.spawn(async move { ctx.send_datagram(&datagram, "enroll").await });
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.started.elapsed() < ENROLL_SESSION_TTL);
        match &message {
            EnrollMessage::EnrollStart { pake, .. } => {
                // A retransmitted start gets the same challenge and costs no attempt.
                if let Some(s) = sessions.get(&code_id).filter(|s| s.session.start_pake == *pake && s.done.is_none()) {
                    send(s.session.challenge.clone());
                    return;
                }
                drop(sessions);
                let now = Instant::now();
                let pending = self.registry.is_pending(&code_id);
                let allowed = {
                    let mut limits = self.limits();
                    if pending {
                        limits.enroll_code.allow(code_id.clone(), now)
                    } else {
                        limits.enroll_source.allow(from.ip(), now) && limits.enroll.allow((), now)
                    }
                };
                if !allowed {
                    let counter = if pending { &self.stats.enroll_refused } else { &self.stats.rate_limited_source };
                    self.refuse(Cause::EnrollBudget, counter, |before| {
                        warn!(%from, code = %code_id, before, "{}", Cause::EnrollBudget.text());
                    });
                    return;
                }
                let store = self.store.clone();
                let stats = self.stats.clone();
                let sessions = self.sessions.clone();
                let refusals = self.refusals.clone();
                let ctx = self.reply_to(&self.key, from, request_len);
                self.in_flight.spawn(async move {
                    let attempt = match store.enroll_attempt(&code_id, now_ms()).await {
                        Ok(a) => a,
                        Err(e) => {
                            Stats::bump(&stats.enroll_refused);
                            error!(code = %code_id, error = %e, "cannot look up an enrollment code");
                            return;
                        }
                    };
                    let (code, name) = match attempt {
                        Attempt::Try { code, name } => (code, name),
                        refused => {
                            Stats::bump(&stats.enroll_refused);
                            let cause = match refused {
                                Attempt::Used => Cause::EnrollUsed,
                                Attempt::Expired => Cause::EnrollExpired,
                                Attempt::TooManyAttempts => Cause::EnrollBurnt,
                                _ => Cause::EnrollUnknown,
                            };
                            let line = refusals.lock().unwrap_or_else(|e| e.into_inner()).note(cause, Instant::now());
                            if let Some(line) = line {
                                warn!(code = %code_id, %from, before = line.before, "{}", cause.text());
                            }
                            return;
                        }
                    };
                    let Ok(session) = CollectorSession::answer(&code, &message) else {
                        Stats::bump(&stats.malformed);
                        debug!(%from, "dropped an enrollment start with an invalid PAKE message");
                        return;
                    };
                    info!(code = %code_id, %name, %from, "enrollment started");
                    let challenge = session.challenge.clone();
                    sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(
                        code_id,
                        EnrollSession { session: Arc::new(session), done: None, started: Instant::now() },
                    );
                    ctx.send_datagram(&challenge, "enroll_challenge").await;
                });
            }
            EnrollMessage::EnrollFinish { .. } => {
                let Some(s) = sessions.get(&code_id) else {
                    drop(sessions);
                    self.refuse(Cause::EnrollNoStart, &self.stats.enroll_refused, |before| {
                        debug!(code = %code_id, %from, before, "enrollment finish without a start; dropped");
                    });
                    return;
                };
                if let Some(done) = &s.done {
                    send(done.clone());
                    return;
                }
                let host = match s.session.on_finish(&message) {
                    Ok(host) => host,
                    Err(EnrollError::WrongCode) => {
                        // Each finish would test a guess: the session ends here.
                        sessions.remove(&code_id);
                        drop(sessions);
                        self.refuse(Cause::EnrollWrongCode, &self.stats.enroll_refused, |before| {
                            warn!(code = %code_id, %from, before, "{}", Cause::EnrollWrongCode.text());
                        });
                        return;
                    }
                    Err(EnrollError::Malformed) => {
                        Stats::bump(&self.stats.malformed);
                        return;
                    }
                };
                let session = s.session.clone();
                drop(sessions);
                let store = self.store.clone();
                let stats = self.stats.clone();
                let sessions = self.sessions.clone();
                let registry = self.registry.clone();
                let ctx = self.reply_to(&self.key, from, request_len);
                self.in_flight.spawn(async move {
                    let enrolled = match store.complete_enrollment(&code_id, &host, now_ms()).await {
                        Ok(Some(k)) => k,
                        Ok(None) => {
                            Stats::bump(&stats.enroll_refused);
                            warn!(code = %code_id, %from, "enrollment refused: the code was used or expired meanwhile");
                            return;
                        }
                        Err(e) => {
                            error!(code = %code_id, error = %e, "cannot record an enrollment; the agent will retry");
                            return;
                        }
                    };
                    // Known before the agent can use its key.
                    registry.refresh_async().await;
                    Stats::bump(&stats.enrolled);
                    info!(code = %code_id, agent_id = %enrolled.agent_id, name = %enrolled.name, %host, %from,
                          "AGENT ENROLLED with its own key");
                    let done = session.done(&enrolled);
                    if let Some(s) = sessions.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&code_id) {
                        s.done = Some(done.clone());
                    }
                    ctx.send_datagram(&done, "enroll_done").await;
                });
            }
            other => {
                Stats::bump(&self.stats.unexpected);
                debug!(%from, kind = ?std::mem::discriminant(other), "dropped an enrollment answer sent to the collector");
            }
        }
    }
}
