//! Waiting on conditions: every wait has a deadline that fails the test, never a bare sleep.

use std::time::Duration;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` until it is true; fails the test with `what` after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls an async `check` until it is true; fails the test with `what` after [`DEADLINE`].
pub async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
