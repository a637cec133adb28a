//! The etcd side of the comparison: concurrent clients each putting ~512-byte values and
//! waiting for every acknowledgement, through the same tonic machinery as the WasteLedger
//! clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};

use crate::stats::Sample;

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

/// Drives `ops` puts (or until `duration`) with `clients` concurrent clients at `endpoint`.
pub(crate) async fn drive(
    endpoint: &str,
    clients: usize,
    ops: u64,
    value_size: usize,
    duration: Option<Duration>,
) -> anyhow::Result<(Instant, Vec<Sample>)> {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let issued = issued.clone();
        let endpoint = endpoint.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::kv_client::KvClient::connect(endpoint.clone())
                .await
                .with_context(|| format!("connect to etcd at {endpoint}"))?;
            let mut samples = Vec::new();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= ops {
                    break;
                }
                // Distinct keys, like distinct manifests; values of the requested size.
                let key = format!("bench/{c:04}/{n:012}").into_bytes();
                let mut value = vec![b'x'; value_size];
                let tag = n.to_be_bytes();
                value[..tag.len().min(value_size)]
                    .copy_from_slice(&tag[..tag.len().min(value_size)]);
                let t = Instant::now();
                client
                    .put(pb::PutRequest {
                        key,
                        value,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| anyhow!("etcd put failed: {:?} {}", s.code(), s.message()))?;
                samples.push(Sample {
                    done: Instant::now(),
                    latency: t.elapsed(),
                });
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("client task")??);
    }
    Ok((started, all))
}
