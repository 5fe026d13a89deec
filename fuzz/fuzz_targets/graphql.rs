//! GraphQL request reading: `extract::graphql::calls` on JSON, form and
//! `application/graphql` bodies.
//!
//! Besides "no panic, no stack overflow, bounded time": a call found is a
//! guarded field whose name is really in the document, its arguments are one
//! JSON object, and a batch index is given exactly for array bodies.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use poolgate::extract::graphql::{calls, GraphqlCall};
use poolgate::extract::BodyKind;
use poolgate::routes::default_graphql_ops;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Wrapped as `{"query": ..., "variables": ..., "operationName": ...}`.
    query: String,
    variables: Option<String>,
    operation_name: Option<String>,
    body: &'a [u8],
}

fn check(calls: &[GraphqlCall<'_>], query_texts: &[&str], array: bool) {
    for c in calls {
        assert!(c.args.is_object());
        assert!(!c.response_key.is_empty());
        assert_eq!(c.batch_index.is_some(), array);
        assert!(query_texts.iter().any(|q| q.contains(c.op.name)));
    }
}

fuzz_target!(|input: Input<'_>| {
    let ops = default_graphql_ops();

    // The raw body, read every way.
    for kind in [BodyKind::Json, BodyKind::Form, BodyKind::GraphqlText] {
        let _ = calls(kind, input.body, &ops);
    }
    if let Ok(found) = calls(BodyKind::GraphqlText, input.body, &ops) {
        let text = String::from_utf8_lossy(input.body);
        check(&found, &[&text], false);
    }
    if let Ok(found) = calls(BodyKind::Json, input.body, &ops) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(input.body) {
            let (items, array) = match &v {
                serde_json::Value::Array(a) => (a.iter().collect::<Vec<_>>(), true),
                other => (vec![other], false),
            };
            let texts: Vec<&str> = items.iter().filter_map(|r| r["query"].as_str()).collect();
            check(&found, &texts, array);
        }
    }

    // A well-formed request around an arbitrary document.
    let mut req = serde_json::json!({ "query": input.query });
    if let Some(vars) = &input.variables {
        // A JSON text if it is one, else the raw string (stringified variables).
        req["variables"] = serde_json::from_str(vars)
            .unwrap_or_else(|_| serde_json::Value::String(vars.clone()));
    }
    if let Some(name) = &input.operation_name {
        req["operationName"] = serde_json::Value::String(name.clone());
    }
    let body = req.to_string();
    let once = calls(BodyKind::Json, body.as_bytes(), &ops);
    if let Ok(found) = &once {
        check(found, &[&input.query], false);
    }
    assert_eq!(once, calls(BodyKind::Json, body.as_bytes(), &ops), "deterministic");
});
