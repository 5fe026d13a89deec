//! The admin endpoints, and the one reader of Prometheus text.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use super::client::{fresh, get};

/// GETs an admin path; returns status and text.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let r = fresh::get(admin, path, &[]).await;
    (r.status, r.text())
}

/// POSTs to an admin path; returns status and text.
pub async fn admin_post(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let r = fresh::post_raw(admin, path, Bytes::new(), &[]).await;
    (r.status, r.text())
}

/// `GET /readyz` status.
pub async fn readyz(admin: SocketAddr) -> StatusCode {
    get(admin, "/readyz").await.status
}

/// `GET /policy`: status and JSON.
pub async fn policy(admin: SocketAddr) -> (StatusCode, Value) {
    let r = get(admin, "/policy").await;
    (r.status, r.json())
}

/// `GET /metrics` text.
pub async fn metrics(admin: SocketAddr) -> String {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    r.text()
}

/// The value of the first sample of `name` whose labels include all of
/// `labels` (label order does not matter); `None` if there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name, labels).next()
}

/// Sum of every sample of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).sum()
}

/// The values of the samples of `name` whose labels include all of `labels`.
fn samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .filter(move |(n, ls, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

/// One sample line: its name, its labels and its value.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), BTreeMap::new()),
        Some((n, rest)) => {
            let rest = rest.strip_suffix('}')?;
            let mut map = BTreeMap::new();
            // Label values here never contain `",`; a simple split suffices.
            for pair in rest.split("\",") {
                let (k, v) = pair.split_once("=\"")?;
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            (n.to_string(), map)
        }
    };
    Some((name, labels, value))
}

/// The version of the policy in force in `app`, if any.
pub fn version(app: &poolgate::App) -> Option<String> {
    app.policy.current().map(|p| p.version.clone())
}

/// The value of the sample whose name and labels are exactly `series`
/// (e.g. `poolgate_rejections_total{reason="x"}`; label order as written).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let (name, labels) = match parse_sample(&format!("{series} 0")) {
        Some((n, l, _)) => (n, l),
        None => panic!("not a series: {series}"),
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .find(|(n, ls, _)| *n == name && *ls == labels)
        .map(|(_, _, v)| v)
}
