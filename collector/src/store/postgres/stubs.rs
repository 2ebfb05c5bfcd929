//! TEMPORARY (wiring branch only; deleted at merge): PgStore methods whose real
//! implementations are being written on the pgresp and pgreg branches, with the same signatures.

use std::collections::HashSet;
use std::sync::Arc;

use sos_shared::enroll::{Code, EnrolledKey};
use sos_shared::protocol::{NoticeEvent, ResponderNotice};
use sos_shared::AlertId;

use super::PgStore;
use crate::registry::{AgentRecord, Attempt, Registry, RegistryError};
use crate::store::console::{AlertFilter, ConsoleAlert, EventRow, LinkAck, LinkUse, ResponseRow};
use crate::store::response::{AlertState, Event, PopupTarget, ResponsePlan, Transition, Via};
use crate::store::sqlite::response::Escalated;
use crate::store::{AgentSeen, AlertRecord, Delivery, StoreError};

const NOT_BUILT: &str = "not on PostgreSQL in this branch";

#[allow(missing_docs)]
impl PgStore {
    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn create_enrollment(&self, name: &str, ttl_ms: i64, now_ms: i64) -> Result<Code, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn create_enrollment_of(
        &self,
        name: &str,
        site: bool,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Code, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn enroll_attempt(&self, code_id: &str, now_ms: i64) -> Result<Attempt, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn complete_enrollment(
        &self,
        code_id: &str,
        host: &str,
        now_ms: i64,
    ) -> Result<Option<EnrolledKey>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn enrolled_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn revoke(&self, who: &str, now_ms: i64) -> Result<AgentRecord, RegistryError> {
        Err(RegistryError::Store(StoreError::Postgres(NOT_BUILT.into())))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn rotate(&self, who: &str, now_ms: i64) -> Result<AgentRecord, RegistryError> {
        Err(RegistryError::Store(StoreError::Postgres(NOT_BUILT.into())))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn promote(&self, agent_id: &str, key_id: &str, until_ms: i64) -> Result<bool, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn pending_codes(&self, now_ms: i64) -> Result<HashSet<String>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn load_registry(&self) -> Result<Registry, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn console_alerts(
        &self,
        filter: &AlertFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<ConsoleAlert>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn console_alert(&self, id: AlertId) -> Result<Option<(ConsoleAlert, Vec<Delivery>)>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn console_response(&self, id: AlertId) -> Result<(Option<ResponseRow>, Vec<EventRow>), StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn acknowledgements_after(&self, after_ms: i64, limit: usize) -> Result<Vec<(i64, i64)>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn alert_counts(&self) -> Result<Vec<(bool, String, u64)>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn notification_counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn set_password_hash(&self, name: &str, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn create_invitation(
        &self,
        name: &str,
        token_hash: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn invitation(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn accept_invitation(
        &self,
        token_hash: &str,
        hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn probe_write(&self, now_ms: i64) -> Result<(), StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn silent_agents(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn set_silent(&self, agent_id: &str, since_ms: Option<i64>) -> Result<bool, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn record_agents(&self, seen: &[AgentSeen]) -> Result<(), StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn agents(&self) -> Result<Vec<AgentSeen>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }

    #[allow(unused_variables, missing_docs, clippy::too_many_arguments)]
    pub async fn pending_by_channel(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Err(StoreError::Postgres(NOT_BUILT.into()))
    }
}
