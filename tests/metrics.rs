//! What operators point at a node, checked against what a fresh node exports: `/metrics` (every
//! family of `ppp::metrics::FAMILIES` with `# HELP` and `# TYPE`, every closed-set label value at
//! zero, `promtool check metrics` clean), the metrics table of `docs/admin-api.md`, and the
//! metrics that `deploy/grafana/ppp.json` and `deploy/prometheus/alerts.yml` query, each of which
//! must be exported, and the runbook line every alert has in `docs/operations.md`.
//!
//! No test here opens a socket: the zeros a fresh node exports stay zeros for the whole binary.

#[allow(dead_code)]
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    process::{Command, Stdio},
};

use common::*;
use ppp::metrics::{self as m, FAMILIES, Kind};
use regex::Regex;

/// A scrape of a fresh node with one upstream (so the per-upstream families are there).
async fn scrape() -> String {
    let up = TestUpstream::start(true).await;
    let admin = AdminNode::start(test_config(&[&up])).await;
    let answer = admin.get("/metrics").await;
    assert_eq!(answer.status, 200);
    answer.text
}

/// The families of a scrape: name → (`# TYPE`, whether it has `# HELP`).
fn families(text: &str) -> BTreeMap<String, (String, bool)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.entry(name.to_owned()).or_insert((String::new(), false)).0 = kind.to_owned();
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            out.entry(name.to_owned()).or_insert((String::new(), false)).1 = true;
        }
    }
    out
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

/// The value of the series `series` (name and labels, as rendered), if the scrape has it.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_fresh_node_exports_every_family_described_with_its_closed_sets_at_zero() {
    let text = scrape().await;
    let found = families(&text);
    let expected: BTreeMap<String, (String, bool)> =
        FAMILIES.iter().map(|f| (f.name.to_owned(), (kind_name(f.kind).to_owned(), true))).collect();
    assert_eq!(found, expected, "families in /metrics (type, has # HELP) against ppp::metrics::FAMILIES");

    for reason in ppp::socket::CloseReason::ALL {
        let series = format!("{}{{reason=\"{}\"}}", m::SOCKETS_CLOSED, reason.as_str());
        assert_eq!(value(&text, &series), Some(0.0), "{series}");
    }
    for reason in m::REFUSAL_REASONS {
        let series = format!("{}{{reason=\"{reason}\"}}", m::MESSAGES_REFUSED);
        assert_eq!(value(&text, &series), Some(0.0), "{series}");
    }
    for command in m::COMMAND_KINDS {
        for status in m::STATUSES {
            let series = format!("{}{{command=\"{command}\",status=\"{status}\"}}", m::COMMANDS);
            assert_eq!(value(&text, &series), Some(0.0), "{series}");
        }
    }
    for state in m::SOCKET_STATES {
        let series = format!("{}{{state=\"{state}\"}}", m::SOCKETS_OPEN);
        assert_eq!(value(&text, &series), Some(0.0), "{series}");
    }
    for name in [m::SOCKETS_OPENED, m::SOCKETS_REFUSED, m::MESSAGES_IN, m::MESSAGES_OUT, m::NODES_REAPED] {
        assert_eq!(value(&text, name), Some(0.0), "{name}");
    }
    assert_eq!(value(&text, m::READY), Some(1.0));
    assert_eq!(value(&text, m::BACKEND_REACHABLE), Some(1.0));
}

#[tokio::test]
async fn promtool_finds_nothing_to_say_about_metrics() {
    let text = scrape().await;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool could not be started ({e}): install it (Debian: apt-get install prometheus; \
             scripts/test.sh does) — this check is not skipped"
        ),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
}

/// The families `docs/admin-api.md`'s metrics table lists: name → (type, label names).
fn documented() -> BTreeMap<String, (String, Vec<String>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.md")).unwrap();
    let table = doc.split("## Metrics").nth(1).expect("a Metrics section");
    let name = Regex::new(r"`(ppp_[a-z0-9_]+)(?:\{([a-z_,]*)\})?`").unwrap();
    let mut out = BTreeMap::new();
    for row in table.lines().filter(|l| l.starts_with("| `ppp_")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        for c in name.captures_iter(cells[0]) {
            let labels = c.get(2).map_or(Vec::new(), |l| l.as_str().split(',').map(str::to_owned).collect());
            out.insert(c[1].to_owned(), (cells[1].trim().to_owned(), labels));
        }
    }
    out
}

#[test]
fn the_docs_metrics_table_lists_exactly_the_families() {
    let code: BTreeMap<String, (String, Vec<String>)> = FAMILIES
        .iter()
        .map(|f| (f.name.to_owned(), (kind_name(f.kind).to_owned(), f.labels.iter().map(|l| l.to_string()).collect())))
        .collect();
    assert_eq!(
        documented(),
        code,
        "docs/admin-api.md's metrics table (name, type, labels) against ppp::metrics::FAMILIES"
    );
}

/// Every `ppp_…` metric name in `text` (PromQL), histogram series named by their family.
fn queried(text: &str) -> BTreeSet<String> {
    let name = Regex::new(r"\bppp_[a-z0-9_]+").unwrap();
    let histograms: Vec<&str> = FAMILIES.iter().filter(|f| f.kind == Kind::Histogram).map(|f| f.name).collect();
    name.find_iter(text)
        .map(|n| {
            let n = n.as_str();
            let family =
                ["_bucket", "_sum", "_count"].iter().find_map(|s| n.strip_suffix(s).filter(|f| histograms.contains(f)));
            family.unwrap_or(n).to_owned()
        })
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_exported_metrics() {
    let exported: BTreeSet<String> = families(&scrape().await).into_keys().collect();

    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana/ppp.json")).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has queries");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = queried(expr);
        assert!(!names.is_empty(), "a dashboard query names no ppp metric: {expr}");
        used.extend(names);
    }
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "deploy/grafana/ppp.json queries metrics /metrics does not export: {missing:?}");

    // Comments and annotations aside, every name in the rules.
    let rules: String = read("deploy/prometheus/alerts.yml")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.contains("summary:") && !l.contains("runbook:"))
        .collect::<Vec<_>>()
        .join("\n");
    let used = queried(&rules);
    assert!(used.len() >= 6, "the alerts query ppp metrics: {used:?}");
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "deploy/prometheus/alerts.yml queries metrics /metrics does not export: {missing:?}");
}

/// Every query anywhere in a dashboard: panels' `expr`, template variables' `definition`.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

#[test]
fn every_alert_has_a_runbook_line() {
    let operations = read("docs/operations.md");
    let runbooks = operations.split("## Alerts").nth(1).expect("docs/operations.md has an Alerts section");
    let alert = Regex::new(r"(?m)^\s*- alert: (\w+)").unwrap();
    let rules = read("deploy/prometheus/alerts.yml");
    let names: Vec<&str> = alert.captures_iter(&rules).map(|c| c.get(1).unwrap().as_str()).collect();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(runbooks.contains(&format!("`{name}`")), "no runbook line for {name} in docs/operations.md");
    }
}
