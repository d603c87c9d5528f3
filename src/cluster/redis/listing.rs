//! The cluster as the admin API reads it from Redis: the nodes (`K:nodes` and each
//! `K:node:{node}`) and a page of sockets (`K:sockets` and each `K:socket:{id}`), never by asking
//! other nodes.

use std::{collections::HashMap, time::Duration};

use redis::AsyncCommands;

use super::{RedisBackend, connection::unavailable, keys::Keys};
use crate::{
    cluster::{
        BackendError,
        view::{self, NodeRecord, SocketPage, SocketQuery, SocketRecord},
    },
    socket::{SocketId, unix_ms},
};

/// Socket ids fetched from `K:sockets` per round trip while listing.
const LIST_BATCH: usize = 500;

/// A node's record from its `K:nodes` heartbeat age and its `K:node:{node}` hash.
pub fn node_record(id: String, heartbeat_age_ms: i64, h: &HashMap<String, String>) -> NodeRecord {
    let text = |k: &str| h.get(k).cloned().unwrap_or_default();
    NodeRecord {
        id,
        listen: text("listen"),
        admin: text("admin"),
        started_at: h.get("started_at").and_then(|v| v.parse().ok()).unwrap_or(0),
        version: text("version"),
        sockets: h.get("sockets").and_then(|v| v.parse().ok()).unwrap_or(0),
        heartbeat_age_ms,
        draining: h.get("draining").is_some_and(|v| v == "1"),
    }
}

/// A page of sockets from `K:sockets` (ordered by `connected_at`, then id: id order, since an
/// id's timestamp is its `connected_at`), their records read in one pipeline per batch.
pub async fn sockets(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    query: &SocketQuery,
) -> Result<SocketPage, redis::RedisError> {
    // The position: after (`min`, `after`). `skip` passes over entries of score `min` up to
    // `after` when a whole batch holds nothing else (many sockets in one millisecond).
    let (mut min, mut after) = match query.after {
        Some(id) => (Some(id.unix_ms()), Some(id.to_string())),
        None => (None, None),
    };
    let mut skip = 0;
    let mut page = Vec::new();
    let mut scanned = 0;
    let mut last_scanned: Option<String> = None;
    loop {
        let batch = id_batch(conn, keys, min, skip).await?;
        let exhausted = batch.len() < LIST_BATCH;
        let batch_last = batch.last().cloned();
        let fresh: Vec<String> = batch
            .into_iter()
            .filter(|(id, score)| min.is_none_or(|m| *score > m) || after.as_ref().is_none_or(|a| id > a))
            .map(|(id, _)| id)
            .collect();
        let hashes = socket_hashes(conn, keys, &fresh).await?;
        let progressed = !fresh.is_empty();
        for (id, hash) in fresh.into_iter().zip(hashes) {
            if page.len() == query.limit || (query.filtered() && scanned == view::SCAN_BUDGET) {
                return Ok(SocketPage { sockets: page, next_cursor: last_scanned });
            }
            scanned += 1;
            if let Some(record) = SocketRecord::from_hash(&id, &hash, query.idle_after)
                && query.matches(&record)
            {
                page.push(record);
            }
            last_scanned = Some(id);
        }
        let Some((last_id, last_score)) = batch_last.filter(|_| !exhausted) else {
            return Ok(SocketPage { sockets: page, next_cursor: None });
        };
        if progressed {
            (min, after, skip) = (Some(last_score), Some(last_id), 0);
        } else {
            skip += LIST_BATCH;
        }
    }
}

/// Up to [`LIST_BATCH`] (id, `connected_at`) entries of `K:sockets` from score `min` on,
/// passing over the first `skip`.
async fn id_batch(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    min: Option<i64>,
    skip: usize,
) -> Result<Vec<(String, i64)>, redis::RedisError> {
    redis::cmd("ZRANGE")
        .arg(keys.sockets.clone())
        .arg(min.map_or_else(|| "-inf".to_owned(), |m| m.to_string()))
        .arg("+inf")
        .arg("BYSCORE")
        .arg("LIMIT")
        .arg(skip)
        .arg(LIST_BATCH)
        .arg("WITHSCORES")
        .query_async(conn)
        .await
}

/// The `K:socket:{id}` hashes of `ids`, in one pipeline.
async fn socket_hashes(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    ids: &[String],
) -> Result<Vec<HashMap<String, String>>, redis::RedisError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hgetall(keys.socket(id));
    }
    pipe.query_async(conn).await
}

impl RedisBackend {
    /// The cluster's nodes, by id.
    pub(super) async fn list_nodes(&self) -> Result<Vec<NodeRecord>, BackendError> {
        let (beats, hashes) = self
            .shared
            .run(|mut conn| async move {
                let beats: Vec<(String, i64)> = conn.zrange_withscores(self.keys.nodes.clone(), 0, -1).await?;
                let mut pipe = redis::pipe();
                for (node, _) in &beats {
                    pipe.hgetall(self.keys.node(node));
                }
                let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
                Ok((beats, hashes))
            })
            .await
            .map_err(unavailable)?;
        let now = unix_ms();
        let mut nodes: Vec<NodeRecord> =
            beats.into_iter().zip(hashes).map(|((id, beat), h)| node_record(id, now - beat, &h)).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// A page of the cluster's sockets.
    pub(super) async fn list_sockets(&self, query: &SocketQuery) -> Result<SocketPage, BackendError> {
        self.shared
            .run(|mut conn| async move { sockets(&mut conn, &self.keys, query).await })
            .await
            .map_err(unavailable)
    }

    /// One socket of the cluster, as Redis knows it.
    pub(super) async fn find_socket(
        &self,
        id: SocketId,
        idle_after: Duration,
    ) -> Result<Option<SocketRecord>, BackendError> {
        let id = id.to_string();
        let key = self.keys.socket(&id);
        let hash: HashMap<String, String> =
            self.shared.run(|mut conn| async move { conn.hgetall(key).await }).await.map_err(unavailable)?;
        Ok(SocketRecord::from_hash(&id, &hash, idle_after))
    }
}
