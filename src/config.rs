//! Configuration: the TOML file, environment overrides and validation.
//!
//! Everything that can be wrong with a configuration is reported here, once,
//! at start-up, with the offending key named; the rest of the gateway works on
//! a [`Config`] that is known to be coherent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use http::Uri;
use ipnet::IpNet;
use serde::Deserialize;

/// Environment variable that carries the Authing user pool secret by default.
pub const DEFAULT_SECRET_ENV: &str = "POOLGATE_AUTHING_SECRET";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and client-facing limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The login service poolgate protects.
    pub upstream: UpstreamConfig,
    /// Where the pool policy comes from and how it is kept fresh.
    pub policy: PolicyConfig,
    /// Log output.
    #[serde(default)]
    pub log: LogConfig,
    /// Enforcement settings that are not part of the pool policy.
    #[serde(default)]
    pub guards: GuardsConfig,
    /// Per-IP rate limits by route class.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Extra routes for a team's own login service (docs/enforcement.md, the route table).
    #[serde(default)]
    pub routes: Vec<crate::routes::Route>,
    /// Where the guards' counters and captchas live.
    #[serde(default)]
    pub store: StoreConfig,
    /// Who draws and checks the captcha: poolgate's own image, or a
    /// third-party challenge verified with the provider's siteverify API.
    #[serde(default)]
    pub captcha: crate::captcha::provider::CaptchaConfig,
    /// Authentication of the admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
}

/// Environment variable holding the admin token; wins over `[admin] token`.
pub const ADMIN_TOKEN_ENV: &str = "POOLGATE_ADMIN_TOKEN";

/// Shortest admin token accepted: a guessable token is no protection.
pub const ADMIN_TOKEN_MIN_LEN: usize = 16;

/// Authentication of the admin listener (see docs/admin.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/unblock`, `/counters`, `/policy` (and `/metrics`
    /// with `protect_metrics`). `POOLGATE_ADMIN_TOKEN` wins over it.
    pub token: Option<Secret>,
    /// Require the token for `/metrics` too.
    pub protect_metrics: bool,
}

/// Enforcement settings that are not part of the pool policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardsConfig {
    /// Shadow mode for every guard: log and count what would be rejected, forward anyway.
    pub dry_run: bool,
    /// Shadow mode for the named guards only (names: docs/configuration.md); an
    /// unknown name fails to load, naming the known ones.
    pub dry_run_guards: Vec<crate::guards::Guard>,
    /// Largest guarded request body read; larger ones get 413.
    pub inspect_body_bytes: usize,
    /// Largest login/registration answer read to learn its outcome.
    pub inspect_response_bytes: usize,
    /// Hard cap on keys tracked by each counter.
    pub max_tracked_keys: usize,
    /// IPv6 clients are counted by this prefix length.
    pub ipv6_prefix: u8,
    /// How long an issued captcha stays valid.
    #[serde(with = "humantime_serde")]
    pub captcha_ttl: Duration,
    /// Most captchas outstanding at once.
    pub max_captchas: usize,
    /// How often expired counters and captchas are evicted.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Use only `[[routes]]` from this file, not the built-in Authing table.
    pub replace_default_routes: bool,
    /// Region (ISO 3166 code) of phone numbers written without a country
    /// code: they are counted and whitelisted as E.164 numbers of this region.
    pub phone_default_region: String,
    /// Limits on sending one-time codes (SMS, e-mail): per client and per recipient.
    pub send_code: SendCodeConfig,
    /// `SameSite` of the v2 captcha cookie: `lax`, `strict`, or `none` (for a
    /// login page on another site than the gateway; implies `Secure`).
    pub captcha_cookie_samesite: SameSite,
}

/// A cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// Sent on top-level navigations from other sites, not on their requests.
    #[default]
    Lax,
    /// Never sent from another site.
    Strict,
    /// Sent from every site (the cookie must then be `Secure`).
    None,
}

impl SameSite {
    /// The attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// Limits on sending one-time codes, so the gateway stops SMS pumping: codes
/// sent (and sends in flight) per client and per recipient within a window.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SendCodeConfig {
    /// Codes one client may have sent per window (0 turns the limit off).
    pub per_client: u32,
    /// Codes one phone number or e-mail address may be sent per window (0: off).
    pub per_recipient: u32,
    /// The window both limits count in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for SendCodeConfig {
    fn default() -> Self {
        SendCodeConfig {
            per_client: 20,
            per_recipient: 5,
            window: Duration::from_secs(3600),
        }
    }
}

impl Default for GuardsConfig {
    fn default() -> Self {
        GuardsConfig {
            dry_run: false,
            dry_run_guards: Vec::new(),
            inspect_body_bytes: 64 * 1024,
            inspect_response_bytes: 256 * 1024,
            max_tracked_keys: 1_000_000,
            ipv6_prefix: 64,
            captcha_ttl: Duration::from_secs(120),
            max_captchas: 100_000,
            sweep_interval: Duration::from_secs(10),
            replace_default_routes: false,
            phone_default_region: "CN".to_string(),
            send_code: SendCodeConfig::default(),
            captcha_cookie_samesite: SameSite::Lax,
        }
    }
}

/// Per-IP rate limits by route class; `per_second = 0` turns a class off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Logins.
    pub login: Rate,
    /// Registrations.
    pub register: Rate,
    /// Password set/reset.
    pub password: Rate,
    /// Captcha fetches.
    pub captcha: Rate,
    /// Everything else (off by default).
    pub other: Rate,
    /// Sending one-time codes (SMS, e-mail, push).
    pub send_code: Rate,
    /// Hard cap on client keys each class's limiter tracks. Past it, new
    /// clients share one overflow bucket (so a flood of fresh addresses is
    /// still limited, as one client) until the sweeper frees room.
    pub max_tracked_keys: usize,
    /// Keep each client's rate state in the shared store (`store.kind =
    /// "redis"`), so the replicas together allow the configured rate rather
    /// than each of them; while Redis cannot be used, each replica's own
    /// limiter applies. Off: every replica limits on its own.
    pub shared: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            login: Rate {
                per_second: 10,
                burst: 30,
            },
            register: Rate {
                per_second: 2,
                burst: 10,
            },
            password: Rate {
                per_second: 2,
                burst: 10,
            },
            captcha: Rate {
                per_second: 5,
                burst: 20,
            },
            other: Rate {
                per_second: 0,
                burst: 0,
            },
            send_code: Rate {
                per_second: 1,
                burst: 5,
            },
            max_tracked_keys: 1_000_000,
            shared: false,
        }
    }
}

/// A GCRA rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second sustained; 0 disables the limit.
    pub per_second: u32,
    /// Requests allowed at once; 0 or unset means `per_second`.
    #[serde(default)]
    pub burst: u32,
}

/// Listeners and client-facing limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Address of the admin listener (metrics, health, policy). Loopback by default.
    pub admin_listen: SocketAddr,
    /// Largest request body forwarded to the upstream; larger ones get 413.
    pub max_body_bytes: u64,
    /// Time a client has to send its request headers. hyper starts this
    /// timer whenever it waits for a request head, so it is also the idle
    /// timeout of an HTTP/1 keep-alive connection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line plus header lines) accepted; larger
    /// ones get 431 with a JSON envelope. hyper's own buffer is set to four
    /// times this as a backstop (past it hyper answers a bodiless 431).
    pub max_header_bytes: usize,
    /// Time a client has to send the whole body of a login, registration,
    /// password or GraphQL request, which poolgate reads before judging; past
    /// it the client gets 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most client connections open at once on the proxy listener; a
    /// connection over the cap gets one 503 answer and is closed.
    pub max_connections: usize,
    /// Most concurrent streams an HTTP/2 client may open on one connection.
    pub http2_max_concurrent_streams: u32,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Peers (CIDRs) whose `X-Forwarded-For`/`Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Backends (CIDRs) that call the login API on behalf of their end users
    /// (Authing's server-side SDK use): from them, the end user's address is
    /// read from the body's `clientIp` / `options.clientIp`, else `X-Real-IP`.
    pub trusted_backends: Vec<IpNet>,
    /// Proxy worker threads, each with its own event loop, listening socket
    /// (`SO_REUSEPORT`) and upstream connection pool; 0 means one per core.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            body_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            http2_max_concurrent_streams: 100,
            shutdown_grace: Duration::from_secs(15),
            trusted_proxies: Vec::new(),
            trusted_backends: Vec::new(),
            workers: 0,
        }
    }
}

/// The login service poolgate protects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL: `http://host:port` or `https://host:port`, optionally with a path prefix.
    pub url: String,
    /// TCP (and TLS) connect timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time the upstream has to send response headers; past it the client gets 504.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    #[serde(default = "default_pool_idle", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle keep-alive connections kept to the upstream.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// Forward the client's `Host` header (true) or use the upstream's authority (false).
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    /// PEM file of the CA certificates that sign an `https` upstream's
    /// certificate (a private CA); when set, only they are trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_pool_max_idle() -> usize {
    256
}
fn default_true() -> bool {
    true
}

/// Where the pool policy comes from.
///
/// The file keeps its flat shape (`source = "file"` plus a `[policy.file]`
/// section); it is read into [`PolicySource`], so a source without its
/// settings, or with the other source's settings, cannot exist past parsing.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawPolicyConfig")]
pub struct PolicyConfig {
    /// The source and its settings.
    pub source: PolicySource,
    /// How often the source is fetched again.
    pub refresh_interval: Duration,
    /// Where the last good policy is persisted (no secrets are written). Unset: no snapshot.
    pub snapshot_path: Option<PathBuf>,
}

/// The policy source, with the settings of that source only.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// `source = "file"` with `[policy.file]`.
    File(FileSourceConfig),
    /// `source = "authing"` with `[policy.authing]`.
    Authing(AuthingSourceConfig),
}

impl PolicySource {
    /// Which source it is.
    pub fn kind(&self) -> SourceKind {
        match self {
            PolicySource::File(_) => SourceKind::File,
            PolicySource::Authing(_) => SourceKind::Authing,
        }
    }
}

impl PolicyConfig {
    /// The `file` source's settings, when that is the source.
    pub fn file_mut(&mut self) -> Option<&mut FileSourceConfig> {
        match &mut self.source {
            PolicySource::File(f) => Some(f),
            PolicySource::Authing(_) => None,
        }
    }

    /// The `authing` source's settings, when that is the source.
    pub fn authing_mut(&mut self) -> Option<&mut AuthingSourceConfig> {
        match &mut self.source {
            PolicySource::Authing(a) => Some(a),
            PolicySource::File(_) => None,
        }
    }
}

/// `[policy]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyConfig {
    source: SourceKind,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    refresh_interval: Duration,
    #[serde(default)]
    snapshot_path: Option<PathBuf>,
    #[serde(default)]
    file: Option<FileSourceConfig>,
    #[serde(default)]
    authing: Option<AuthingSourceConfig>,
}

impl TryFrom<RawPolicyConfig> for PolicyConfig {
    type Error = String;
    fn try_from(r: RawPolicyConfig) -> Result<Self, String> {
        let source = match (r.source, r.file, r.authing) {
            (SourceKind::File, Some(f), None) => PolicySource::File(f),
            (SourceKind::Authing, None, Some(a)) => PolicySource::Authing(a),
            (SourceKind::File, None, _) => {
                return Err("policy.source = \"file\" needs a [policy.file] section with `path`".into())
            }
            (SourceKind::Authing, _, None) => {
                return Err("policy.source = \"authing\" needs a [policy.authing] section".into())
            }
            (kind, _, _) => {
                return Err(format!(
                    "policy.source = \"{}\" but [policy.{}] is set too: a pool has one source; remove the other section",
                    kind.as_str(),
                    match kind {
                        SourceKind::File => "authing",
                        SourceKind::Authing => "file",
                    }
                ))
            }
        };
        Ok(PolicyConfig {
            source,
            refresh_interval: r.refresh_interval,
            snapshot_path: r.snapshot_path,
        })
    }
}

fn default_refresh() -> Duration {
    Duration::from_secs(60)
}

/// The kind of policy source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A local pool-detail JSON file.
    File,
    /// Authing's management API.
    Authing,
}

impl SourceKind {
    /// The name used in the file, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::Authing => "authing",
        }
    }
}

/// Settings of the `file` policy source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The pool-detail JSON (envelope or bare object).
    pub path: PathBuf,
    /// Optional whitelist entries (see docs/policy-sources.md, "Whitelist file").
    #[serde(default)]
    pub whitelist_path: Option<PathBuf>,
    /// How often the files' metadata is checked for a change.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_poll() -> Duration {
    Duration::from_secs(2)
}

/// Settings of the `authing` policy source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthingSourceConfig {
    /// API base, e.g. `https://core.authing.cn`.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// The user pool id.
    pub user_pool_id: String,
    /// Name of the environment variable holding the pool secret.
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// Timeout of each management API call.
    #[serde(default = "default_api_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Renew the management token when less than this remains before it expires.
    #[serde(default = "default_token_margin", with = "humantime_serde")]
    pub token_renew_before: Duration,
    /// The pool secret, filled from `secret_env` at load time; never read from the TOML.
    #[serde(skip)]
    pub secret: Option<Secret>,
}

fn default_api_base() -> String {
    "https://core.authing.cn".to_string()
}
fn default_secret_env() -> String {
    DEFAULT_SECRET_ENV.to_string()
}
fn default_api_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_token_margin() -> Duration {
    // The official SDKs renew when under an hour remains.
    Duration::from_secs(3600)
}

/// A secret string whose `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the guards' counters, locks and captchas live.
///
/// Written `kind = "memory" | "redis"` plus `[store.redis]`; read into this
/// enum, so Redis settings exist only for the Redis store.
// Built once per (re)load: the size of the memory variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawStoreConfig")]
pub enum StoreConfig {
    /// In this process (one replica, the default).
    #[default]
    Memory,
    /// In a Redis shared by every replica (`[store.redis]`, every key of
    /// which has a default).
    Redis(RedisConfig),
}

impl StoreConfig {
    /// Which store it is.
    pub fn kind(&self) -> StoreKind {
        match self {
            StoreConfig::Memory => StoreKind::Memory,
            StoreConfig::Redis(_) => StoreKind::Redis,
        }
    }

    /// The Redis settings, for the Redis store.
    pub fn redis(&self) -> Option<&RedisConfig> {
        match self {
            StoreConfig::Redis(r) => Some(r),
            StoreConfig::Memory => None,
        }
    }
}

/// `[store]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreConfig {
    #[serde(default)]
    kind: StoreKind,
    #[serde(default)]
    redis: Option<RedisConfig>,
}

impl TryFrom<RawStoreConfig> for StoreConfig {
    type Error = String;
    fn try_from(r: RawStoreConfig) -> Result<Self, String> {
        match (r.kind, r.redis) {
            (StoreKind::Memory, None) => Ok(StoreConfig::Memory),
            (StoreKind::Redis, r) => Ok(StoreConfig::Redis(r.unwrap_or_default())),
            (StoreKind::Memory, Some(_)) => Err(
                "[store.redis] is set but store.kind = \"memory\": set kind = \"redis\" or remove the section".into(),
            ),
        }
    }
}

/// The counter store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process (dashmap).
    #[default]
    Memory,
    /// In a Redis server shared by every replica.
    Redis,
}

/// The shared Redis store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db`, `rediss://…` for TLS, or
    /// `unix:///path`; `POOLGATE_REDIS_URL` overrides it (keep a password out
    /// of the file). With `cluster = true`: one seed node of the cluster.
    #[serde(default = "default_redis_url")]
    pub url: Secret,
    /// PEM file of the CA(s) that signed the server's certificate
    /// (`rediss://` only; without it the public web roots are trusted).
    /// The server's certificate is always verified, host name included.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate (chain) for mutual TLS (`rediss://` only), with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Talk to a Redis Cluster: `url` and `nodes` are seed nodes, the slot map
    /// is learnt from them and followed as it changes.
    #[serde(default)]
    pub cluster: bool,
    /// More seed nodes of the cluster (same scheme and credentials as `url`).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Multiplexed connections opened to Redis: the start-up check, the
    /// breaker's probe and a Cluster's calls use them; on a single server each
    /// proxy worker thread also opens its own for its requests.
    #[serde(default = "default_redis_pool")]
    pub pool_size: usize,
    /// Prefix of every key, so several pools or gateways can share one Redis.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// Longest wait for one Redis call before it counts as failed.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait to (re)connect.
    #[serde(default = "default_redis_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// What the guards do while Redis cannot be used: `local`, `open` or `closed`.
    #[serde(default)]
    pub fallback: StoreFallback,
    /// Consecutive failed calls that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before Redis is tried again.
    #[serde(default = "default_breaker_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Name of the environment variable holding the secret that keys account
    /// counters in Redis (the same on every replica; at least 16 bytes).
    /// Without it an account's key is its identifier's unkeyed SHA-256, which
    /// anyone reading Redis can test phone numbers and addresses against.
    #[serde(default = "default_account_key_secret_env")]
    pub account_key_secret_env: String,
    /// The secret, filled from `account_key_secret_env` at load time; never
    /// read from the TOML.
    #[serde(skip)]
    pub account_key_secret: Option<Secret>,
}

/// The environment variable of `store.redis.account_key_secret_env` by default.
pub const DEFAULT_ACCOUNT_KEY_SECRET_ENV: &str = "POOLGATE_ACCOUNT_KEY_SECRET";

/// The shortest account key secret accepted (bytes): a short one could be
/// found by trying, from one account whose key is known.
pub const MIN_ACCOUNT_KEY_SECRET: usize = 16;

fn default_account_key_secret_env() -> String {
    DEFAULT_ACCOUNT_KEY_SECRET_ENV.to_string()
}

/// The guards' behaviour while the shared store is unusable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreFallback {
    /// Count in this replica's memory: limits still hold per replica (the default).
    #[default]
    Local,
    /// Count nothing: every login and registration is forwarded (fail open).
    Open,
    /// Refuse guarded requests with 503 (fail closed).
    Closed,
}

impl StoreFallback {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreFallback::Local => "local",
            StoreFallback::Open => "open",
            StoreFallback::Closed => "closed",
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: default_redis_url(),
            pool_size: default_redis_pool(),
            key_prefix: default_redis_prefix(),
            timeout: default_redis_timeout(),
            connect_timeout: default_redis_connect_timeout(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            cluster: false,
            nodes: Vec::new(),
            fallback: StoreFallback::default(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown: default_breaker_cooldown(),
            account_key_secret_env: default_account_key_secret_env(),
            account_key_secret: None,
        }
    }
}

impl RedisConfig {
    /// Whether the URL asks for TLS.
    pub fn tls(&self) -> bool {
        self.url.expose().starts_with("rediss://")
    }

    /// Checks the `[store.redis]` section on its own.
    pub fn validate(&self) -> anyhow::Result<()> {
        let url = self.url.expose();
        let tls = self.tls();
        if !(url.starts_with("redis://") || tls || url.starts_with("unix://")) {
            bail!("store.redis.url must start with redis://, rediss:// (TLS) or unix://");
        }
        if !tls {
            for (key, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert_file", self.client_cert_file.is_some()),
                ("client_key_file", self.client_key_file.is_some()),
            ] {
                if set {
                    bail!("store.redis.{key} is for TLS: the url must start with rediss://");
                }
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            bail!(
                "store.redis.client_cert_file and client_key_file go together: set both or neither"
            );
        }
        if self.cluster {
            if url.starts_with("unix://") {
                bail!(
                    "store.redis.cluster needs TCP seed nodes (redis:// or rediss://), not unix://"
                );
            }
            let scheme = if tls { "rediss://" } else { "redis://" };
            for (i, n) in self.nodes.iter().enumerate() {
                if !n.starts_with(scheme) {
                    bail!(
                        "store.redis.nodes[{i}] must start with {scheme}, as store.redis.url does"
                    );
                }
            }
        } else if !self.nodes.is_empty() {
            bail!(
                "store.redis.nodes lists cluster seed nodes: it needs store.redis.cluster = true"
            );
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            bail!("store.redis.pool_size must be between 1 and 64");
        }
        if self.timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.breaker_cooldown.is_zero()
        {
            bail!(
                "store.redis.timeout, connect_timeout and breaker_cooldown must be greater than 0"
            );
        }
        if self.breaker_failures == 0 {
            bail!("store.redis.breaker_failures must be at least 1");
        }
        // `{` and `}` would turn the prefix into the hash tag and put every
        // key of a cluster in one slot.
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            bail!("store.redis.key_prefix must be non-empty, without spaces, {{ or }}");
        }
        if let Some(secret) = &self.account_key_secret {
            if secret.expose().len() < MIN_ACCOUNT_KEY_SECRET {
                bail!(
                    "the account key secret in {} is {} bytes: it must be at least {MIN_ACCOUNT_KEY_SECRET} \
                     (e.g. `openssl rand -hex 32`), the same on every replica",
                    self.account_key_secret_env,
                    secret.expose().len()
                );
            }
        }
        Ok(())
    }
}

fn default_redis_url() -> Secret {
    Secret::new("redis://127.0.0.1:6379/0")
}
fn default_redis_pool() -> usize {
    2
}
fn default_redis_prefix() -> String {
    "poolgate".to_string()
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_redis_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> Duration {
    Duration::from_secs(5)
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human-readable) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `poolgate=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    /// Most rejection log lines written per second (0: no limit); the others
    /// are tallied per guard in a summary line every 10 s. Metrics count all.
    pub rejections_per_second: u32,
    /// One `access` line per request (target `poolgate::access`), in the log's format.
    pub access_log: bool,
    /// The share of requests the access log shows (0 to 1; 1: every one).
    pub access_log_sample: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
            rejections_per_second: 100,
            access_log: false,
            access_log_sample: 1.0,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => bail!("unknown log format {other:?} (expected \"text\" or \"json\")"),
        }
    }
}

impl Config {
    /// Reads, overrides from the process environment, and validates a config file.
    ///
    /// Every key can come from the environment: `POOLGATE_<SECTION>__<KEY>`,
    /// with a double underscore between levels (`POOLGATE_SERVER__TRUSTED_PROXIES`,
    /// `POOLGATE_STORE__REDIS__KEY_PREFIX`), the value written as in TOML
    /// (`'["10.0.0.0/8"]'`, `true`, `5s`). Such a variable wins over the file;
    /// the older single names (`POOLGATE_LISTEN`, `POOLGATE_UPSTREAM_URL`, ...)
    /// are applied after it and win over both.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        // The file alone first: toml's errors name the line and the key.
        let mut cfg = Config::parse(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let env = figment::providers::Env::prefixed("POOLGATE_")
            // Only nested names are keys: POOLGATE_CONFIG, POOLGATE_LISTEN
            // and the secrets' variables are not.
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        let overridden = figment::Provider::data(&env)
            .map(|d| d.values().any(|dict| !dict.is_empty()))
            .unwrap_or(true);
        if overridden {
            cfg = Config::from_layers(&text, env)
                .context("invalid configuration override (POOLGATE_<SECTION>__<KEY>)")?;
        }
        // Relative pool paths are relative to the config file, so the sample
        // config works from any working directory.
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text (no environment, no validation).
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// The file's TOML with `overrides` layered over it (figment: the
    /// layering, key paths and type errors of a maintained crate rather than
    /// hand-merged tables).
    pub fn from_layers(text: &str, overrides: impl figment::Provider) -> anyhow::Result<Config> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .merge(overrides)
            .extract()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Some(f) = self.policy.file_mut() {
            fix(&mut f.path);
            if let Some(w) = f.whitelist_path.as_mut() {
                fix(w);
            }
        }
        if let Some(s) = self.policy.snapshot_path.as_mut() {
            fix(s);
        }
        if let Some(c) = self.upstream.ca_file.as_mut() {
            fix(c);
        }
    }

    /// Applies `POOLGATE_*` overrides; `env` looks a variable up (the process
    /// environment in production, a map in tests).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = env("POOLGATE_LISTEN") {
            self.server.listen = v.parse().context("POOLGATE_LISTEN is not an address")?;
        }
        if let Some(v) = env("POOLGATE_ADMIN_LISTEN") {
            self.server.admin_listen = v
                .parse()
                .context("POOLGATE_ADMIN_LISTEN is not an address")?;
        }
        if let Some(v) = env("POOLGATE_UPSTREAM_URL") {
            self.upstream.url = v;
        }
        if let Some(v) = env("POOLGATE_LOG_FORMAT") {
            self.log.format = v.parse().context("POOLGATE_LOG_FORMAT")?;
        }
        if let Some(v) = env("POOLGATE_POOL_FILE") {
            if let Some(f) = self.policy.file_mut() {
                f.path = v.into();
            }
        }
        if let Some(v) = env(ADMIN_TOKEN_ENV) {
            // Set but empty is a mistake (a missing Secret key, a typo), not
            // a request to turn authentication off.
            if v.trim().is_empty() {
                bail!("{ADMIN_TOKEN_ENV} is set but empty");
            }
            self.admin.token = Some(Secret(v));
        }
        if let Some(v) = env("POOLGATE_REDIS_URL").filter(|v| !v.is_empty()) {
            // The URL may carry a password: the environment is its place.
            if let StoreConfig::Memory = self.store {
                self.store = StoreConfig::Redis(RedisConfig::default());
            }
            if let StoreConfig::Redis(r) = &mut self.store {
                r.url = Secret(v);
            }
        }
        if let StoreConfig::Redis(r) = &mut self.store {
            r.account_key_secret = env(&r.account_key_secret_env)
                .filter(|s| !s.is_empty())
                .map(Secret);
        }
        if let Some(a) = self.policy.authing_mut() {
            if let Some(v) = env("POOLGATE_AUTHING_API_BASE") {
                a.api_base = v;
            }
            if let Some(v) = env("POOLGATE_AUTHING_USER_POOL_ID") {
                a.user_pool_id = v;
            }
            a.secret = env(&a.secret_env).filter(|s| !s.is_empty()).map(Secret);
        }
        Ok(())
    }

    /// Checks the coherence of the whole configuration.
    pub fn validate(&self) -> anyhow::Result<()> {
        let upstream = self.upstream_uri()?;
        if let Some(ca) = &self.upstream.ca_file {
            if upstream.scheme_str() != Some("https") {
                bail!("upstream.ca_file is set but upstream.url is not https://");
            }
            crate::proxy::load_ca_file(ca)?;
        }
        if self.server.max_body_bytes == 0 {
            bail!("server.max_body_bytes must be greater than 0");
        }
        if self.policy.refresh_interval < Duration::from_secs(1) {
            bail!("policy.refresh_interval must be at least 1s");
        }
        let positive = [
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.request_timeout", self.upstream.request_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("guards.captcha_ttl", self.guards.captcha_ttl),
            ("guards.sweep_interval", self.guards.sweep_interval),
        ];
        for (name, d) in positive.into_iter().chain([match &self.policy.source {
            PolicySource::File(f) => ("policy.file.poll_interval", f.poll_interval),
            PolicySource::Authing(a) => ("policy.authing.timeout", a.timeout),
        }]) {
            if d.is_zero() {
                bail!("{name} must be greater than 0");
            }
        }
        if self.server.workers > 256 {
            bail!("server.workers must be between 0 (one per core) and 256");
        }
        // Below hyper's smallest read buffer the limit could never be reached
        // by a request hyper accepts, and the backstop would refuse first.
        if self.server.max_header_bytes < 1024 {
            bail!("server.max_header_bytes must be at least 1024");
        }
        if self.server.max_connections == 0 {
            bail!("server.max_connections must be greater than 0");
        }
        if self.server.http2_max_concurrent_streams == 0 {
            bail!("server.http2_max_concurrent_streams must be greater than 0");
        }
        if self.rate_limit.max_tracked_keys == 0 {
            bail!("rate_limit.max_tracked_keys must be greater than 0");
        }
        if self.rate_limit.shared && self.store.kind() != StoreKind::Redis {
            bail!("rate_limit.shared = true keeps the rates in Redis: it needs store.kind = \"redis\"");
        }
        if self.guards.ipv6_prefix > 128 {
            bail!("guards.ipv6_prefix must be between 0 and 128");
        }
        crate::extract::phone::PhoneRegion::parse(&self.guards.phone_default_region)
            .context("guards.phone_default_region")?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| anyhow::anyhow!("log.level {:?} is not a filter: {e}", self.log.level))?;
        if !(0.0..=1.0).contains(&self.log.access_log_sample) {
            bail!("log.access_log_sample must be between 0 and 1");
        }
        if self.guards.send_code.window.is_zero() {
            bail!("guards.send_code.window must be greater than 0");
        }
        if self.guards.max_tracked_keys == 0 || self.guards.max_captchas == 0 {
            bail!("guards.max_tracked_keys and guards.max_captchas must be greater than 0");
        }
        if let Some(r) = self.store.redis() {
            r.validate()?;
        }
        if let Some(t) = &self.admin.token {
            let t = t.expose();
            if t.chars().count() < ADMIN_TOKEN_MIN_LEN || t.chars().any(char::is_whitespace) {
                bail!(
                    "admin.token (or {ADMIN_TOKEN_ENV}) must be at least {ADMIN_TOKEN_MIN_LEN} characters without spaces (e.g. `openssl rand -hex 32`)"
                );
            }
        } else if self.admin.protect_metrics {
            bail!("admin.protect_metrics = true needs admin.token (or {ADMIN_TOKEN_ENV})");
        }
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            bail!("server.listen and server.admin_listen must differ");
        }
        if let PolicySource::Authing(a) = &self.policy.source {
            if a.user_pool_id.trim().is_empty() {
                bail!("policy.authing.user_pool_id is empty");
            }
            parse_base_uri(&a.api_base).context("policy.authing.api_base")?;
            if a.secret.is_none() {
                bail!(
                    "the Authing pool secret is missing: set the environment variable {}",
                    a.secret_env
                );
            }
        }
        Ok(())
    }

    /// The upstream base URL, parsed.
    pub fn upstream_uri(&self) -> anyhow::Result<Uri> {
        parse_base_uri(&self.upstream.url).context("upstream.url")
    }
}

/// What a change of a key takes: a reload (SIGHUP) applies it in place,
/// or only a restart does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Applied by a reload, counters kept.
    InPlace,
    /// Needs a restart; a reload that changes it is refused as a whole.
    Restart,
}

/// The verdict on reloading `old` into `new`: the keys that changed, by class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed keys a reload applies in place.
    pub in_place: Vec<&'static str>,
    /// Changed keys that need a restart (if any, the reload is refused).
    pub restart: Vec<&'static str>,
}

impl ReloadPlan {
    /// Whether a reload may apply the new configuration.
    pub fn allowed(&self) -> bool {
        self.restart.is_empty()
    }
}

impl Config {
    /// Every key with its reload class and a rendering of its value that
    /// two configurations can be compared by (secrets included, so never
    /// print it).
    ///
    /// The structs are destructured without `..`: a new key does not compile
    /// until it is classified here.
    pub fn reload_keys(&self) -> Vec<(&'static str, Reload, String)> {
        use Reload::{InPlace, Restart};
        fn v(x: &dyn std::fmt::Debug) -> String {
            format!("{x:?}")
        }
        let secret = |s: &Option<Secret>| v(&s.as_ref().map(Secret::expose));
        let Config {
            server,
            upstream,
            policy,
            log,
            guards,
            rate_limit,
            routes,
            store,
            captcha,
            admin,
        } = self;
        let ServerConfig {
            listen,
            admin_listen,
            max_body_bytes,
            header_read_timeout,
            max_header_bytes,
            body_read_timeout,
            max_connections,
            http2_max_concurrent_streams,
            shutdown_grace,
            trusted_proxies,
            trusted_backends,
            workers,
        } = server;
        let UpstreamConfig {
            url,
            connect_timeout,
            request_timeout,
            pool_idle_timeout,
            pool_max_idle,
            preserve_host,
            ca_file,
        } = upstream;
        let LogConfig {
            format,
            level,
            rejections_per_second,
            access_log,
            access_log_sample,
        } = log;
        let GuardsConfig {
            dry_run,
            dry_run_guards,
            inspect_body_bytes,
            inspect_response_bytes,
            max_tracked_keys,
            ipv6_prefix,
            captcha_ttl,
            max_captchas,
            sweep_interval,
            replace_default_routes,
            phone_default_region,
            send_code,
            captcha_cookie_samesite,
        } = guards;
        let SendCodeConfig {
            per_client,
            per_recipient,
            window,
        } = send_code;
        let RateLimitConfig {
            login,
            register,
            password,
            captcha: captcha_rate,
            other,
            send_code: send_code_rate,
            max_tracked_keys: rate_keys,
            shared,
        } = rate_limit;
        let AdminConfig {
            token,
            protect_metrics,
        } = admin;
        let mut keys = vec![
            // Sockets, threads and the listeners' own settings are made once.
            ("server.listen", Restart, v(listen)),
            ("server.admin_listen", Restart, v(admin_listen)),
            ("server.max_body_bytes", InPlace, v(max_body_bytes)),
            (
                "server.header_read_timeout",
                Restart,
                v(header_read_timeout),
            ),
            ("server.max_header_bytes", Restart, v(max_header_bytes)),
            ("server.body_read_timeout", InPlace, v(body_read_timeout)),
            ("server.max_connections", Restart, v(max_connections)),
            (
                "server.http2_max_concurrent_streams",
                Restart,
                v(http2_max_concurrent_streams),
            ),
            ("server.shutdown_grace", Restart, v(shutdown_grace)),
            ("server.trusted_proxies", InPlace, v(trusted_proxies)),
            ("server.trusted_backends", InPlace, v(trusted_backends)),
            ("server.workers", Restart, v(workers)),
            // The upstream's connection pools live in the workers.
            ("upstream.url", Restart, v(url)),
            ("upstream.connect_timeout", Restart, v(connect_timeout)),
            ("upstream.request_timeout", Restart, v(request_timeout)),
            ("upstream.pool_idle_timeout", Restart, v(pool_idle_timeout)),
            ("upstream.pool_max_idle", Restart, v(pool_max_idle)),
            ("upstream.preserve_host", Restart, v(preserve_host)),
            ("upstream.ca_file", Restart, v(ca_file)),
            ("log.format", Restart, v(format)),
            ("log.level", InPlace, v(level)),
            (
                "log.rejections_per_second",
                Restart,
                v(rejections_per_second),
            ),
            ("log.access_log", InPlace, v(access_log)),
            ("log.access_log_sample", InPlace, v(access_log_sample)),
            ("guards.dry_run", InPlace, v(dry_run)),
            ("guards.dry_run_guards", InPlace, v(dry_run_guards)),
            ("guards.inspect_body_bytes", InPlace, v(inspect_body_bytes)),
            (
                "guards.inspect_response_bytes",
                InPlace,
                v(inspect_response_bytes),
            ),
            // The counters' sizes, key derivation and sweep are the state
            // a reload keeps: changing them would mean starting it afresh.
            ("guards.max_tracked_keys", Restart, v(max_tracked_keys)),
            ("guards.ipv6_prefix", Restart, v(ipv6_prefix)),
            ("guards.captcha_ttl", Restart, v(captcha_ttl)),
            ("guards.max_captchas", Restart, v(max_captchas)),
            ("guards.sweep_interval", Restart, v(sweep_interval)),
            (
                "guards.replace_default_routes",
                InPlace,
                v(replace_default_routes),
            ),
            // The policy's whitelist is compiled with it.
            (
                "guards.phone_default_region",
                Restart,
                v(phone_default_region),
            ),
            ("guards.send_code.per_client", InPlace, v(per_client)),
            ("guards.send_code.per_recipient", InPlace, v(per_recipient)),
            ("guards.send_code.window", Restart, v(window)),
            (
                "guards.captcha_cookie_samesite",
                InPlace,
                v(captcha_cookie_samesite),
            ),
            ("rate_limit.login", InPlace, v(login)),
            ("rate_limit.register", InPlace, v(register)),
            ("rate_limit.password", InPlace, v(password)),
            ("rate_limit.captcha", InPlace, v(captcha_rate)),
            ("rate_limit.other", InPlace, v(other)),
            ("rate_limit.send_code", InPlace, v(send_code_rate)),
            ("rate_limit.max_tracked_keys", InPlace, v(rate_keys)),
            ("rate_limit.shared", InPlace, v(shared)),
            ("routes", InPlace, v(routes)),
            ("captcha", InPlace, v(captcha)),
            ("admin.token", InPlace, secret(token)),
            ("admin.protect_metrics", InPlace, v(protect_metrics)),
        ];
        keys.extend(policy.reload_keys());
        keys.extend(store.reload_keys());
        keys
    }

    /// The verdict on reloading this configuration into `new`.
    pub fn reload_plan(&self, new: &Config) -> ReloadPlan {
        let mut plan = ReloadPlan::default();
        let old: std::collections::HashMap<_, _> = self
            .reload_keys()
            .into_iter()
            .map(|(k, _, v)| (k, v))
            .collect();
        for (key, class, value) in new.reload_keys() {
            if old.get(key) == Some(&value) {
                continue;
            }
            match class {
                Reload::InPlace => plan.in_place.push(key),
                Reload::Restart => plan.restart.push(key),
            }
        }
        // A key present on one side only (another policy source or store
        // kind) is a change of the kind, which the kind's key reports.
        plan
    }
}

impl PolicyConfig {
    /// The policy keys (all need a restart: the refresher owns the source).
    fn reload_keys(&self) -> Vec<(&'static str, Reload, String)> {
        let PolicyConfig {
            source,
            refresh_interval,
            snapshot_path,
        } = self;
        let (file, authing) = match source {
            PolicySource::File(f) => (Some(f), None),
            PolicySource::Authing(a) => (
                None,
                Some((format!("{a:?}"), a.secret.as_ref().map(Secret::expose))),
            ),
        };
        vec![
            (
                "policy.source",
                Reload::Restart,
                format!("{:?}", source.kind()),
            ),
            (
                "policy.refresh_interval",
                Reload::Restart,
                format!("{refresh_interval:?}"),
            ),
            (
                "policy.snapshot_path",
                Reload::Restart,
                format!("{snapshot_path:?}"),
            ),
            ("policy.file", Reload::Restart, format!("{file:?}")),
            ("policy.authing", Reload::Restart, format!("{authing:?}")),
        ]
    }
}

impl StoreConfig {
    /// The store keys (all need a restart: the connections and the state
    /// are made once).
    fn reload_keys(&self) -> Vec<(&'static str, Reload, String)> {
        let redis = self.redis().map(|r| {
            (
                format!("{r:?}"),
                r.url.expose().to_string(),
                r.account_key_secret.as_ref().map(Secret::expose),
            )
        });
        vec![
            ("store.kind", Reload::Restart, format!("{:?}", self.kind())),
            ("store.redis", Reload::Restart, format!("{redis:?}")),
        ]
    }
}

/// Parses an `http(s)://host[:port][/prefix]` base URL.
pub fn parse_base_uri(s: &str) -> anyhow::Result<Uri> {
    let uri: Uri = s.parse().with_context(|| format!("{s:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => bail!("{s:?} must start with http:// or https://"),
    }
    if uri.authority().is_none() {
        bail!("{s:?} has no host");
    }
    if uri.query().is_some() {
        bail!("{s:?} must not carry a query string");
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
        [upstream]
        url = "http://127.0.0.1:3000"
        [policy]
        source = "file"
        [policy.file]
        path = "pool.json"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = Config::parse(MIN).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.server.admin_listen.ip().to_string(), "127.0.0.1");
        assert_eq!(cfg.policy.refresh_interval, Duration::from_secs(60));
        assert_eq!(cfg.upstream.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{MIN}\n[log]\nfromat = \"json\"\n");
        let err = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(err.contains("fromat"), "{err}");
    }

    #[test]
    fn env_overrides_and_secret() {
        let text = r#"
            [upstream]
            url = "http://127.0.0.1:3000"
            [policy]
            source = "authing"
            [policy.authing]
            user_pool_id = "pool1"
        "#;
        let mut cfg = Config::parse(text).unwrap();
        cfg.apply_env(|_| None).unwrap();
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(err.contains("POOLGATE_AUTHING_SECRET"), "{err}");
        cfg.apply_env(|k| match k {
            "POOLGATE_AUTHING_SECRET" => Some("s3cr3t".into()),
            "POOLGATE_LISTEN" => Some("127.0.0.1:18080".into()),
            _ => None,
        })
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.server.listen.port(), 18080);
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
    }

    #[test]
    fn any_key_can_be_layered_over_the_file() {
        use figment::providers::Serialized;
        let over = Serialized::default("server.trusted_proxies", vec!["10.0.0.0/8"]);
        let cfg = Config::from_layers(MIN, over).unwrap();
        assert_eq!(cfg.server.trusted_proxies.len(), 1);
        let over = Serialized::default("guards.dry_run_guards", vec!["cors"]);
        let cfg = Config::from_layers(MIN, over).unwrap();
        assert_eq!(cfg.guards.dry_run_guards, vec![crate::guards::Guard::Cors]);
        // An unknown guard name fails to load, naming the known ones.
        let over = Serialized::default("guards.dry_run_guards", vec!["nope"]);
        let err = format!("{:#}", Config::from_layers(MIN, over).unwrap_err());
        assert!(err.contains("nope") && err.contains("login_fail"), "{err}");
        // A wrong type or an unknown key is an error that names it.
        let over = Serialized::default("server.workers", "many");
        let err = format!("{:#}", Config::from_layers(MIN, over).unwrap_err());
        assert!(err.contains("workers"), "{err}");
        let over = Serialized::default("server.wrokers", 2);
        let err = format!("{:#}", Config::from_layers(MIN, over).unwrap_err());
        assert!(err.contains("wrokers"), "{err}");
    }

    #[test]
    fn zero_durations_are_refused() {
        let text = format!("{MIN}\n[guards]\nsweep_interval = \"0s\"\n");
        let cfg = Config::parse(&text).unwrap();
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(err.contains("guards.sweep_interval"), "{err}");
    }

    #[test]
    fn redis_store_settings_and_their_errors() {
        let mut cfg = Config::parse(MIN).unwrap();
        assert_eq!(cfg.store.kind(), StoreKind::Memory);
        // The URL (it may carry a password) comes from the environment.
        cfg.apply_env(|k| (k == "POOLGATE_REDIS_URL").then(|| "redis://:pw@db:6379/1".into()))
            .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.store.kind(), StoreKind::Redis);
        let r = cfg.store.redis().unwrap();
        assert_eq!(r.url.expose(), "redis://:pw@db:6379/1");
        assert_eq!(r.fallback, StoreFallback::Local);
        assert!(
            !format!("{cfg:?}").contains(":pw@"),
            "the URL is never printed"
        );

        // Every Redis key has a default: `kind` alone is a whole store.
        let text = format!("{MIN}\n[store]\nkind = \"redis\"\n");
        let cfg = Config::parse(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.store.redis().unwrap().key_prefix, "poolgate");
        // Redis settings for the memory store are a contradiction.
        let text = format!("{MIN}\n[store]\nkind = \"memory\"\n[store.redis]\npool_size = 4\n");
        let err = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(err.contains("[store.redis] is set but store.kind"), "{err}");
        for (bad, named) in [
            ("url = \"http://db\"", "store.redis.url"),
            ("pool_size = 0", "pool_size"),
            ("timeout = \"0s\"", "store.redis.timeout"),
            ("breaker_failures = 0", "breaker_failures"),
        ] {
            let text = format!("{MIN}\n[store]\nkind = \"redis\"\n[store.redis]\n{bad}\n");
            let err = format!(
                "{:#}",
                Config::parse(&text).unwrap().validate().unwrap_err()
            );
            assert!(err.contains(named), "{bad}: {err}");
        }
        let text =
            format!("{MIN}\n[store]\nkind = \"redis\"\n[store.redis]\nfallback = \"maybe\"\n");
        assert!(Config::parse(&text).is_err());
    }

    #[test]
    fn redis_tls_and_cluster_settings_and_their_errors() {
        let parse = |body: &str| {
            let text = format!("{MIN}\n[store]\nkind = \"redis\"\n[store.redis]\n{body}\n");
            Config::parse(&text).and_then(|c| c.validate().map(|()| c))
        };
        let cfg = parse(
            "url = \"rediss://db:6380/0\"\nca_file = \"/etc/ca.pem\"\n\
             client_cert_file = \"c.pem\"\nclient_key_file = \"k.pem\"",
        )
        .unwrap();
        let r = cfg.store.redis().unwrap();
        assert!(r.tls() && !r.cluster);
        let cfg = parse(
            "url = \"redis://10.0.0.1:7000\"\ncluster = true\nnodes = [\"redis://10.0.0.2:7000\"]",
        )
        .unwrap();
        assert_eq!(cfg.store.redis().unwrap().nodes.len(), 1);
        for (bad, named) in [
            ("ca_file = \"ca.pem\"", "rediss://"),
            (
                "url = \"rediss://db\"\nclient_cert_file = \"c.pem\"",
                "client_key_file",
            ),
            ("nodes = [\"redis://db2:6379\"]", "cluster = true"),
            (
                "url = \"rediss://a:7000\"\ncluster = true\nnodes = [\"redis://b:7000\"]",
                "nodes[0] must start with rediss://",
            ),
            (
                "url = \"unix:///run/redis.sock\"\ncluster = true",
                "not unix://",
            ),
            ("key_prefix = \"{pg}\"", "key_prefix"),
            ("url = \"http://db\"", "rediss://"),
        ] {
            let err = format!("{:#}", parse(bad).unwrap_err());
            assert!(err.contains(named), "{bad}: {err}");
        }
    }

    #[test]
    fn shared_rate_limits_need_the_redis_store() {
        let text = format!("{MIN}\n[rate_limit]\nshared = true\n");
        let err = format!(
            "{:#}",
            Config::parse(&text).unwrap().validate().unwrap_err()
        );
        assert!(err.contains("rate_limit.shared"), "{err}");
        let text = format!(
            "{MIN}\n[rate_limit]\nshared = true\n[store]\nkind = \"redis\"\n[store.redis]\n"
        );
        Config::parse(&text).unwrap().validate().unwrap();
    }

    #[test]
    fn admin_token_from_file_or_environment() {
        let text = format!("{MIN}\n[admin]\ntoken = \"from-the-file-0123456789\"\n");
        let mut cfg = Config::parse(&text).unwrap();
        cfg.validate().unwrap();
        assert!(
            !format!("{cfg:?}").contains("from-the-file"),
            "never printed"
        );
        cfg.apply_env(|k| (k == ADMIN_TOKEN_ENV).then(|| "from-the-env-0123456789".into()))
            .unwrap();
        assert_eq!(
            cfg.admin.token.as_ref().unwrap().expose(),
            "from-the-env-0123456789",
            "the environment wins"
        );
        let err = format!(
            "{:#}",
            cfg.apply_env(|k| (k == ADMIN_TOKEN_ENV).then(String::new))
                .unwrap_err()
        );
        assert!(err.contains(ADMIN_TOKEN_ENV), "{err}");

        let short = format!("{MIN}\n[admin]\ntoken = \"short\"\n");
        let err = format!(
            "{:#}",
            Config::parse(&short).unwrap().validate().unwrap_err()
        );
        assert!(err.contains("admin.token"), "{err}");
        let bare = format!("{MIN}\n[admin]\nprotect_metrics = true\n");
        let err = format!(
            "{:#}",
            Config::parse(&bare).unwrap().validate().unwrap_err()
        );
        assert!(err.contains("protect_metrics"), "{err}");
        let typo = format!("{MIN}\n[admin]\ntokn = \"x\"\n");
        assert!(Config::parse(&typo).is_err());
    }

    #[test]
    fn reload_plan_sorts_changed_keys_by_what_they_take() {
        let old = Config::parse(MIN).unwrap();
        assert_eq!(old.reload_plan(&old), ReloadPlan::default());
        let soft = format!(
            "{MIN}\n[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[rate_limit]\nlogin = {{ per_second = 1 }}\n[admin]\ntoken = \"0123456789abcdef0\"\n"
        );
        let plan = old.reload_plan(&Config::parse(&soft).unwrap());
        assert!(plan.allowed());
        assert_eq!(
            plan.in_place,
            vec!["server.trusted_proxies", "rate_limit.login", "admin.token"]
        );
        let hard = format!("{MIN}\n[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 5\n");
        let plan = old.reload_plan(&Config::parse(&hard).unwrap());
        assert!(!plan.allowed());
        assert_eq!(plan.restart, vec!["server.listen"]);
        assert_eq!(plan.in_place, vec!["server.max_body_bytes"]);
        // A secret's change is seen, though it is never printed.
        let mut a = Config::parse(MIN).unwrap();
        let mut b = a.clone();
        a.store = StoreConfig::Redis(RedisConfig::default());
        b.store = StoreConfig::Redis(RedisConfig {
            url: Secret::new("redis://:other@127.0.0.1:6379/0"),
            ..RedisConfig::default()
        });
        assert_eq!(a.reload_plan(&b).restart, vec!["store.redis"]);
        b.store = StoreConfig::Redis(RedisConfig {
            account_key_secret: Some(Secret::new("a new secret of 32 bytes........")),
            ..RedisConfig::default()
        });
        assert_eq!(a.reload_plan(&b).restart, vec!["store.redis"]);
    }

    /// The account key secret comes from the environment (its variable is
    /// configurable), is never printed, and a short one is refused.
    #[test]
    fn the_account_key_secret() {
        let text = format!("{MIN}\n[store]\nkind = \"redis\"\n");
        let mut cfg = Config::parse(&text).unwrap();
        cfg.apply_env(|_| None).unwrap();
        assert!(cfg.store.redis().unwrap().account_key_secret.is_none());
        let long = "0123456789abcdef0123456789abcdef";
        cfg.apply_env(|k| (k == DEFAULT_ACCOUNT_KEY_SECRET_ENV).then(|| long.into()))
            .unwrap();
        cfg.validate().unwrap();
        let r = cfg.store.redis().unwrap();
        assert_eq!(r.account_key_secret.as_ref().unwrap().expose(), long);
        assert!(!format!("{cfg:?}").contains(long), "never printed");

        let text = format!("{text}[store.redis]\naccount_key_secret_env = \"MY_KEY\"\n");
        let mut cfg = Config::parse(&text).unwrap();
        cfg.apply_env(|k| (k == "MY_KEY").then(|| "short".into()))
            .unwrap();
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(
            err.contains("MY_KEY") && err.contains("at least 16") && !err.contains("short"),
            "{err}"
        );
        // A secret in the file is an unknown key, not a silent one.
        let err = Config::parse(&format!("{text}account_key_secret = \"x\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("account_key_secret"), "{err:#}");
    }

    #[test]
    fn a_policy_source_comes_with_its_own_settings_only() {
        let err = |text: &str| format!("{:#}", Config::parse(text).unwrap_err());
        let e = err("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[policy]\nsource = \"file\"\n");
        assert!(e.contains("needs a [policy.file] section"), "{e}");
        let e =
            err("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[policy]\nsource = \"authing\"\n");
        assert!(e.contains("needs a [policy.authing] section"), "{e}");
        let e = err(&format!("{MIN}\n[policy.authing]\nuser_pool_id = \"p\"\n"));
        assert!(e.contains("[policy.authing] is set too"), "{e}");
        let e = err(&MIN.replace("path = ", "pth = "));
        assert!(e.contains("pth"), "unknown keys are still named: {e}");
        let mut cfg = Config::parse(MIN).unwrap();
        assert_eq!(cfg.policy.source.kind(), SourceKind::File);
        assert!(cfg.policy.authing_mut().is_none());
        assert_eq!(cfg.policy.file_mut().unwrap().path, Path::new("pool.json"));
    }

    #[test]
    fn a_bad_log_level_is_named() {
        let text = format!("{MIN}\n[log]\nlevel = \"poolgate=loud\"\n");
        let err = format!(
            "{:#}",
            Config::parse(&text).unwrap().validate().unwrap_err()
        );
        assert!(err.contains("log.level"), "{err}");
    }

    #[test]
    fn bad_upstream_is_named() {
        let text = MIN.replace("http://127.0.0.1:3000", "ftp://x");
        let cfg = Config::parse(&text).unwrap();
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(err.contains("upstream.url"), "{err}");
    }
}
