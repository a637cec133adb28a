//! The admin client (`wasteledger.v1.ClusterService`): cluster status, adding learners and
//! changing the voter set.
//!
//! Two ways in, as the node offers them: its admin listener (loopback by default, no
//! credentials), or its public API listener with every call signed by a genesis authority key.
//! Membership changes go to the leader; when a signed call reaches a follower, the client follows
//! the leader address the follower names and asks again once.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use wasteledger_core::hash::Digest;
use wasteledger_core::pb;
use wasteledger_core::signing::SigningKey;
use wasteledger_server::runtime::admin::{AdminRequest, sign_admin_request};
use wasteledger_server::service::cluster_service_client::ClusterServiceClient;
use wasteledger_server::{LEADER_KEY, REASON_KEY};

use crate::remote::RemoteError;

/// Environment variable naming a node's admin listener (`HOST:PORT`).
pub const ADMIN_ENV: &str = "WASTELEDGER_ADMIN";

/// Signs admin calls as a genesis authority.
pub struct AdminSigner {
    /// The authority's key.
    pub key: SigningKey,
    /// The ledger id the signature is bound to.
    pub ledger_id: Digest,
}

/// A connection to one node's ClusterService.
pub struct Admin {
    client: ClusterServiceClient<Channel>,
    addr: String,
    signer: Option<AdminSigner>,
}

async fn channel(addr: &str) -> Result<Channel, RemoteError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(url)
        .map_err(|_| RemoteError::Address(addr.to_owned()))?
        .connect_timeout(Duration::from_secs(3))
        // AddLearner waits for the learner to catch up (up to a minute on the node).
        .timeout(Duration::from_secs(90))
        .connect()
        .await
        .map_err(|e| RemoteError::Unreachable {
            addr: addr.to_owned(),
            detail: e.to_string(),
        })
}

fn refused(s: &tonic::Status) -> RemoteError {
    RemoteError::Refused {
        code: s.code(),
        reason: s
            .metadata()
            .get(REASON_KEY)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| format!("{:?}", s.code()).to_lowercase(), str::to_owned),
        message: s.message().to_owned(),
    }
}

fn leader_of(s: &tonic::Status) -> Option<String> {
    s.metadata()
        .get(LEADER_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl Admin {
    /// Connects to `addr`; with a signer every call is signed (required on the public listener,
    /// ignored on the admin listener).
    pub async fn connect(addr: &str, signer: Option<AdminSigner>) -> Result<Admin, RemoteError> {
        Ok(Admin {
            client: ClusterServiceClient::new(channel(addr).await?),
            addr: addr.to_owned(),
            signer,
        })
    }

    fn prepare<R: AdminRequest>(&self, request: R) -> R {
        match &self.signer {
            Some(s) => sign_admin_request(request, &s.key, &s.ledger_id, crate::now_ms()),
            None => request,
        }
    }

    /// Runs `call`; on a signed call refused by a follower that names the leader, reconnects to
    /// the leader and runs it once more.
    async fn call<R, F>(&mut self, request: R, call: F) -> Result<pb::ClusterStatus, RemoteError>
    where
        R: AdminRequest,
        F: AsyncFn(
            &mut ClusterServiceClient<Channel>,
            R,
        ) -> Result<pb::ClusterStatus, tonic::Status>,
    {
        let signed = self.prepare(request.clone());
        let first = call(&mut self.client, signed).await;
        match first {
            Ok(s) => Ok(s),
            Err(s) => match leader_of(&s) {
                Some(leader)
                    if self.signer.is_some()
                        && s.code() == tonic::Code::Unavailable
                        && leader != self.addr =>
                {
                    self.client = ClusterServiceClient::new(channel(&leader).await?);
                    self.addr = leader;
                    let signed = self.prepare(request);
                    call(&mut self.client, signed)
                        .await
                        .map_err(|s| refused(&s))
                }
                _ if s.code() == tonic::Code::Unavailable
                    && !s.metadata().contains_key(REASON_KEY) =>
                {
                    Err(RemoteError::Unreachable {
                        addr: self.addr.clone(),
                        detail: s.message().to_owned(),
                    })
                }
                _ => Err(refused(&s)),
            },
        }
    }

    /// This node's view of the cluster.
    pub async fn status(&mut self) -> Result<pb::ClusterStatus, RemoteError> {
        self.call(pb::StatusRequest::default(), async |c, r| {
            c.status(r).await.map(|r| r.into_inner())
        })
        .await
    }

    /// Adds a node as a learner and waits until it has caught up.
    pub async fn add_learner(
        &mut self,
        member: pb::ClusterMember,
    ) -> Result<pb::ClusterStatus, RemoteError> {
        let request = pb::AddLearnerRequest {
            member: Some(member),
            auth: None,
        };
        self.call(request, async |c, r| {
            c.add_learner(r).await.map(|r| r.into_inner())
        })
        .await
    }

    /// Replaces the voter set.
    pub async fn change_membership(
        &mut self,
        voter_ids: Vec<u64>,
        retain_as_learners: bool,
    ) -> Result<pb::ClusterStatus, RemoteError> {
        let request = pb::ChangeMembershipRequest {
            voter_ids,
            retain_as_learners,
            auth: None,
        };
        self.call(request, async |c, r| {
            c.change_membership(r).await.map(|r| r.into_inner())
        })
        .await
    }

    /// Initialises a new cluster with these voters (harmless on an initialised node).
    pub async fn initialize(
        &mut self,
        members: Vec<pb::ClusterMember>,
    ) -> Result<pb::ClusterStatus, RemoteError> {
        let request = pb::InitializeRequest {
            members,
            auth: None,
        };
        self.call(request, async |c, r| {
            c.initialize(r).await.map(|r| r.into_inner())
        })
        .await
    }
}

/// Parses a member `ID:RAFT_HOST:PORT:API_HOST:PORT` (e.g. `4:127.0.0.1:7104:127.0.0.1:7204`).
pub fn parse_member(text: &str) -> Option<pb::ClusterMember> {
    let (id, rest) = text.split_once(':')?;
    let parts: Vec<&str> = rest.split(':').collect();
    let [raft_host, raft_port, api_host, api_port] = parts.as_slice() else {
        return None;
    };
    Some(pb::ClusterMember {
        node_id: id.parse().ok()?,
        raft_addr: format!("{raft_host}:{}", raft_port.parse::<u16>().ok()?),
        api_addr: format!("{api_host}:{}", api_port.parse::<u16>().ok()?),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn members_parse() {
        let m = parse_member("4:127.0.0.1:7104:127.0.0.1:7204").unwrap();
        assert_eq!(
            (m.node_id, m.raft_addr.as_str(), m.api_addr.as_str()),
            (4, "127.0.0.1:7104", "127.0.0.1:7204")
        );
        assert!(parse_member("4:127.0.0.1:7104").is_none());
        assert!(parse_member("x:a:1:b:2").is_none());
    }
}
