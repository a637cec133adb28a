//! The read side of `LedgerService`: manifests and parties (one at a time and in pages),
//! ledger events as the API returns them, and the read-consistency choice every read offers.

use tonic::Status;
use wasteledger_core::codec::status_from_pb;
use wasteledger_core::custody::kind_name;
use wasteledger_core::entry::{LedgerEntry, leaf_hash};
use wasteledger_core::envelope::{Subject, decode_event, event_hash};
use wasteledger_core::pb;
use wasteledger_core::tracking::Tracking;
use wasteledger_store::state::{self, LedgerStore};

use crate::{LedgerApi, internal, status};

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: usize = 500;
/// Most stored records one list call examines. Filters the indexes cannot answer are checked
/// record by record; this bound keeps one call's work (and the state lock it holds) short, at
/// the price of pages that may hold fewer than `page_size` items but still have a next page.
pub const SCAN_BUDGET: usize = 2_000;

/// Timeout for the quorum round trip of a linearizable read.
const LINEARIZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl LedgerApi {
    /// Honours a request's `ReadConsistency`: LINEARIZABLE waits until this node has applied
    /// everything the leader had committed when the call arrived.
    pub(crate) async fn prepare_read(&self, consistency: i32) -> Result<(), Status> {
        match pb::ReadConsistency::try_from(consistency) {
            Ok(pb::ReadConsistency::Unspecified | pb::ReadConsistency::Local) => Ok(()),
            Ok(pb::ReadConsistency::Linearizable) => {
                self.node.linearize(LINEARIZE_TIMEOUT).await.map_err(|e| {
                    status(
                        tonic::Code::Unavailable,
                        "cluster.no_quorum",
                        format!(
                            "cannot confirm a linearizable read with a quorum ({e}); retry, or read LOCAL"
                        ),
                    )
                })
            }
            Err(_) => Err(status(
                tonic::Code::InvalidArgument,
                "query.consistency",
                format!("unknown read consistency {consistency}"),
            )),
        }
    }

    pub(crate) fn read_store<T>(
        &self,
        f: impl FnOnce(&LedgerStore) -> Result<T, Status>,
    ) -> Result<T, Status> {
        self.node
            .state_machine
            .with_store(f)
            .map_err(|e| internal(format!("state machine unavailable: {e}")))?
    }
}

/// The API form of a ledger entry (its leaf bytes).
pub(crate) fn ledger_event(
    ledger_id: &wasteledger_core::Digest,
    entry: &[u8],
) -> Result<pb::LedgerEvent, Status> {
    ledger_event_and_subject(ledger_id, entry).map(|(e, _)| e)
}

/// [`ledger_event`] with the decoded subject.
pub(crate) fn ledger_event_and_subject(
    ledger_id: &wasteledger_core::Digest,
    entry: &[u8],
) -> Result<(pb::LedgerEvent, Subject), Status> {
    let decoded = LedgerEntry::decode(entry)
        .map_err(|e| internal(format!("stored entry does not decode: {e}")))?;
    let signed = pb::SignedEvent {
        body: decoded.body.clone(),
        signatures: decoded
            .signatures
            .iter()
            .map(|(key_id, sig)| pb::Signature {
                key_id: key_id.0.to_vec(),
                signature: sig.to_vec(),
            })
            .collect(),
    };
    let event = decode_event(ledger_id, &signed).map_err(|e| {
        internal(format!(
            "stored event {} does not decode: {e}",
            decoded.index
        ))
    })?;
    Ok((
        pb::LedgerEvent {
            index: decoded.index,
            sequenced_at: decoded.sequenced_at,
            event_hash: event_hash(ledger_id, &decoded.body).0.to_vec(),
            leaf_hash: leaf_hash(entry).0.to_vec(),
            kind: event.kind().map(kind_name).unwrap_or("unknown").to_owned(),
            subject: subject_name(&event.subject),
            event: Some(signed),
            entry: entry.to_vec(),
        },
        event.subject,
    ))
}

/// A subject as the API names it: canonical tracking number or registry id.
pub(crate) fn subject_name(subject: &Subject) -> String {
    match subject {
        Subject::Manifest(t) => t.to_string(),
        Subject::Party(id) => id.clone(),
    }
}

/// The entry bytes at `index`.
pub(crate) fn entry_at(store: &LedgerStore, index: u64) -> Result<Vec<u8>, Status> {
    wasteledger_core::proof::ProofSource::entry(store, index)
        .ok_or_else(|| internal(format!("entry {index} missing from the store")))
}

/// Validates a wire tracking number.
pub(crate) fn tracking(t: Option<pb::TrackingNumber>) -> Result<Tracking, Status> {
    let t = t.ok_or_else(|| {
        status(
            tonic::Code::InvalidArgument,
            "query.tracking_number",
            "tracking_number is required",
        )
    })?;
    Tracking::from_pb(&t).map_err(|e| {
        status(
            tonic::Code::InvalidArgument,
            "query.tracking_number",
            e.to_string(),
        )
    })
}

/// The page size a request asks for, checked.
pub(crate) fn page_size(requested: u32) -> Result<usize, Status> {
    match requested as usize {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(status(
            tonic::Code::InvalidArgument,
            "query.page_size",
            format!("page_size {n} is over the maximum {MAX_PAGE_SIZE}"),
        )),
    }
}

/// Page tokens are the hex of the last key examined, prefixed with a format letter, so that a
/// caller treats them as opaque and a stale format is refused rather than misread.
pub(crate) fn encode_token(last: &str) -> String {
    format!("k{}", hex::encode(last.as_bytes()))
}

/// The key a page token resumes after; `None` for the first page.
pub(crate) fn decode_token(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        status(
            tonic::Code::InvalidArgument,
            "query.page_token",
            "page_token is not one this server issued; start again with an empty token",
        )
    };
    let hex_part = token.strip_prefix('k').ok_or_else(bad)?;
    let bytes = hex::decode(hex_part).map_err(|_| bad())?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// The filters of a ListManifests request, checked once.
pub(crate) struct ManifestFilter {
    party: Option<String>,
    role: Option<pb::Role>,
    statuses: Vec<pb::ManifestStatus>,
    waste_code: Option<String>,
    code_system: Option<pb::CodeSystem>,
    time_field: pb::ManifestTime,
    from_ms: i64,
    until_ms: i64,
}

fn invalid(reason: &str, message: impl Into<String>) -> Status {
    status(tonic::Code::InvalidArgument, reason, message)
}

impl ManifestFilter {
    /// Checks a request's filters.
    pub(crate) fn from_request(r: &pb::ListManifestsRequest) -> Result<ManifestFilter, Status> {
        let role = match pb::Role::try_from(r.role) {
            Ok(pb::Role::Unspecified) => None,
            Ok(
                role @ (pb::Role::Generator
                | pb::Role::Transporter
                | pb::Role::Facility
                | pb::Role::Broker),
            ) => Some(role),
            Ok(other) => {
                return Err(invalid(
                    "query.role",
                    format!(
                        "role {} never appears on a manifest; use generator, transporter, facility or broker",
                        other.as_str_name()
                    ),
                ));
            }
            Err(_) => return Err(invalid("query.role", format!("unknown role {}", r.role))),
        };
        if role.is_some() && r.party.is_empty() {
            return Err(invalid("query.role", "role filters need a party"));
        }
        let statuses = r
            .statuses
            .iter()
            .map(|s| match pb::ManifestStatus::try_from(*s) {
                Ok(pb::ManifestStatus::Unspecified) | Err(_) => Err(invalid(
                    "query.status",
                    format!("unknown manifest status {s}"),
                )),
                Ok(status) => Ok(status),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let code_system = match pb::CodeSystem::try_from(r.code_system) {
            Ok(pb::CodeSystem::Unspecified) => None,
            Ok(system) => Some(system),
            Err(_) => {
                return Err(invalid(
                    "query.code_system",
                    format!("unknown code system {}", r.code_system),
                ));
            }
        };
        let time_field = pb::ManifestTime::try_from(r.time_field).map_err(|_| {
            invalid(
                "query.time_field",
                format!("unknown time field {}", r.time_field),
            )
        })?;
        if (r.from_ms != 0 || r.until_ms != 0) && time_field == pb::ManifestTime::Unspecified {
            return Err(invalid(
                "query.time_field",
                "a date range needs time_field (created, shipped, delivered, received, treated or last event)",
            ));
        }
        if r.until_ms != 0 && r.from_ms > r.until_ms {
            return Err(invalid(
                "query.time_range",
                format!("from_ms {} is after until_ms {}", r.from_ms, r.until_ms),
            ));
        }
        Ok(ManifestFilter {
            party: (!r.party.is_empty()).then(|| r.party.clone()),
            role,
            statuses,
            waste_code: (!r.waste_code.is_empty()).then(|| r.waste_code.trim().to_owned()),
            code_system,
            time_field,
            from_ms: r.from_ms,
            until_ms: r.until_ms,
        })
    }

    /// The secondary index that narrows the scan most, as `(index kind, value)`; `None` scans
    /// every manifest. Every index is ordered by tracking number, so one cursor serves all.
    pub(crate) fn index(&self) -> Option<(u8, String)> {
        if let Some(party) = &self.party {
            return Some((b'p', party.clone()));
        }
        if let (Some(code), Some(system)) = (&self.waste_code, self.code_system) {
            return Some((b'c', format!("{}:{code}", system as i32)));
        }
        // One status, or several open ones: they share one status index value.
        let mut values = self.statuses.iter().map(|s| status_index_value(*s));
        if let Some(Some(first)) = values.next()
            && values.all(|v| v == Some(first))
        {
            return Some((b's', first.to_owned()));
        }
        None
    }

    /// True when `m` passes every filter.
    pub(crate) fn matches(&self, m: &pb::ManifestState) -> bool {
        let Some(manifest) = &m.manifest else {
            return false;
        };
        if let Some(party) = &self.party {
            let is =
                |p: &Option<pb::ManifestParty>| p.as_ref().is_some_and(|p| &p.registry_id == party);
            let transporter = manifest.transporters.iter().any(|leg| is(&leg.transporter));
            let ok = match self.role {
                None => {
                    is(&manifest.generator)
                        || transporter
                        || is(&manifest.designated_facility)
                        || is(&manifest.alternate_facility)
                        || is(&manifest.broker)
                }
                Some(pb::Role::Generator) => is(&manifest.generator),
                Some(pb::Role::Transporter) => transporter,
                Some(pb::Role::Facility) => {
                    is(&manifest.designated_facility) || is(&manifest.alternate_facility)
                }
                Some(pb::Role::Broker) => is(&manifest.broker),
                Some(_) => false,
            };
            if !ok {
                return false;
            }
        }
        if !self.statuses.is_empty() && !self.statuses.iter().any(|s| *s as i32 == m.status) {
            return false;
        }
        if self.waste_code.is_some() || self.code_system.is_some() {
            let hit = manifest.lines.iter().flat_map(|l| &l.codes).any(|c| {
                self.code_system.is_none_or(|s| c.system == s as i32)
                    && self
                        .waste_code
                        .as_ref()
                        .is_none_or(|w| c.code.eq_ignore_ascii_case(w))
            });
            if !hit {
                return false;
            }
        }
        if self.from_ms != 0 || self.until_ms != 0 {
            let t = match self.time_field {
                pb::ManifestTime::Unspecified => None,
                pb::ManifestTime::Created => Some(m.created_at),
                pb::ManifestTime::Shipped => m.shipped_at,
                pb::ManifestTime::Delivered => m.delivered_at,
                pb::ManifestTime::Received => m.received_at,
                pb::ManifestTime::Treated => m.treated_at,
                pb::ManifestTime::LastEvent => Some(m.last_occurred_at),
            };
            let Some(t) = t else {
                return false;
            };
            if t < self.from_ms || (self.until_ms != 0 && t >= self.until_ms) {
                return false;
            }
        }
        true
    }
}

/// The store's status index value for `s` ([`state::status_index_value`]); `None` for
/// `Unspecified`.
fn status_index_value(s: pb::ManifestStatus) -> Option<&'static str> {
    // The leg does not change the index value.
    let status = status_from_pb(s as i32, 0).ok()?;
    Some(state::status_index_value(status))
}

/// Records examined per store read while filling a page.
const CHUNK: usize = 256;

/// Fills one page: reads `(key, record)` chunks in key order after the cursor with `fetch`,
/// keeps the records `keep` accepts, and stops at `page_size` kept records or [`SCAN_BUDGET`]
/// examined ones. Returns the page and the token to resume after (empty at the end). A record
/// that vanished between an index and its read (`None`) is skipped.
fn paginate<T>(
    page_size: usize,
    after: Option<String>,
    mut fetch: impl FnMut(Option<&str>, usize) -> Result<Vec<(String, Option<T>)>, Status>,
    keep: impl Fn(&T) -> bool,
) -> Result<(Vec<T>, String), Status> {
    let mut page = Vec::new();
    let mut cursor = after;
    let mut examined = 0usize;
    loop {
        let chunk = fetch(cursor.as_deref(), CHUNK)?;
        let exhausted = chunk.len() < CHUNK;
        for (key, record) in chunk {
            examined += 1;
            if let Some(record) = record
                && keep(&record)
            {
                page.push(record);
            }
            cursor = Some(key);
            if page.len() >= page_size || examined >= SCAN_BUDGET {
                // More may follow; the next call resumes after the last key examined.
                return Ok((
                    page,
                    cursor.as_deref().map(encode_token).unwrap_or_default(),
                ));
            }
        }
        if exhausted {
            return Ok((page, String::new()));
        }
    }
}

/// One page of manifests matching `filter`, in tracking-number order after `after`, through
/// the most selective index.
pub(crate) fn list_manifests(
    store: &LedgerStore,
    filter: &ManifestFilter,
    after: Option<String>,
    page_size: usize,
) -> Result<(Vec<pb::ManifestState>, String), Status> {
    let index = filter.index();
    let fetch = |cursor: Option<&str>, limit: usize| match &index {
        Some((kind, value)) => store
            .index_scan(*kind, value, cursor, limit)
            .map_err(|e| internal(e.to_string()))?
            .into_iter()
            .map(|t| {
                let state = store
                    .manifest_state(&t)
                    .map_err(|e| internal(e.to_string()))?;
                Ok((t, state))
            })
            .collect::<Result<Vec<_>, Status>>(),
        None => Ok(store
            .manifests_after(cursor, limit)
            .map_err(|e| internal(e.to_string()))?
            .into_iter()
            .map(|(t, s)| (t, Some(s)))
            .collect()),
    };
    paginate(page_size, after, fetch, |m| filter.matches(m))
}

/// One page of parties in registry-id order, optionally only those holding `role`.
pub(crate) fn list_parties(
    store: &LedgerStore,
    role: Option<pb::Role>,
    after: Option<String>,
    page_size: usize,
) -> Result<(Vec<pb::PartyState>, String), Status> {
    let fetch = |cursor: Option<&str>, limit: usize| {
        Ok(store
            .parties_after(cursor, limit)
            .map_err(|e| internal(e.to_string()))?
            .into_iter()
            .map(|(id, p)| (id, Some(p)))
            .collect())
    };
    let holds = |party: &pb::PartyState| {
        role.is_none_or(|r| {
            party
                .party
                .as_ref()
                .is_some_and(|p| p.roles.contains(&(r as i32)))
        })
    };
    paginate(page_size, after, fetch, holds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One chunk of `(key, record)` pairs, as a store read returns them.
    type Chunk = Result<Vec<(String, Option<String>)>, Status>;

    /// A store read over sorted `keys`: those after the cursor, at most `limit`.
    fn fetch_from(keys: &[String]) -> impl Fn(Option<&str>, usize) -> Chunk + '_ {
        move |after, limit| {
            Ok(keys
                .iter()
                .filter(|k| after.is_none_or(|a| k.as_str() > a))
                .take(limit)
                .map(|k| (k.clone(), Some(k.clone())))
                .collect())
        }
    }

    #[test]
    fn pages_follow_the_cursor_to_an_empty_end_and_bound_the_scan() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i:04}")).collect();
        let fetch = fetch_from(&keys);
        // Every 10th key, 30 per page: pages of 30, 30, 30, 10, and no token after the last.
        let keep = |k: &String| k.ends_with('0');
        let mut after = None;
        let mut sizes = Vec::new();
        loop {
            let (page, token) = paginate(30, after, &fetch, keep).unwrap();
            sizes.push(page.len());
            if token.is_empty() {
                break;
            }
            after = decode_token(&token).unwrap();
        }
        assert_eq!(sizes, vec![30, 30, 30, 10]);
        // Nothing matches: the scan stops at the budget with a token to go on from.
        let (page, token) = paginate(30, None, &fetch, |_| false).unwrap();
        assert!(page.is_empty());
        assert!(
            token.is_empty(),
            "1000 keys < budget: one call reaches the end"
        );
        let many: Vec<String> = (0..5000).map(|i| format!("k{i:05}")).collect();
        let (page, token) = paginate(30, None, fetch_from(&many), |_| false).unwrap();
        assert!(page.is_empty());
        assert_eq!(
            decode_token(&token).unwrap().as_deref(),
            Some(many[SCAN_BUDGET - 1].as_str())
        );
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_forgeries() {
        let token = encode_token("cn:20261502000001");
        assert_eq!(
            decode_token(&token).unwrap().as_deref(),
            Some("cn:20261502000001")
        );
        assert_eq!(decode_token("").unwrap(), None);
        for bad in ["cn:2026", "kzz", "k", "xk00"] {
            if bad == "k" {
                // An empty key is a valid (if useless) position.
                assert_eq!(decode_token(bad).unwrap().as_deref(), Some(""));
                continue;
            }
            let err = decode_token(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn filters_are_checked_before_any_scan() {
        let base = pb::ListManifestsRequest::default();
        let role_without_party = pb::ListManifestsRequest {
            role: pb::Role::Generator as i32,
            ..base.clone()
        };
        assert!(ManifestFilter::from_request(&role_without_party).is_err());
        let range_without_field = pb::ListManifestsRequest {
            from_ms: 1,
            ..base.clone()
        };
        assert!(ManifestFilter::from_request(&range_without_field).is_err());
        let bad_status = pb::ListManifestsRequest {
            statuses: vec![99],
            ..base.clone()
        };
        assert!(ManifestFilter::from_request(&bad_status).is_err());
        let regulator = pb::ListManifestsRequest {
            party: "x".into(),
            role: pb::Role::Regulator as i32,
            ..base.clone()
        };
        assert!(ManifestFilter::from_request(&regulator).is_err());
        assert!(page_size(501).is_err());
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
    }

    #[test]
    fn the_most_selective_index_is_chosen() {
        let f = |r: pb::ListManifestsRequest| ManifestFilter::from_request(&r).unwrap().index();
        assert_eq!(
            f(pb::ListManifestsRequest {
                party: "gen".into(),
                statuses: vec![pb::ManifestStatus::Created as i32],
                ..Default::default()
            }),
            Some((b'p', "gen".into()))
        );
        assert_eq!(
            f(pb::ListManifestsRequest {
                waste_code: "HW08".into(),
                code_system: pb::CodeSystem::CnHwCategory as i32,
                ..Default::default()
            }),
            Some((
                b'c',
                format!("{}:HW08", pb::CodeSystem::CnHwCategory as i32)
            ))
        );
        assert_eq!(
            f(pb::ListManifestsRequest {
                statuses: vec![pb::ManifestStatus::InTransit as i32],
                ..Default::default()
            }),
            Some((b's', state::OPEN_STATUSES.into()))
        );
        // Open statuses share one value; a terminal one has its own.
        let statuses = |s: &[pb::ManifestStatus]| pb::ListManifestsRequest {
            statuses: s.iter().map(|s| *s as i32).collect(),
            ..Default::default()
        };
        use pb::ManifestStatus::{Created, Delivered, Treated};
        assert_eq!(
            f(statuses(&[Created, Delivered])),
            Some((b's', state::OPEN_STATUSES.into()))
        );
        assert_eq!(f(statuses(&[Treated])), Some((b's', "treated".into())));
        assert_eq!(f(statuses(&[Created, Treated])), None);
        assert_eq!(f(pb::ListManifestsRequest::default()), None);
    }
}
