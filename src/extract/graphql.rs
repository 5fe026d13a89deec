//! The guarded root fields a GraphQL request would execute, read as a
//! GraphQL server reads them.
//!
//! Authing's v2 SDKs call `POST /graphql/v2` with mutations such as
//! `loginByEmail(input: $input)` or `resetPassword(phone: $phone, code: $code,
//! newPassword: $p)`. An attacker controls the spelling of the document, so
//! the gateway judges its *semantics*: whatever the spelling (aliases,
//! fragments, inline literals, variables, batches), every guarded field the
//! server would execute is found, with the arguments the server would see.
//! What cannot be read unambiguously is an [`ExtractError`] and the request
//! is refused: never a free, unjudged attempt.
//!
//! # Rules
//!
//! 1. **Body shapes.** [`BodyKind::Json`]: an object `{query, variables,
//!    operationName, extensions}` or a non-empty array of such objects (a
//!    batch; [`GraphqlCall::batch_index`] is the element's position).
//!    [`BodyKind::Form`]: the same fields, form-encoded (read by
//!    [`super::parse_body`]). [`BodyKind::GraphqlText`]: the whole body is
//!    the document, without variables. An empty batch, an element that is
//!    not an object, or a missing or non-string `query` (a persisted-query
//!    hash alone cannot be judged) is an error. `variables` may be absent,
//!    `null`, an object, or a string holding a JSON object (as express-graphql
//!    accepts); `operationName` absent, `null` or a string. Anything else is
//!    an error.
//! 2. **Duplicate JSON names** at any depth, variables included (also inside
//!    a stringified `variables`), are [`ExtractError::Malformed`]: Node's
//!    `JSON.parse` keeps the last one and might read another value than the
//!    gateway. JSON nesting deeper than serde_json's limit (128) is an error,
//!    never a stack overflow.
//! 3. **Parsing** is apollo-parser's (spec-compliant), with a recursion limit
//!    of [`RECURSION_LIMIT`] and a token limit of [`TOKEN_LIMIT`]: a document
//!    with a syntax error or over a limit is [`ExtractError::Malformed`].
//!    Only real fields count: a guarded name in a comment, a string or a
//!    block string is not a call. A document in which no guarded name occurs
//!    at all cannot hold a guarded field (GraphQL names have no escapes) and
//!    is answered `Ok(vec![])` without being parsed.
//! 4. **Operation selection** as a server does it: with `operationName`, the
//!    operation of that name; without, the only operation. When that does not
//!    pick exactly one operation, the server executes nothing: an error if
//!    any operation of the document holds a guarded root field, else
//!    `Ok(vec![])`. Queries, mutations and subscriptions all count: fields
//!    are matched by name only.
//! 5. **Root fields** of the selected operation, expanded as the spec's
//!    `CollectFields`: fields, named fragment spreads (each fragment once; an
//!    unknown fragment, a fragment defined twice or a cycle is an error) and
//!    inline fragments with or without a type condition. Directives (`@skip`,
//!    `@include`) are ignored: the field is judged regardless. Fields nested
//!    below a root field are never calls. Each root field whose name equals a
//!    [`GraphqlOp::name`] (exactly, case-sensitive) is one call, in document
//!    order. Fields with the same response key are merged by the server into
//!    one execution: identical ones are one call, different ones an error.
//! 6. **Arguments** become one JSON object `{argName: value}`: `$v` is
//!    `variables.v`, else the operation's default for `$v`, else `null`, also
//!    inside list and object literals; strings are unescaped (block strings
//!    with the spec's indentation stripping); Int and Float literals become
//!    JSON numbers (an integer that fits `u64`/`i64` stays an integer:
//!    `13800138000`; others become `f64`; a literal out of `f64` range is an
//!    error); enums become strings. An argument or an input-object field
//!    given twice is an error: which one would the server read?
//! 7. **Hostile input** costs bounded time and stack: no panic, no unbounded
//!    recursion (fragment nesting is capped at [`RECURSION_LIMIT`] too).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use apollo_parser::cst;
use apollo_parser::Parser;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{BodyKind, ExtractError};
use crate::routes::GraphqlOp;

/// Parser recursion limit (nested selection sets, lists, objects, types), and
/// the cap on nested fragments when expanding a root selection set.
pub const RECURSION_LIMIT: usize = 64;

/// Parser token limit: a larger document is refused before it is parsed.
/// Whitespace, commas and comments count as tokens too: an SDK's login
/// mutation is a few hundred.
pub const TOKEN_LIMIT: usize = 20_000;

/// One guarded root field of a GraphQL request.
#[derive(Debug, Clone)]
pub struct GraphqlCall<'a> {
    /// The guarded operation (matched by field name).
    pub op: &'a GraphqlOp,
    /// Index of the request in a batch (a JSON array body); `None` for a single request object.
    pub batch_index: Option<usize>,
    /// The key the field's result has in the answer's `data` (its alias, else its name).
    pub response_key: String,
    /// The field's arguments as one JSON object {argName: value}: variables substituted
    /// (from `variables`, else the variable's default value, else null), literals converted.
    pub args: Value,
}

/// `GraphqlOp` has no `PartialEq`: two calls' operations are equal when they
/// have the same name and kind (names are unique in a route table).
impl PartialEq for GraphqlCall<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.op.name == other.op.name
            && self.op.kind == other.op.kind
            && self.batch_index == other.batch_index
            && self.response_key == other.response_key
            && self.args == other.args
    }
}

/// Every guarded root field a GraphQL request body would execute. `Ok(vec![])`: nothing guarded.
pub fn calls<'a>(
    kind: BodyKind,
    body: &[u8],
    ops: &'a [GraphqlOp],
) -> Result<Vec<GraphqlCall<'a>>, ExtractError> {
    match kind {
        BodyKind::Json => match strict_json(body)? {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(ExtractError::Graphql("an empty batch"));
                }
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.extend(request(item, Some(i), ops)?);
                }
                Ok(out)
            }
            req @ Value::Object(_) => request(&req, None, ops),
            _ => Err(ExtractError::Graphql(
                "the body is neither a request object nor a batch of them",
            )),
        },
        BodyKind::Form => request(&super::parse_body(BodyKind::Form, body)?, None, ops),
        BodyKind::GraphqlText => {
            let query = std::str::from_utf8(body)
                .map_err(|_| ExtractError::Malformed("GraphQL document is not UTF-8".into()))?;
            document(query, None, &Map::new(), None, ops)
        }
    }
}

/// One request object `{query, variables, operationName, extensions}`.
fn request<'a>(
    req: &Value,
    batch_index: Option<usize>,
    ops: &'a [GraphqlOp],
) -> Result<Vec<GraphqlCall<'a>>, ExtractError> {
    let Value::Object(req) = req else {
        return Err(ExtractError::Graphql("a batch element is not an object"));
    };
    let query = match req.get("query") {
        Some(Value::String(q)) => q,
        Some(_) => return Err(ExtractError::Graphql("query is not a string")),
        None => {
            return Err(ExtractError::Graphql(
                "no query (a persisted query alone cannot be judged)",
            ))
        }
    };
    let variables = match req.get("variables") {
        None | Some(Value::Null) => Cow::Owned(Map::new()),
        Some(Value::Object(m)) => Cow::Borrowed(m),
        // express-graphql parses a string; so must we.
        Some(Value::String(s)) => match strict_json(s.as_bytes())? {
            Value::Object(m) => Cow::Owned(m),
            _ => return Err(ExtractError::Graphql("variables is not an object")),
        },
        Some(_) => return Err(ExtractError::Graphql("variables is not an object")),
    };
    let operation_name = match req.get("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ExtractError::Graphql("operationName is not a string")),
    };
    document(query, operation_name, &variables, batch_index, ops)
}

fn syntax(what: &str) -> ExtractError {
    ExtractError::Malformed(format!("GraphQL document: {what}"))
}

/// The guarded calls of one document.
fn document<'a>(
    query: &str,
    operation_name: Option<&str>,
    variables: &Map<String, Value>,
    batch_index: Option<usize>,
    ops: &'a [GraphqlOp],
) -> Result<Vec<GraphqlCall<'a>>, ExtractError> {
    // A name cannot be escaped or split: without the text, there is no field.
    if !ops.iter().any(|op| query.contains(op.name)) {
        return Ok(Vec::new());
    }
    let tree = Parser::new(query)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if let Some(e) = tree.errors().next() {
        return Err(ExtractError::Malformed(format!(
            "GraphQL syntax error at byte {}: {}",
            e.index(),
            e.message()
        )));
    }
    // Limits reached at the end of input may leave no error behind.
    if tree.recursion_limit().high > RECURSION_LIMIT || tree.token_limit().high > TOKEN_LIMIT {
        return Err(syntax("over the parser's limits"));
    }

    let mut operations = Vec::new();
    let mut fragments = HashMap::new();
    for def in tree.document().definitions() {
        match def {
            cst::Definition::OperationDefinition(op) => operations.push(op),
            cst::Definition::FragmentDefinition(f) => {
                let name = f
                    .fragment_name()
                    .and_then(|n| n.name())
                    .ok_or_else(|| syntax("a fragment without a name"))?;
                if fragments.insert(name.text().to_string(), f).is_some() {
                    return Err(ExtractError::Graphql("a fragment is defined twice"));
                }
            }
            // Type system definitions are not executable (the server refuses
            // the document); they hold no calls.
            _ => {}
        }
    }
    let doc = Doc { ops, fragments };

    let mut selected = operations.iter().filter(|op| match operation_name {
        Some(wanted) => op.name().is_some_and(|n| n.text() == wanted),
        None => true,
    });
    let (Some(op), None) = (selected.next(), selected.next()) else {
        // The server executes nothing; refuse if the spelling hides a guarded field.
        let mut memo = HashMap::new();
        for op in &operations {
            let Some(set) = op.selection_set() else {
                continue;
            };
            if doc.holds_guarded(&set, 0, &mut memo, &mut Vec::new())? {
                return Err(ExtractError::Graphql(
                    "the operation to execute is ambiguous or missing, and the document holds a guarded field",
                ));
            }
        }
        return Ok(Vec::new());
    };

    let mut defaults = HashMap::new();
    if let Some(defs) = op.variable_definitions() {
        for def in defs.variable_definitions() {
            let name = def
                .variable()
                .and_then(|v| v.name())
                .ok_or_else(|| syntax("a variable without a name"))?;
            if let Some(value) = def.default_value().and_then(|d| d.value()) {
                defaults.insert(name.text().to_string(), value);
            }
        }
    }
    let vars = Vars {
        given: variables,
        defaults: &defaults,
    };

    let mut out: Vec<GraphqlCall<'a>> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for (guarded, field) in doc.root_fields(op)? {
        let name = field
            .name()
            .ok_or_else(|| syntax("a field without a name"))?;
        let response_key = match field.alias().and_then(|a| a.name()) {
            Some(alias) => alias.text().to_string(),
            None => name.text().to_string(),
        };
        let args = arguments(&field, &vars)?;
        // Same response key: the server merges the fields into one execution
        // (and refuses the document if they differ).
        if let Some(seen) = by_key.get(&response_key).and_then(|&i| out.get(i)) {
            if seen.op.name == guarded.name && seen.args == args {
                continue;
            }
            return Err(ExtractError::Graphql(
                "two different fields answer under one response key",
            ));
        }
        by_key.insert(response_key.clone(), out.len());
        out.push(GraphqlCall {
            op: guarded,
            batch_index,
            response_key,
            args,
        });
    }
    Ok(out)
}

/// A parsed document's guarded operations and fragments.
struct Doc<'a> {
    ops: &'a [GraphqlOp],
    fragments: HashMap<String, cst::FragmentDefinition>,
}

impl<'a> Doc<'a> {
    /// The guarded root fields of an operation, in document order.
    fn root_fields(
        &self,
        op: &cst::OperationDefinition,
    ) -> Result<Vec<(&'a GraphqlOp, cst::Field)>, ExtractError> {
        let mut out = Vec::new();
        if let Some(set) = op.selection_set() {
            let mut visited = HashSet::new();
            let mut path = Vec::new();
            self.collect(&set, 0, &mut visited, &mut path, &mut out)?;
        }
        Ok(out)
    }

    /// The guarded operation a field calls, if any (by exact name).
    fn guarded_op(&self, field: &cst::Field) -> Result<Option<&'a GraphqlOp>, ExtractError> {
        let name = field
            .name()
            .ok_or_else(|| syntax("a field without a name"))?;
        let name = name.text();
        Ok(self.ops.iter().find(|op| op.name == name.as_str()))
    }

    /// The fragment a spread names, with its name. Spreading a fragment that
    /// is being expanded (in `path`) is a cycle; naming none is an error.
    fn spread_target(
        &self,
        spread: &cst::FragmentSpread,
        path: &[String],
    ) -> Result<(String, &cst::FragmentDefinition), ExtractError> {
        let name = spread
            .fragment_name()
            .and_then(|n| n.name())
            .ok_or_else(|| syntax("a fragment spread without a name"))?;
        let name = name.text().to_string();
        if path.contains(&name) {
            return Err(ExtractError::Graphql("a fragment spreads itself (cycle)"));
        }
        let fragment = self
            .fragments
            .get(&name)
            .ok_or(ExtractError::Graphql("a fragment spread names no fragment"))?;
        Ok((name, fragment))
    }

    /// Whether a selection set holds a guarded root field, through fragments
    /// (each fragment's answer is kept in `memo`: linear over all operations).
    fn holds_guarded(
        &self,
        set: &cst::SelectionSet,
        depth: usize,
        memo: &mut HashMap<String, bool>,
        path: &mut Vec<String>,
    ) -> Result<bool, ExtractError> {
        if depth > RECURSION_LIMIT {
            return Err(ExtractError::Graphql("fragments nested too deep"));
        }
        for selection in set.selections() {
            let found = match selection {
                cst::Selection::Field(field) => self.guarded_op(&field)?.is_some(),
                cst::Selection::FragmentSpread(spread) => {
                    let (name, fragment) = self.spread_target(&spread, path)?;
                    match memo.get(&name) {
                        Some(&known) => known,
                        None => {
                            let found = match fragment.selection_set() {
                                Some(inner) => {
                                    path.push(name.clone());
                                    let found =
                                        self.holds_guarded(&inner, depth + 1, memo, path)?;
                                    path.pop();
                                    found
                                }
                                None => false,
                            };
                            memo.insert(name, found);
                            found
                        }
                    }
                }
                cst::Selection::InlineFragment(inline) => match inline.selection_set() {
                    Some(inner) => self.holds_guarded(&inner, depth + 1, memo, path)?,
                    None => false,
                },
            };
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The spec's `CollectFields`, keeping the guarded fields. `path` is the
    /// chain of fragments being expanded (a cycle), `visited` those already
    /// expanded (the spec expands each once).
    fn collect(
        &self,
        set: &cst::SelectionSet,
        depth: usize,
        visited: &mut HashSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<(&'a GraphqlOp, cst::Field)>,
    ) -> Result<(), ExtractError> {
        if depth > RECURSION_LIMIT {
            return Err(ExtractError::Graphql("fragments nested too deep"));
        }
        for selection in set.selections() {
            match selection {
                cst::Selection::Field(field) => {
                    if let Some(op) = self.guarded_op(&field)? {
                        out.push((op, field));
                    }
                }
                cst::Selection::FragmentSpread(spread) => {
                    let (name, fragment) = self.spread_target(&spread, path)?;
                    if !visited.insert(name.clone()) {
                        continue;
                    }
                    if let Some(inner) = fragment.selection_set() {
                        path.push(name);
                        self.collect(&inner, depth + 1, visited, path, out)?;
                        path.pop();
                    }
                }
                cst::Selection::InlineFragment(inline) => {
                    if let Some(inner) = inline.selection_set() {
                        self.collect(&inner, depth + 1, visited, path, out)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The variables a value may refer to.
struct Vars<'v> {
    given: &'v Map<String, Value>,
    defaults: &'v HashMap<String, cst::Value>,
}

/// A field's arguments as one object.
fn arguments(field: &cst::Field, vars: &Vars<'_>) -> Result<Value, ExtractError> {
    let mut map = Map::new();
    if let Some(args) = field.arguments() {
        for arg in args.arguments() {
            let name = arg
                .name()
                .ok_or_else(|| syntax("an argument without a name"))?;
            let value = arg
                .value()
                .ok_or_else(|| syntax("an argument without a value"))?;
            let value = convert(&value, vars, 0)?;
            if map.insert(name.text().to_string(), value).is_some() {
                return Err(ExtractError::Graphql("an argument is given twice"));
            }
        }
    }
    Ok(Value::Object(map))
}

/// A GraphQL value as JSON. `depth` is bounded by the parser's recursion
/// limit already; the check keeps it so whatever the parser does.
fn convert(value: &cst::Value, vars: &Vars<'_>, depth: usize) -> Result<Value, ExtractError> {
    if depth > 2 * RECURSION_LIMIT {
        return Err(syntax("a value nested too deep"));
    }
    Ok(match value {
        cst::Value::Variable(v) => {
            let name = v
                .name()
                .ok_or_else(|| syntax("a variable without a name"))?;
            let name = name.text();
            match (
                vars.given.get(name.as_str()),
                vars.defaults.get(name.as_str()),
            ) {
                (Some(given), _) => given.clone(),
                // Defaults are constants (the parser refuses `$x` in them).
                (None, Some(default)) => convert(default, vars, depth + 1)?,
                (None, None) => Value::Null,
            }
        }
        cst::Value::StringValue(s) => Value::String(String::from(s)),
        cst::Value::IntValue(i) => number(i.int_token())?,
        cst::Value::FloatValue(f) => number(f.float_token())?,
        cst::Value::BooleanValue(b) => Value::Bool(b.true_token().is_some()),
        cst::Value::NullValue(_) => Value::Null,
        cst::Value::EnumValue(e) => {
            let name = e
                .name()
                .ok_or_else(|| syntax("an enum value without a name"))?;
            Value::String(name.text().to_string())
        }
        cst::Value::ListValue(list) => Value::Array(
            list.values()
                .map(|v| convert(&v, vars, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        cst::Value::ObjectValue(object) => {
            let mut map = Map::new();
            for field in object.object_fields() {
                let name = field
                    .name()
                    .ok_or_else(|| syntax("an input field without a name"))?;
                let v = field
                    .value()
                    .ok_or_else(|| syntax("an input field without a value"))?;
                let v = convert(&v, vars, depth + 1)?;
                if map.insert(name.text().to_string(), v).is_some() {
                    return Err(ExtractError::Graphql(
                        "an input object field is given twice",
                    ));
                }
            }
            Value::Object(map)
        }
    })
}

/// An Int or Float literal: an integer that fits `u64`/`i64` stays one,
/// anything else is an `f64`.
fn number(token: Option<apollo_parser::SyntaxToken>) -> Result<Value, ExtractError> {
    let token = token.ok_or_else(|| syntax("a number without digits"))?;
    Number::from_str(token.text())
        .map(Value::Number)
        .map_err(|_| ExtractError::Graphql("a number literal is out of range"))
}

/// Parses JSON into a `Value`, refusing a name given twice in any object.
/// serde_json's recursion limit (128) stays on: a deeper document is an error.
fn strict_json(bytes: &[u8]) -> Result<Value, ExtractError> {
    let duplicate = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| match duplicate.take() {
        Some(name) => ExtractError::Malformed(format!("field {name:?} appears twice")),
        None => ExtractError::Malformed(e.to_string()),
    })
}

/// A `Value` seed that records the first duplicated name it meets.
#[derive(Clone, Copy)]
struct Strict<'s> {
    duplicate: &'s Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                let message = format!("field {name:?} appears twice");
                self.duplicate.set(Some(name));
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(self)?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::default_graphql_ops;
    use serde_json::json;

    /// A call, owned: (operation, batch index, response key, arguments).
    type Call = (&'static str, Option<usize>, String, Value);

    fn run(kind: BodyKind, body: &str) -> Result<Vec<Call>, ExtractError> {
        let ops = default_graphql_ops();
        calls(kind, body.as_bytes(), &ops).map(|calls| {
            calls
                .into_iter()
                .map(|c| (c.op.name, c.batch_index, c.response_key, c.args))
                .collect()
        })
    }

    fn json_calls(body: Value) -> Result<Vec<Call>, ExtractError> {
        run(BodyKind::Json, &body.to_string())
    }

    /// The one call of a request, which must be `loginByEmail` of a@x.com.
    fn login_email(body: Value) -> Value {
        let calls = json_calls(body).expect("judged");
        assert_eq!(calls.len(), 1, "{calls:?}");
        let (name, batch, key, args) = calls.into_iter().next().unwrap();
        assert_eq!(
            (name, batch, key.as_str()),
            ("loginByEmail", None, "loginByEmail")
        );
        assert_eq!(args["input"]["email"], "a@x.com", "{args}");
        args
    }

    fn is_graphql_error<T: fmt::Debug>(r: Result<T, ExtractError>) -> bool {
        matches!(r, Err(ExtractError::Graphql(_)))
    }

    fn is_malformed<T: fmt::Debug>(r: Result<T, ExtractError>) -> bool {
        matches!(r, Err(ExtractError::Malformed(_)))
    }

    #[test]
    fn input_variable() {
        login_email(json!({
            "query": "mutation login($input: LoginByEmailInput!) { loginByEmail(input: $input) { id token } }",
            "variables": {"input": {"email": "a@x.com", "password": "pw"}}
        }));
    }

    #[test]
    fn inline_input_object() {
        let args = login_email(json!({
            "query": r#"mutation { loginByEmail(input: {email: "a@x.com", password: "pw", autoRegister: false}) { id } }"#
        }));
        assert_eq!(args["input"]["password"], "pw");
        assert_eq!(args["input"]["autoRegister"], false);
    }

    #[test]
    fn input_object_of_variables() {
        let args = login_email(json!({
            "query": "mutation($e: String!, $p: String!) { loginByEmail(input: {email: $e, password: $p, list: [$p, 1]}) { id } }",
            "variables": {"e": "a@x.com", "p": "pw"}
        }));
        assert_eq!(args["input"]["list"], json!(["pw", 1]));
    }

    #[test]
    fn top_level_argument_variables() {
        let calls = json_calls(json!({
            "query": "mutation r($phone: String, $code: String!, $p: String!) { resetPassword(phone: $phone, code: $code, newPassword: $p) { code message } }",
            "variables": {"phone": "13800138000", "code": "1234", "p": "n3w-Pass"}
        }))
        .unwrap();
        assert_eq!(
            calls,
            vec![(
                "resetPassword",
                None,
                "resetPassword".into(),
                json!({"phone": "13800138000", "code": "1234", "newPassword": "n3w-Pass"})
            )]
        );
    }

    #[test]
    fn top_level_inline_literals() {
        let calls = json_calls(json!({
            "query": r#"mutation { resetPassword(phone: 13800138000, code: "12\u0033\uD83D\uDE00", newPassword: """
                  first
                    second
                """, email: null, ratio: 1.5, big: 1e3, kind: PHONE) { code } }"#
        }))
        .unwrap();
        assert_eq!(calls.len(), 1);
        let args = &calls[0].3;
        assert_eq!(args["phone"], json!(13800138000u64));
        assert!(args["phone"].is_u64(), "an integer stays an integer");
        assert_eq!(args["code"], "123\u{1F600}");
        assert_eq!(args["newPassword"], "first\n  second");
        assert_eq!(args["email"], Value::Null);
        assert_eq!(args["ratio"], json!(1.5));
        assert_eq!(args["big"], json!(1000.0));
        assert_eq!(args["kind"], "PHONE");
        // Past u64: a float. Past f64: refused.
        let big = json_calls(json!({"query": "{ resetPassword(code: 123456789012345678901234) }"}))
            .unwrap();
        assert!(big[0].3["code"].is_f64());
        assert!(is_graphql_error(json_calls(
            json!({"query": "{ resetPassword(code: 1e400) }"})
        )));
    }

    #[test]
    fn aliases() {
        let calls = json_calls(json!({
            "query": r#"mutation { a: loginByEmail(input: {email: "a@x.com", password: "1"}) { id }
                                   b: loginByEmail(input: {email: "a@x.com", password: "2"}) { id }
                                   loginByEmail: updatePassword(newPassword: "n", oldPassword: "o") { id } }"#
        }))
        .unwrap();
        let keys: Vec<_> = calls.iter().map(|c| (c.0, c.2.as_str())).collect();
        assert_eq!(
            keys,
            [
                ("loginByEmail", "a"),
                ("loginByEmail", "b"),
                ("updatePassword", "loginByEmail")
            ]
        );
        assert_eq!(calls[1].3["input"]["password"], "2");
    }

    #[test]
    fn same_response_key_is_merged_or_refused() {
        // The server executes identical fields under one key once.
        let one = json_calls(json!({
            "query": "mutation($i: X) { loginByEmail(input: $i) { id } ...F } fragment F on Mutation { loginByEmail(input: $i) { token } }",
            "variables": {"i": {"email": "a@x.com"}}
        }))
        .unwrap();
        assert_eq!(one.len(), 1);
        // ... and refuses different ones; so do we.
        assert!(is_graphql_error(json_calls(json!({
            "query": r#"mutation { a: loginByEmail(input: {email: "a@x.com"}) { id } a: loginByEmail(input: {email: "b@x.com"}) { id } }"#
        }))));
    }

    #[test]
    fn named_fragments() {
        login_email(json!({
            "query": "mutation($i: I) { ...Login } fragment Login on Mutation { loginByEmail(input: $i) { ...User } } fragment User on User { id }",
            "variables": {"i": {"email": "a@x.com"}}
        }));
        // Nested fragments, each spread once even if named twice.
        login_email(json!({
            "query": "fragment Inner on Mutation { loginByEmail(input: $i) { id } }
                      mutation($i: I) { ...Outer ...Inner }
                      fragment Outer on Mutation { ... on Mutation { ...Inner } }",
            "variables": {"i": {"email": "a@x.com"}}
        }));
    }

    #[test]
    fn inline_fragments() {
        login_email(json!({
            "query": "mutation($i: I) { ... on Mutation { loginByEmail(input: $i) { id } } }",
            "variables": {"i": {"email": "a@x.com"}}
        }));
        login_email(json!({
            "query": "mutation($i: I) { ... @include(if: false) { ... { loginByEmail(input: $i) @skip(if: true) { id } } } }",
            "variables": {"i": {"email": "a@x.com"}}
        }));
    }

    #[test]
    fn variable_defaults() {
        login_email(json!({
            "query": r#"mutation($i: I = {email: "a@x.com", password: "pw"}) { loginByEmail(input: $i) { id } }"#
        }));
        // Given wins over default; absent without default is null; given null stays null.
        let calls = json_calls(json!({
            "query": r#"mutation($p: String = "def", $c: String = "def", $e: String) { resetPassword(phone: $p, code: $c, email: $e) { code } }"#,
            "variables": {"p": "given", "c": null}
        }))
        .unwrap();
        assert_eq!(
            calls[0].3,
            json!({"phone": "given", "code": null, "email": null})
        );
    }

    #[test]
    fn stringified_variables() {
        login_email(json!({
            "query": "mutation($input: I) { loginByEmail(input: $input) { id } }",
            "variables": "{\"input\": {\"email\": \"a@x.com\"}}"
        }));
        for bad in [json!("[1]"), json!("{"), json!(5), json!([])] {
            let r = json_calls(json!({"query": "{ loginByEmail(input: $i) }", "variables": bad}));
            assert!(r.is_err(), "{bad}");
        }
        assert!(is_malformed(json_calls(json!({
            "query": "{ loginByEmail(input: $i) }",
            "variables": "{\"i\": 1, \"i\": 2}"
        }))));
    }

    #[test]
    fn form_body() {
        let body = "query=mutation(%24input%3A+I)+%7B+loginByEmail(input%3A+%24input)+%7B+id+%7D+%7D\
                    &variables=%7B%22input%22%3A%7B%22email%22%3A%22a%40x.com%22%7D%7D&operationName=";
        let calls = run(BodyKind::Form, body);
        // operationName "" names no operation: ambiguous and guarded.
        assert!(is_graphql_error(calls));
        let body = body.trim_end_matches("&operationName=");
        let calls = run(BodyKind::Form, body).unwrap();
        assert_eq!(calls[0].3["input"]["email"], "a@x.com");
        assert!(run(BodyKind::Form, "query=a&query=b").is_err());
    }

    #[test]
    fn application_graphql_body() {
        let calls = run(
            BodyKind::GraphqlText,
            r#"mutation { loginByEmail(input: {email: "a@x.com"}) { id } }"#,
        )
        .unwrap();
        assert_eq!(calls[0].3["input"]["email"], "a@x.com");
        // No variables: a variable reads as null.
        let calls = run(
            BodyKind::GraphqlText,
            "mutation { loginByEmail(input: $i) { id } }",
        )
        .unwrap();
        assert_eq!(calls[0].3, json!({"input": null}));
    }

    #[test]
    fn batch() {
        let calls = json_calls(json!([
            {"query": "mutation($i: I) { first: loginByEmail(input: $i) { id } }", "variables": {"i": {"email": "a@x.com"}}},
            {"query": "query { user { id loginByEmail } }"},
            {"query": r#"mutation { resetPassword(email: "a@x.com", code: "1", newPassword: "p") { code } }"#}
        ]))
        .unwrap();
        let got: Vec<_> = calls.iter().map(|c| (c.0, c.1, c.2.as_str())).collect();
        assert_eq!(
            got,
            [
                ("loginByEmail", Some(0), "first"),
                ("resetPassword", Some(2), "resetPassword")
            ]
        );
        assert_eq!(calls[0].3["input"]["email"], "a@x.com");
        assert_eq!(calls[1].3["email"], "a@x.com");
        // An empty batch, a non-object element, a missing query: cannot be judged.
        assert!(is_graphql_error(json_calls(json!([]))));
        assert!(is_graphql_error(json_calls(json!([{"query": "{ a }"}, 5]))));
        assert!(is_graphql_error(json_calls(
            json!([{"extensions": {"persistedQuery": {"sha256Hash": "ab"}}}])
        )));
        assert!(is_graphql_error(json_calls(json!({"query": 1}))));
        assert!(is_graphql_error(json_calls(json!("query"))));
        assert!(is_graphql_error(json_calls(
            json!({"query": "{ a }", "operationName": 1})
        )));
    }

    #[test]
    fn operation_name_selects() {
        let two = |name: Value| {
            json_calls(json!({
                "query": r#"query Me { user { id } } mutation Login { loginByEmail(input: {email: "a@x.com"}) { id } }"#,
                "operationName": name
            }))
        };
        assert!(two(json!("Me")).unwrap().is_empty());
        assert_eq!(two(json!("Login")).unwrap()[0].0, "loginByEmail");
        // No name, or one that picks nothing: the document hides a guarded field.
        assert!(is_graphql_error(two(Value::Null)));
        assert!(is_graphql_error(two(json!("Other"))));
        // Two operations of the same name: ambiguous.
        assert!(is_graphql_error(json_calls(json!({
            "query": r#"mutation A { user } mutation A { loginByEmail(input: {}) { id } }"#,
            "operationName": "A"
        }))));
    }

    #[test]
    fn several_operations_without_a_name() {
        assert!(is_graphql_error(json_calls(json!({
            "query": r#"query A { user { id } } subscription B { ...F } fragment F on S { loginByEmail(input: {}) { id } }"#
        }))));
        // Nothing guarded anywhere: nothing to judge (the server refuses it).
        assert!(json_calls(json!({
            "query": "query A { user { loginByEmail } } query B { me { id } }"
        }))
        .unwrap()
        .is_empty());
        // Any operation type counts.
        assert_eq!(
            json_calls(json!({"query": "subscription { loginByEmail(input: {}) }"}))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            json_calls(json!({"query": "{ loginByEmail(input: {}) }"}))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn many_operations_sharing_a_fragment_are_linear() {
        let start = std::time::Instant::now();
        let mut q = String::new();
        for i in 0..600 {
            q.push_str(&format!("query Q{i} {{ ...F }} "));
        }
        q.push_str("fragment F on Query { user { loginByEmail } ");
        q.push_str(&"a ".repeat(4000));
        q.push('}');
        assert!(json_calls(json!({"query": q.clone()})).unwrap().is_empty());
        q.push_str(" query Last { ...G } fragment G on Query { ...F loginByEmail }");
        assert!(is_graphql_error(json_calls(json!({"query": q}))));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn names_in_comments_and_strings_are_not_calls() {
        let q = "# loginByEmail(input: $i)\nquery { user(note: \"loginByEmail\", doc: \"\"\"\n loginByEmail(input: {}) \"\"\") { id } }";
        assert!(json_calls(json!({"query": q})).unwrap().is_empty());
        assert!(
            json_calls(json!({"query": "query loginByEmail { me { id } }"}))
                .unwrap()
                .is_empty()
        );
        assert!(json_calls(
            json!({"query": "{ ...loginByEmail } fragment loginByEmail on Query { me }"})
        )
        .unwrap()
        .is_empty());
        // Case matters, as in GraphQL.
        assert!(json_calls(json!({"query": "{ LoginByEmail(input: {}) }"}))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn nested_fields_are_not_calls() {
        assert!(json_calls(json!({
            "query": r#"mutation { wrapper { loginByEmail(input: {email: "a@x.com"}) { id } } }"#
        }))
        .unwrap()
        .is_empty());
    }

    #[test]
    fn duplicate_json_names() {
        let top =
            r#"{"query": "{ user }", "query": "mutation { loginByEmail(input: $i) { id } }"}"#;
        match run(BodyKind::Json, top) {
            Err(ExtractError::Malformed(m)) => assert_eq!(m, "field \"query\" appears twice"),
            other => panic!("{other:?}"),
        }
        let inner = r#"{"query": "mutation($i: I) { loginByEmail(input: $i) { id } }",
                        "variables": {"i": {"email": "a@x.com", "email": "b@x.com"}}}"#;
        match run(BodyKind::Json, inner) {
            Err(ExtractError::Malformed(m)) => assert_eq!(m, "field \"email\" appears twice"),
            other => panic!("{other:?}"),
        }
        // Also where no guarded field would read it, and in a batch element.
        assert!(is_malformed(run(
            BodyKind::Json,
            r#"[{"query": "{ a }", "extensions": {"x": 1, "x": 1}}]"#
        )));
    }

    #[test]
    fn duplicate_arguments() {
        assert!(is_graphql_error(json_calls(json!({
            "query": r#"mutation { resetPassword(email: "a@x.com", email: "b@x.com", code: "1") { code } }"#
        }))));
        assert!(is_graphql_error(json_calls(json!({
            "query": r#"mutation { loginByEmail(input: {email: "a@x.com", email: "b@x.com"}) { id } }"#
        }))));
    }

    #[test]
    fn fragment_errors() {
        let cycle = "mutation { ...A } fragment A on Mutation { ...B } fragment B on Mutation { loginByEmail(input: {}) ...A }";
        assert!(is_graphql_error(json_calls(json!({"query": cycle}))));
        let self_cycle =
            "mutation { ...A } fragment A on Mutation { loginByEmail(input: {}) ...A }";
        assert!(is_graphql_error(json_calls(json!({"query": self_cycle}))));
        let unknown = "mutation { loginByEmail(input: {}) ...Missing }";
        assert!(is_graphql_error(json_calls(json!({"query": unknown}))));
        let twice = "mutation { ...A } fragment A on M { loginByEmail } fragment A on M { me }";
        assert!(is_graphql_error(json_calls(json!({"query": twice}))));
        // A long chain of fragments is bounded, not a stack overflow.
        let mut chain = String::from("mutation { ...F0 }");
        for i in 0..200 {
            chain.push_str(&format!(" fragment F{i} on M {{ ...F{} }}", i + 1));
        }
        chain.push_str(" fragment F200 on M { loginByEmail(input: {}) }");
        assert!(is_graphql_error(json_calls(json!({"query": chain}))));
        // A wide fan-out is expanded once per fragment: linear time.
        let mut fan = String::from("mutation { ...F0 }");
        for i in 0..40 {
            let n = i + 1;
            fan.push_str(&format!(
                " fragment F{i} on M {{ ...F{n} ...F{n} ...F{n} }}"
            ));
        }
        fan.push_str(" fragment F40 on M { loginByEmail(input: {}) }");
        assert_eq!(json_calls(json!({"query": fan})).unwrap().len(), 1);
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "mutation { loginByEmail(input: {email: \"a@x.com\") { id } }",
            "mutation { loginByEmail(input: \"\\x\") }",
            "mutation { loginByEmail(input: \"\\uD800\") }",
            "mutation { loginByEmail(input: $) }",
            "mutation { loginByEmail",
            "loginByEmail",
        ] {
            assert!(is_malformed(json_calls(json!({"query": bad}))), "{bad}");
        }
        assert!(is_malformed(run(
            BodyKind::Json,
            r#"{"query": "{ loginByEmail }"} x"#
        )));
        assert!(is_malformed(calls_bytes(
            BodyKind::GraphqlText,
            b"{ loginByEmail \xff }"
        )));
        // Nested deeper than the recursion limit.
        let deep = format!(
            "{{ loginByEmail(input: {}1{}) }}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(is_malformed(json_calls(json!({"query": deep}))));
        let deep = format!("{}loginByEmail{}", "{ a ".repeat(100), "}".repeat(100));
        assert!(is_malformed(json_calls(json!({"query": deep}))));
    }

    fn calls_bytes(kind: BodyKind, body: &[u8]) -> Result<usize, ExtractError> {
        let ops = default_graphql_ops();
        calls(kind, body, &ops).map(|c| c.len())
    }

    #[test]
    fn deep_json_is_an_error_not_a_crash() {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let deep = format!(
                r#"{{"query": "{{ loginByEmail(input: $i) }}", "variables": {{"i": {}1{}}}}}"#,
                open.repeat(10_000),
                close.repeat(10_000)
            );
            assert!(is_malformed(run(BodyKind::Json, &deep)));
            let unclosed = format!(r#"{{"variables": {}"#, open.repeat(10_000));
            assert!(is_malformed(run(BodyKind::Json, &unclosed)));
        }
        // Also inside a stringified variables value.
        let inner = format!(r#"{{"i": {}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert!(is_malformed(json_calls(
            json!({"query": "{ loginByEmail(input: $i) }", "variables": inner})
        )));
    }

    #[test]
    fn a_large_document_is_bounded() {
        let start = std::time::Instant::now();
        let mut q = String::from("query { ");
        while q.len() < 1 << 20 {
            q.push_str("loginByEmail(input: {email: \"a@x.com\"}) { id } ");
        }
        q.push('}');
        assert!(is_malformed(json_calls(json!({"query": q}))));
        // A large comment or string is one token: parsed, linear.
        let q = format!(
            "# {}\nmutation {{ loginByEmail(input: {{email: \"a@x.com\", pad: \"{}\"}}) {{ id }} }}",
            "x".repeat(1 << 20),
            "y".repeat(1 << 20)
        );
        assert_eq!(json_calls(json!({"query": q})).unwrap().len(), 1);
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn nothing_guarded_is_not_parsed() {
        // No guarded name in the text: no call, whatever the syntax.
        assert!(json_calls(json!({"query": "{ user { id "}))
            .unwrap()
            .is_empty());
        assert!(run(BodyKind::GraphqlText, "query { me { id } }")
            .unwrap()
            .is_empty());
    }
}
