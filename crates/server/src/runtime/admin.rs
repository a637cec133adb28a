//! The admin API (`wasteledger.v1.ClusterService`): cluster initialisation, membership changes
//! and status, and the authorization of admin calls made on the public listener.
//!
//! On the admin listener (loopback unless the operator says otherwise) calls are trusted as they
//! come: whoever can reach it can already signal the process. On the public API listener every
//! call must carry an [`pb::AdminAuth`] signed by a genesis authority key over
//! `"wasteledger/v1 admin\n" ‖ ledger_id ‖ method ‖ 0x00 ‖ issued_at_ms (big-endian) ‖ request
//! without its auth field`: the method name keeps a signed `Status` from being replayed as a
//! `ChangeMembership`, and the ±5 minute window bounds how long a captured call stays valid.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tonic::{Request, Response, Status};
use wasteledger_core::Digest;
use wasteledger_core::pb;
use wasteledger_core::signing::{self, SigningDomain, SigningKey};
use wasteledger_node::node::Node;
use wasteledger_node::status::{AdminError, Health, NodeStatus};
use wasteledger_node::types::NodeAddr;

use crate::service::cluster_service_server::{ClusterService, ClusterServiceServer};
use crate::{LEADER_KEY, REASON_KEY};

/// How far `issued_at_ms` of a signed admin call may be from this node's clock.
pub const MAX_AUTH_SKEW: Duration = Duration::from_secs(5 * 60);

/// How long AddLearner may wait for the new node to catch up.
pub const ADD_LEARNER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long ChangeMembership may wait for both joint-consensus steps to commit.
pub const CHANGE_MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// Full gRPC method names, as signed.
pub mod methods {
    /// `ClusterService.Initialize`.
    pub const INITIALIZE: &str = "/wasteledger.v1.ClusterService/Initialize";
    /// `ClusterService.AddLearner`.
    pub const ADD_LEARNER: &str = "/wasteledger.v1.ClusterService/AddLearner";
    /// `ClusterService.ChangeMembership`.
    pub const CHANGE_MEMBERSHIP: &str = "/wasteledger.v1.ClusterService/ChangeMembership";
    /// `ClusterService.Status`.
    pub const STATUS: &str = "/wasteledger.v1.ClusterService/Status";
}

/// An admin request: a message with an `auth` field, bound to one method.
pub trait AdminRequest: Message + Clone + Default {
    /// The full gRPC method name the request is signed for.
    const METHOD: &'static str;
    /// The authorization it carries.
    fn auth(&self) -> Option<&pb::AdminAuth>;
    /// Sets (or clears) the authorization.
    fn set_auth(&mut self, auth: Option<pb::AdminAuth>);
}

macro_rules! admin_request {
    ($t:ty, $m:expr) => {
        impl AdminRequest for $t {
            const METHOD: &'static str = $m;
            fn auth(&self) -> Option<&pb::AdminAuth> {
                self.auth.as_ref()
            }
            fn set_auth(&mut self, auth: Option<pb::AdminAuth>) {
                self.auth = auth;
            }
        }
    };
}

admin_request!(pb::InitializeRequest, methods::INITIALIZE);
admin_request!(pb::AddLearnerRequest, methods::ADD_LEARNER);
admin_request!(pb::ChangeMembershipRequest, methods::CHANGE_MEMBERSHIP);
admin_request!(pb::StatusRequest, methods::STATUS);

/// The bytes an admin signature covers (after the domain tag and ledger id, which
/// [`signing::sign`] adds).
pub fn auth_payload<R: AdminRequest>(request: &R, issued_at_ms: i64) -> Vec<u8> {
    let mut bare = request.clone();
    bare.set_auth(None);
    let mut payload = Vec::with_capacity(R::METHOD.len() + 9 + bare.encoded_len());
    payload.extend_from_slice(R::METHOD.as_bytes());
    // The method name is free text: a separator keeps it from running into the timestamp.
    payload.push(0);
    payload.extend_from_slice(&issued_at_ms.to_be_bytes());
    payload.extend_from_slice(&bare.encode_to_vec());
    payload
}

/// Signs `request` as a genesis authority would: returns it with its `auth` field set.
pub fn sign_admin_request<R: AdminRequest>(
    mut request: R,
    key: &SigningKey,
    ledger_id: &Digest,
    issued_at_ms: i64,
) -> R {
    let signature = signing::sign(
        key,
        SigningDomain::Admin,
        ledger_id,
        &auth_payload(&request, issued_at_ms),
    );
    request.set_auth(Some(pb::AdminAuth {
        public_key: key.verifying_key().to_bytes().to_vec(),
        issued_at_ms,
        signature: signature.to_vec(),
    }));
    request
}

/// Why an admin call's authorization was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The call carries no authorization.
    #[error("admin calls on the public listener must be signed by a genesis authority")]
    Missing,
    /// The key or signature is not well formed.
    #[error("malformed admin authorization: {0}")]
    Malformed(String),
    /// `issued_at_ms` is outside the allowed window.
    #[error(
        "admin authorization issued at {issued_at_ms} ms is more than {max:?} from this node's clock ({now_ms} ms)"
    )]
    Stale {
        /// When the call says it was signed.
        issued_at_ms: i64,
        /// This node's clock.
        now_ms: i64,
        /// The window.
        max: Duration,
    },
    /// The signature does not verify.
    #[error("admin authorization signature does not verify: {0}")]
    BadSignature(String),
    /// A valid signature by a key that is not a genesis authority.
    #[error("key {0} is not a genesis authority")]
    NotAuthority(String),
}

impl AuthError {
    /// The stable reason code sent in `wasteledger-reason`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "admin.auth_missing",
            AuthError::Malformed(_) => "admin.auth_malformed",
            AuthError::Stale { .. } => "admin.auth_stale",
            AuthError::BadSignature(_) => "admin.bad_signature",
            AuthError::NotAuthority(_) => "admin.not_authority",
        }
    }

    fn to_status(&self) -> Status {
        let code = match self {
            AuthError::NotAuthority(_) => tonic::Code::PermissionDenied,
            _ => tonic::Code::Unauthenticated,
        };
        status(code, self.code(), self.to_string())
    }
}

/// Checks an admin call's authorization against the genesis authorities at time `now_ms`.
pub fn check_auth<R: AdminRequest>(
    request: &R,
    genesis: &wasteledger_core::genesis::Genesis,
    now_ms: i64,
) -> Result<(), AuthError> {
    let auth = request.auth().ok_or(AuthError::Missing)?;
    let key = signing::parse_public_key(&auth.public_key)
        .map_err(|e| AuthError::Malformed(e.to_string()))?;
    let skew = now_ms.abs_diff(auth.issued_at_ms);
    if u128::from(skew) > MAX_AUTH_SKEW.as_millis() {
        return Err(AuthError::Stale {
            issued_at_ms: auth.issued_at_ms,
            now_ms,
            max: MAX_AUTH_SKEW,
        });
    }
    signing::verify(
        &key,
        SigningDomain::Admin,
        &genesis.ledger_id,
        &auth_payload(request, auth.issued_at_ms),
        &auth.signature,
    )
    .map_err(|e| match e {
        signing::SignatureError::SignatureLength(_) => AuthError::Malformed(e.to_string()),
        other => AuthError::BadSignature(other.to_string()),
    })?;
    let id = signing::key_id(&key);
    if genesis.authority(&id).is_none() {
        return Err(AuthError::NotAuthority(id.short()));
    }
    Ok(())
}

fn status(code: tonic::Code, reason: &str, message: impl Into<String>) -> Status {
    let mut s = Status::new(code, message);
    if let Ok(v) = reason.parse() {
        s.metadata_mut().insert(REASON_KEY, v);
    }
    s
}

fn admin_status(e: AdminError) -> Status {
    match &e {
        AdminError::NotLeader { leader, .. } => {
            let mut s = status(
                tonic::Code::Unavailable,
                "cluster.not_leader",
                e.to_string(),
            );
            if let Some(v) = leader.as_ref().and_then(|(_, a)| a.api_addr.parse().ok()) {
                s.metadata_mut().insert(LEADER_KEY, v);
            }
            s
        }
        AdminError::Unreachable { .. } => status(
            tonic::Code::Unavailable,
            "cluster.unreachable",
            e.to_string(),
        ),
        AdminError::Invalid(_) => status(
            tonic::Code::FailedPrecondition,
            "cluster.invalid_membership",
            e.to_string(),
        ),
        AdminError::Timeout(..) => status(
            tonic::Code::DeadlineExceeded,
            "cluster.timeout",
            e.to_string(),
        ),
        AdminError::CatchingUp { .. } => status(
            tonic::Code::DeadlineExceeded,
            "cluster.catching_up",
            e.to_string(),
        ),
        AdminError::Raft(_) => status(tonic::Code::Unavailable, "cluster.raft", e.to_string()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Which listener a [`ClusterApi`] serves, and so whether calls must be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAccess {
    /// The admin listener: calls are accepted without authorization.
    Trusted,
    /// The public listener: every call must be signed by a genesis authority.
    AuthorityOnly,
}

/// The ClusterService of one node.
pub struct ClusterApi {
    node: Arc<Node>,
    access: AdminAccess,
}

fn member(id: u64, addr: &NodeAddr) -> pb::ClusterMember {
    pb::ClusterMember {
        node_id: id,
        raft_addr: addr.raft_addr.clone(),
        api_addr: addr.api_addr.clone(),
    }
}

fn member_addr(m: &pb::ClusterMember) -> Result<(u64, NodeAddr), Status> {
    if m.node_id == 0 {
        return Err(status(
            tonic::Code::InvalidArgument,
            "cluster.invalid_member",
            "node ids start at 1",
        ));
    }
    for (what, addr) in [("raft_addr", &m.raft_addr), ("api_addr", &m.api_addr)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(status(
                tonic::Code::InvalidArgument,
                "cluster.invalid_member",
                format!(
                    "node {}: {what} {addr:?} is not an ip:port address",
                    m.node_id
                ),
            ));
        }
    }
    Ok((
        m.node_id,
        NodeAddr {
            raft_addr: m.raft_addr.clone(),
            api_addr: m.api_addr.clone(),
        },
    ))
}

/// The ClusterService status message for a node status and its ledger size.
pub fn cluster_status(s: &NodeStatus, ledger_size: u64) -> pb::ClusterStatus {
    let lag = s.replication_lag();
    pb::ClusterStatus {
        node_id: s.id,
        leader_id: s.leader.unwrap_or(0),
        leader_api: s
            .leader_addr
            .as_ref()
            .map(|a| a.api_addr.clone())
            .unwrap_or_default(),
        term: s.term,
        voters: s.voters.iter().map(|(id, a)| member(*id, a)).collect(),
        learners: s.learners.iter().map(|(id, a)| member(*id, a)).collect(),
        last_log_index: s.last_log_index.unwrap_or(0),
        committed: s.committed.unwrap_or(0),
        last_applied: s.last_applied.unwrap_or(0),
        replication: s
            .replication
            .iter()
            .map(|(id, matched)| pb::ReplicationState {
                node_id: *id,
                matched_index: *matched,
                lag: lag.get(id).copied().unwrap_or(0),
            })
            .collect(),
        ledger_size,
        serving: s.health.is_serving(),
        not_serving_reason: match &s.health {
            Health::Serving => String::new(),
            Health::NotServing(why) => why.clone(),
        },
    }
}

impl ClusterApi {
    /// Serves `node` with the given access rule.
    pub fn new(node: Arc<Node>, access: AdminAccess) -> ClusterApi {
        ClusterApi { node, access }
    }

    /// The tonic service (admin messages are small: the default limits apply).
    pub fn into_service(self) -> ClusterServiceServer<ClusterApi> {
        ClusterServiceServer::new(self)
    }

    fn authorize<R: AdminRequest>(&self, request: &Request<R>) -> Result<(), Status> {
        match self.access {
            AdminAccess::Trusted => Ok(()),
            AdminAccess::AuthorityOnly => check_auth(
                request.get_ref(),
                self.node.state_machine.genesis(),
                now_ms(),
            )
            .map_err(|e| {
                tracing::warn!(
                    method = R::METHOD,
                    reason = e.code(),
                    "admin call refused: {e}"
                );
                e.to_status()
            }),
        }
    }

    fn status_now(&self) -> Result<pb::ClusterStatus, Status> {
        let (size, _, _) = self
            .node
            .ledger_head()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(cluster_status(&self.node.status(), size))
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(&request)?;
        let mut members = BTreeMap::new();
        for m in &request.get_ref().members {
            let (id, addr) = member_addr(m)?;
            if members.insert(id, addr).is_some() {
                return Err(status(
                    tonic::Code::InvalidArgument,
                    "cluster.invalid_member",
                    format!("node {id} appears twice"),
                ));
            }
        }
        if !members.contains_key(&self.node.raft_id()) {
            return Err(status(
                tonic::Code::InvalidArgument,
                "cluster.invalid_member",
                format!(
                    "the members must include this node ({})",
                    self.node.raft_id()
                ),
            ));
        }
        tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "admin: initialize");
        self.node
            .initialize(members)
            .await
            .map_err(|e| status(tonic::Code::Unavailable, "cluster.raft", e.to_string()))?;
        Ok(Response::new(self.status_now()?))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(&request)?;
        let m = request.get_ref().member.clone().ok_or_else(|| {
            status(
                tonic::Code::InvalidArgument,
                "cluster.invalid_member",
                "member is required",
            )
        })?;
        let (id, addr) = member_addr(&m)?;
        tracing::info!(node = id, addr = %addr, "admin: add learner");
        self.node
            .add_learner_checked(id, addr, ADD_LEARNER_TIMEOUT)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(self.status_now()?))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(&request)?;
        let r = request.get_ref();
        let voters: BTreeSet<u64> = r.voter_ids.iter().copied().collect();
        tracing::info!(voters = ?voters, retain = r.retain_as_learners, "admin: change membership");
        self.node
            .change_voters(voters, r.retain_as_learners, CHANGE_MEMBERSHIP_TIMEOUT)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(self.status_now()?))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(self.status_now()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasteledger_core::sample::SampleNetwork;

    #[test]
    fn authority_signatures_are_checked() {
        let net = SampleNetwork::new().unwrap();
        let now = 1_800_000_000_000;
        let signed = sign_admin_request(
            pb::StatusRequest::default(),
            &net.authority,
            &net.ledger_id(),
            now,
        );
        assert_eq!(check_auth(&signed, &net.genesis, now + 1000), Ok(()));
        // The signature is bound to the method: the same bytes do not pass as another call.
        let other = pb::ChangeMembershipRequest {
            auth: signed.auth.clone(),
            ..Default::default()
        };
        assert_eq!(
            check_auth(&other, &net.genesis, now).map_err(|e| e.code()),
            Err("admin.bad_signature")
        );
        let stale = now + MAX_AUTH_SKEW.as_millis() as i64 + 1;
        assert_eq!(
            check_auth(&signed, &net.genesis, stale).map_err(|e| e.code()),
            Err("admin.auth_stale")
        );
        let stranger = wasteledger_core::sample::key_from_label("not an authority");
        let foreign = sign_admin_request(
            pb::StatusRequest::default(),
            &stranger,
            &net.ledger_id(),
            now,
        );
        assert_eq!(
            check_auth(&foreign, &net.genesis, now).map_err(|e| e.code()),
            Err("admin.not_authority")
        );
        assert_eq!(
            check_auth(&pb::StatusRequest::default(), &net.genesis, now).map_err(|e| e.code()),
            Err("admin.auth_missing")
        );
        let mut tampered = signed;
        if let Some(a) = tampered.auth.as_mut() {
            a.issued_at_ms += 1;
        }
        assert_eq!(
            check_auth(&tampered, &net.genesis, now).map_err(|e| e.code()),
            Err("admin.bad_signature")
        );
    }
}
