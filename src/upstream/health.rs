//! Readiness: the standard gRPC health protocol, polled every `--health-interval`.

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

/// Polls the upstream's health until `stop` is cancelled (its stream task ended), keeping its
/// readiness current. An upstream is ready only while it answers SERVING for service
/// `ppp.v1.Upstream`.
pub async fn run(upstream: Arc<Upstream>, channel: Channel, interval: Duration, stop: CancellationToken) {
    let mut client = HealthClient::new(channel);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = interval.max(MIN_CHECK_TIMEOUT);
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
        let streamed = upstream.streamed.load(Ordering::Acquire);
        let answer = tokio::time::timeout(timeout, client.check(request)).await;
        if matches!(answer, Ok(Ok(_))) {
            latency.record(started.elapsed().as_secs_f64());
            upstream.confirmed.fetch_max(streamed, Ordering::AcqRel);
        }
        let verdict = match answer {
            Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(response)) => Err(format!("health status {}", response.get_ref().status)),
            Ok(Err(status)) => Err(format!("health check failed: {}", status.message())),
            Err(_) => Err(format!("health check timed out after {timeout:?}")),
        };
        let ready = verdict.is_ok();
        if upstream.set_ready(ready) {
            match verdict {
                Ok(()) => info!(upstream = %upstream.id, "upstream ready"),
                Err(e) => {
                    warn!(upstream = %upstream.id, error = %e, "upstream not ready");
                    upstream.set_last_error(e);
                }
            }
        }
    }
    upstream.set_ready(false);
}
