//! `sos-agent enroll CODE --collector HOST:PORT`: turn a one-time code into this workstation's
//! own key. The client of the exchange lives in [`sos_shared::enroll_client`], shared with the
//! site collector's `sos-collector forward enroll` (a site enrolls at its centre the same way).

pub use sos_shared::enroll_client::{enroll, EnrollFailure};
