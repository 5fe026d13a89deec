//! Body field extraction: `extract::body_kind`, `extract::body_facts` (JSON
//! through the lazy view, form bodies), `extract::parse_body` and
//! `extract::graphql::calls`.
//!
//! The body is the attacker's, and the facts read from it pick the account
//! counter, the whitelist entry and the password judged. Besides "no panic":
//! the lazy JSON view must read what a full `serde_json::Value` reads (a
//! difference is a way to show the gateway one account and the upstream
//! another), and a GraphQL call found must really name its mutation.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use poolgate::extract::{self, BodyKind, Facts, Normalize, Password};
use poolgate::routes::{default_graphql_ops, default_routes, Fields, IdField, IdKind};
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    content_type: Option<String>,
    content_encoding: Option<String>,
    route: u8,
    custom: Option<Custom>,
    /// Wrap the body as `{"query": ..., "variables": ...}` for GraphQL.
    graphql: Option<(String, Vec<(String, String)>)>,
    body: &'a [u8],
}

#[derive(Arbitrary, Debug)]
struct Custom {
    identifier: Vec<(String, u8)>,
    password: Option<String>,
    captcha_code: Option<String>,
    captcha_token: Option<String>,
    encrypt_type: Option<String>,
}

/// Route pointers start with `/` (`RouteTable::new` refuses others).
fn pointer(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

fn kind(n: u8) -> IdKind {
    [IdKind::Email, IdKind::Phone, IdKind::Username, IdKind::Auto][usize::from(n) % 4]
}

/// The pointer's target in a full `Value`, as the lazy view should see it.
fn is_number_at(v: &Value, p: &Option<String>) -> bool {
    p.as_deref()
        .and_then(|p| v.pointer(p))
        .is_some_and(Value::is_number)
}

fn check_json(body: &[u8], fields: &Fields) {
    let lazy = extract::body_facts(BodyKind::Json, body, fields, Normalize::default());
    let full = extract::parse_body(BodyKind::Json, body);
    match (&lazy, &full) {
        (Ok(l), Ok(v)) => {
            let f = match extract::facts(v, fields, Normalize::default()) {
                Ok(f) => f,
                // `Value` renders an integer past u64 as a float, which is
                // refused; the lazy view reads its digits.
                Err(e) => {
                    assert!(e.to_string().contains("plain integer"), "{e}");
                    return;
                }
            };
            if l != &f {
                // Numbers are read as their JSON text by the lazy view and as
                // serde_json's rendering by `facts`; any other difference is a bug.
                let any_number = fields
                    .pointers()
                    .into_iter()
                    .any(|p| is_number_at(v, &Some(p.clone())));
                assert!(any_number, "lazy {l:?} != full {f:?}");
            }
        }
        // The full parser refuses nesting deeper than 128; the lazy view
        // checks syntax without recursion, so it may accept such a document.
        (Ok(_), Err(_)) => {}
        // The lazy view refuses a duplicated name it reads; `Value` keeps the last.
        // ... and both refuse a number that is not a plain integer.
        (Err(e), Ok(v)) => {
            // What cannot be judged (a missing or unknown variant, two
            // accounts) is refused by both readings alike.
            if extract::facts(v, fields, Normalize::default()).as_ref() == Err(e) {
                return;
            }
            assert!(
                e.to_string().contains("appears twice") || e.to_string().contains("plain integer"),
                "{e}"
            )
        }
        (Err(_), Err(_)) => {}
    }
}

fn check_facts(f: &Facts) {
    if let Some(id) = &f.identifier {
        assert_ne!(id.kind, IdKind::Auto, "an identifier's kind is decided");
        // Normalised values are fixed points of their normalisation.
        assert_eq!(extract::identify(&id.value, id.kind).value, id.value);
    }
    if let Some(Password::Clear(p)) = &f.password {
        assert!(
            !p.starts_with("sm2:"),
            "an SM2 password is not judged as clear"
        );
    }
    for s in [&f.captcha_code, &f.captcha_token].into_iter().flatten() {
        assert!(!s.trim().is_empty());
    }
}

fuzz_target!(|input: Input<'_>| {
    let routes = default_routes();
    let route = &routes[usize::from(input.route) % routes.len()];
    let fields = match &input.custom {
        None => route.fields.clone(),
        Some(c) => Fields {
            identifier: c
                .identifier
                .iter()
                .take(4)
                .map(|(p, k)| IdField {
                    pointer: pointer(p),
                    kind: kind(*k),
                })
                .collect(),
            password: c.password.as_deref().map(pointer),
            captcha_code: c.captcha_code.as_deref().map(pointer),
            captcha_token: c.captcha_token.as_deref().map(pointer),
            encrypt_type: c.encrypt_type.as_deref().map(pointer),
            ..Fields::default()
        },
    };

    // Headers decide the reader; whatever they say, reading must not panic.
    if let Ok(k) = extract::body_kind(
        input.content_type.as_deref(),
        input.content_encoding.as_deref(),
    ) {
        if let Ok(f) = extract::body_facts(k, input.body, &fields, Normalize::default()) {
            check_facts(&f);
        }
    }
    check_json(input.body, &fields);
    if let Ok(f) = extract::body_facts(BodyKind::Form, input.body, &fields, Normalize::default()) {
        check_facts(&f);
    }

    // GraphQL: the body as JSON, form and a bare document, and a built request.
    let ops = default_graphql_ops();
    let mut docs: Vec<(BodyKind, Vec<u8>)> =
        [BodyKind::Json, BodyKind::Form, BodyKind::GraphqlText]
            .into_iter()
            .map(|k| (k, input.body.to_vec()))
            .collect();
    if let Some((query, vars)) = &input.graphql {
        let variables: serde_json::Map<String, Value> = vars
            .iter()
            .take(4)
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::json!({ "email": v, "phone": v, "password": v }),
                )
            })
            .collect();
        let doc = serde_json::json!({ "query": query, "variables": variables });
        docs.push((BodyKind::Json, doc.to_string().into_bytes()));
    }
    for (k, body) in &docs {
        if let Ok(calls) = extract::graphql::calls(*k, body, &ops) {
            for call in calls {
                if let Ok(f) = extract::facts(&call.args, &call.op.fields, Normalize::default()) {
                    check_facts(&f);
                }
                // The operation found is named in the body.
                let text = String::from_utf8_lossy(body);
                assert!(text.contains(call.op.name));
            }
        }
    }
});
