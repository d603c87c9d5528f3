//! Readiness and liveness: the standard gRPC health protocol, polled every `--health-interval`.
//!
//! Readiness is the answer (SERVING or not). Liveness is whether there is an answer at all: the
//! node's HTTP/2 keepalive pings are rare (see [`super::stream::KEEPALIVE_INTERVAL`]: stock gRPC
//! servers refuse frequent ones), so a hung upstream, or a connection that black-holes, is found
//! here: [`LIVENESS_FAILURES`] checks in a row without an answer give its stream up.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tracing::{info, warn};

use super::pool::Upstream;
use crate::UPSTREAM_SERVICE;

/// The shortest time a health check may take before it counts as failed.
const MIN_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest: with a long `--health-interval` a hung upstream is still found within a few of
/// them.
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Checks in a row without any answer (timed out, or the connection failed) after which the
/// upstream counts as dead and its stream is given up. One slow answer (a pause in the upstream)
/// is not enough.
pub const LIVENESS_FAILURES: u32 = 3;

/// Polls the upstream's health until `stop` is cancelled (its stream task ended), keeping its
/// readiness current. An upstream is ready only while it answers SERVING for service
/// `ppp.v1.Upstream`.
pub async fn run(upstream: Arc<Upstream>, channel: Channel, interval: Duration, stop: CancellationToken) {
    let mut client = HealthClient::new(channel);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = interval.clamp(MIN_CHECK_TIMEOUT, MAX_CHECK_TIMEOUT);
    let mut unanswered = 0u32;
    let latency = metrics::histogram!(crate::metrics::UPSTREAM_LATENCY, "upstream" => upstream.id.clone());
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let request = HealthCheckRequest { service: UPSTREAM_SERVICE.to_owned() };
        let started = std::time::Instant::now();
        // Any answer proves the upstream received everything the stream sent before the check
        // on this connection: those events leave the replay window.
        let streamed = upstream.delivery.streamed.load(Ordering::Acquire);
        let answer = tokio::time::timeout(timeout, client.check(request)).await;
        if matches!(answer, Ok(Ok(_))) {
            latency.record(started.elapsed().as_secs_f64());
            upstream.delivery.confirmed.fetch_max(streamed, Ordering::AcqRel);
        }
        unanswered = if is_unanswered(&answer) { unanswered + 1 } else { 0 };
        if unanswered == LIVENESS_FAILURES {
            warn!(upstream = %upstream.id, checks = unanswered, "upstream does not answer: giving its stream up");
            upstream.set_lost();
        }
        let verdict = match answer {
            Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(response)) => Err(format!("health status {}", response.get_ref().status)),
            Ok(Err(status)) => Err(format!("health check failed: {}", super::describe(&status))),
            Err(_) => Err(format!("health check timed out after {timeout:?}")),
        };
        let ready = verdict.is_ok();
        if set_ready(&upstream, ready) {
            match verdict {
                Ok(()) => info!(upstream = %upstream.id, "upstream ready"),
                Err(e) => {
                    warn!(upstream = %upstream.id, error = %e, "upstream not ready");
                    upstream.set_last_error(e);
                }
            }
        }
    }
    set_ready(&upstream, false);
}

/// Sets the upstream's readiness and, when it changed, `ppp_upstream_ready`.
fn set_ready(upstream: &Upstream, ready: bool) -> bool {
    let changed = upstream.set_ready(ready);
    if changed {
        metrics::gauge!(crate::metrics::UPSTREAM_READY, "upstream" => upstream.id.clone())
            .set(f64::from(u8::from(ready)));
    }
    changed
}

/// Whether a check got no answer from the upstream at all: it timed out, or the connection
/// failed. An answer that is an error (no health service, an unknown service) is an answer.
fn is_unanswered<T>(answer: &Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>) -> bool {
    match answer {
        Err(_) => true,
        Ok(Err(status)) => matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded),
        Ok(Ok(_)) => false,
    }
}
