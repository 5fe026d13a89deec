//! The `authing` source: Authing's management API, called the way the official
//! SDKs call it.
//!
//! - Token: GraphQL `accessToken(userPoolId, secret)` on `/graphql/v2`
//!   (authing-js-sdk `ManagementTokenProvider.ts`, authing-go-sdk), cached and
//!   renewed when less than `token_renew_before` remains before `exp`, as the
//!   SDKs do with one hour.
//! - Pool: `GET /api/v2/userpools/detail` with `Authorization: Bearer` and
//!   `x-authing-userpool-id` (seed 002).
//! - Whitelist: GraphQL `whitelist(type: USERNAME|EMAIL|PHONE) { value }`, only
//!   for the kinds the pool restricts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{Fetched, SourceError};
use crate::config::{AuthingSourceConfig, Secret};
use crate::metrics::Metrics;
use crate::policy::{PoolDetail, WhitelistEntries};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest management API answer read.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

const TOKEN_QUERY: &str = "query accessToken($userPoolId: String!, $secret: String!) {\n  accessToken(userPoolId: $userPoolId, secret: $secret) {\n    accessToken\n    exp\n    iat\n  }\n}";
const WHITELIST_QUERY: &str = "query whitelist($type: WhitelistType!) {\n  whitelist(type: $type) {\n    createdAt\n    updatedAt\n    value\n  }\n}";

/// A management token and when it stops being valid.
struct Token {
    value: String,
    expires_at: Option<SystemTime>,
}

/// Fetches the pool from Authing's management API.
pub struct AuthingSource {
    client: HttpsClient,
    base: String,
    pool_id: String,
    secret: Secret,
    timeout: Duration,
    renew_before: Duration,
    token: Option<Token>,
    metrics: Metrics,
}

/// Builds the HTTP(S) client used for management calls (ring-based rustls, webpki roots).
pub fn https_client(connect_timeout: Duration) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(tls)
}

#[derive(Deserialize)]
struct GraphqlResponse<T> {
    data: Option<T>,
    #[serde(default)]
    errors: Option<Vec<GraphqlError>>,
}

#[derive(Deserialize)]
struct GraphqlError {
    #[serde(default)]
    message: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessTokenData {
    access_token: Option<AccessToken>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessToken {
    access_token: String,
    exp: Option<i64>,
}

#[derive(Deserialize)]
struct WhitelistData {
    whitelist: Option<serde_json::Value>,
}

impl AuthingSource {
    /// A source for the configured pool. The secret must have been loaded.
    pub fn new(cfg: &AuthingSourceConfig, metrics: Metrics) -> Result<Self, anyhow::Error> {
        let secret = cfg.secret.clone().ok_or_else(|| {
            anyhow::anyhow!("the Authing pool secret is missing: set {}", cfg.secret_env)
        })?;
        Ok(AuthingSource {
            client: https_client(cfg.timeout),
            base: cfg.api_base.trim_end_matches('/').to_string(),
            pool_id: cfg.user_pool_id.clone(),
            secret,
            timeout: cfg.timeout,
            renew_before: cfg.token_renew_before,
            token: None,
            metrics,
        })
    }

    /// Fetches the pool detail and the whitelist entries it needs.
    pub async fn fetch(&mut self) -> Result<Fetched, SourceError> {
        match self.fetch_once().await {
            // A revoked or expired token: get a new one and try once more.
            Err(SourceError::Unauthorized(_)) if self.token.is_some() => {
                tracing::warn!("management token refused; requesting a new one");
                self.token = None;
                self.fetch_once().await
            }
            other => other,
        }
    }

    async fn fetch_once(&mut self) -> Result<Fetched, SourceError> {
        let token = self.token().await?;
        let (status, body) = self
            .call(
                Method::GET,
                "/api/v2/userpools/detail",
                Some(&token),
                None,
                "pool detail",
            )
            .await?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(SourceError::Unauthorized(format!(
                "pool detail: HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(SourceError::Status {
                what: "pool detail",
                status: status.as_u16(),
            });
        }
        let pool = PoolDetail::from_json(&body).map_err(|e| match e {
            crate::policy::model::ParseError::Api { code, message } if is_auth_code(code) => {
                SourceError::Unauthorized(format!("pool detail: code {code}: {message}"))
            }
            crate::policy::model::ParseError::Api { code, message } => SourceError::Api {
                what: "pool detail",
                code,
                message,
            },
            other => SourceError::Parse {
                what: "pool detail".into(),
                message: other.to_string(),
            },
        })?;
        let mut whitelist = WhitelistEntries::default();
        let t = &pool.whitelist;
        if t.username_enabled == Some(true) {
            whitelist.username = self.whitelist(&token, "USERNAME").await?;
        }
        if t.email_enabled == Some(true) {
            whitelist.email = self.whitelist(&token, "EMAIL").await?;
        }
        if t.phone_enabled == Some(true) {
            whitelist.phone = self.whitelist(&token, "PHONE").await?;
        }
        Ok(Fetched { pool, whitelist })
    }

    /// A valid management token, renewed when close to expiry.
    async fn token(&mut self) -> Result<String, SourceError> {
        if let Some(t) = &self.token {
            let fresh = t
                .expires_at
                .is_none_or(|exp| exp > SystemTime::now() + self.renew_before);
            if fresh {
                return Ok(t.value.clone());
            }
        }
        let body = serde_json::json!({
            "query": TOKEN_QUERY,
            "variables": { "userPoolId": self.pool_id, "secret": self.secret.expose() },
        });
        let result = self.graphql::<AccessTokenData>(None, body, "token").await;
        let token = match result {
            Ok(AccessTokenData {
                access_token: Some(t),
            }) if !t.access_token.is_empty() => t,
            Ok(_) => {
                self.metrics
                    .token_renewals
                    .with_label_values(&["failed"])
                    .inc();
                return Err(SourceError::Parse {
                    what: "token".into(),
                    message: "no accessToken in the answer".into(),
                });
            }
            Err(e) => {
                self.metrics
                    .token_renewals
                    .with_label_values(&["failed"])
                    .inc();
                // Any refusal of the secret is an authorisation failure.
                return Err(match e {
                    SourceError::Api { code, message, .. } => {
                        SourceError::Unauthorized(format!("token: code {code}: {message}"))
                    }
                    other => other,
                });
            }
        };
        self.metrics.token_renewals.with_label_values(&["ok"]).inc();
        let expires_at = token
            .exp
            .filter(|&e| e > 0)
            .map(|e| UNIX_EPOCH + Duration::from_secs(e as u64));
        // A plain RFC 3339 string (or "none": kept until refused), never a Debug rendering.
        let expiry = expires_at.map_or_else(
            || "none".to_string(),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        );
        tracing::info!(expires_at = %expiry, "obtained a management token");
        let value = token.access_token;
        self.token = Some(Token {
            value: value.clone(),
            expires_at,
        });
        Ok(value)
    }

    async fn whitelist(&self, token: &str, kind: &'static str) -> Result<Vec<String>, SourceError> {
        let body = serde_json::json!({ "query": WHITELIST_QUERY, "variables": { "type": kind } });
        let data: WhitelistData = self.graphql(Some(token), body, "whitelist").await?;
        WhitelistEntries::parse_list(data.whitelist.unwrap_or(serde_json::Value::Null)).map_err(
            |e| SourceError::Parse {
                what: format!("whitelist {kind}"),
                message: e.to_string(),
            },
        )
    }

    async fn graphql<T: for<'de> Deserialize<'de>>(
        &self,
        token: Option<&str>,
        body: serde_json::Value,
        what: &'static str,
    ) -> Result<T, SourceError> {
        let (status, bytes) = self
            .call(
                Method::POST,
                "/graphql/v2",
                token,
                Some(body.to_string()),
                what,
            )
            .await?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(SourceError::Unauthorized(format!("{what}: HTTP {status}")));
        }
        // GraphQL errors often come with HTTP 200; read the body either way.
        let parsed: Result<GraphqlResponse<T>, _> = serde_json::from_slice(&bytes);
        let resp = match parsed {
            Ok(r) => r,
            Err(_) if !status.is_success() => {
                return Err(SourceError::Status {
                    what,
                    status: status.as_u16(),
                })
            }
            Err(e) => {
                return Err(SourceError::Parse {
                    what: what.to_string(),
                    message: format!("not a GraphQL answer: {e}"),
                })
            }
        };
        if let Some(err) = resp.errors.as_ref().and_then(|e| e.first()) {
            let (code, message) = graphql_error(&err.message);
            if is_auth_code(code) {
                return Err(SourceError::Unauthorized(format!(
                    "{what}: code {code}: {message}"
                )));
            }
            return Err(SourceError::Api {
                what,
                code,
                message,
            });
        }
        resp.data.ok_or_else(|| SourceError::Parse {
            what: what.to_string(),
            message: "no data in the GraphQL answer".into(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        what: &'static str,
    ) -> Result<(StatusCode, Bytes), SourceError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("x-authing-userpool-id", &self.pool_id)
            .header("x-authing-request-from", "poolgate")
            .header("x-authing-sdk-version", env!("CARGO_PKG_VERSION"))
            .header(header::ACCEPT, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| SourceError::Connect(format!("bad request to {what}: {e}")))?;
        let work = async {
            let resp =
                self.client.request(req).await.map_err(|e| {
                    SourceError::Connect(format!("{what}: {}", crate::error_chain(&e)))
                })?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| SourceError::Connect(format!("{what}: reading the answer: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| SourceError::Timeout(what))?
    }
}

/// Authing codes that mean "your token or secret is not accepted".
fn is_auth_code(code: i64) -> bool {
    matches!(code, 401 | 403 | 2020 | 2206 | 2207)
}

/// GraphQL errors carry `message: {code, message}` (Authing) or a plain string.
fn graphql_error(v: &serde_json::Value) -> (i64, String) {
    match v {
        serde_json::Value::Object(o) => (
            o.get("code").and_then(|c| c.as_i64()).unwrap_or(500),
            o.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string(),
        ),
        serde_json::Value::String(s) => (500, s.clone()),
        other => (500, other.to_string()),
    }
}
