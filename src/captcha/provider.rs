//! Third-party challenges: a pool can require Cloudflare Turnstile, hCaptcha or
//! Google reCAPTCHA instead of poolgate's own image (`[captcha] provider`).
//!
//! The client solves the provider's widget and sends its answer token with the
//! login; poolgate asks the provider's `siteverify` API whether the token is
//! good (`POST`, `application/x-www-form-urlencoded` `secret`, `response`,
//! `remoteip`; answer `{"success": bool, ...}`: the three providers share this
//! shape).
//!
//! **Fail closed.** An unreachable, slow, or confused provider means the
//! captcha is *not* solved: [`SiteVerify::verify`] returns an error and
//! [`SiteVerify::is_solved`] `false`. A gated client then stays gated until
//! the provider answers again; it is never let through because a call failed.
//! (The alternative, failing open, would let a bot pass every gate by making
//! the provider slow for poolgate, e.g. by flooding the verify budget.)
//!
//! The secret comes from the environment (`secret_env`) and is sent only in
//! the request body: it is in no log line, error, or `Debug` output.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde::Deserialize;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest siteverify answer read (they are a few hundred bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest answer token sent on (Turnstile documents 2048 characters;
/// reCAPTCHA's are longer). A longer one is not verified: it is not solved.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Who draws and checks the captcha.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// poolgate's own image (`GET /api/v2/security/captcha`, `/api/v3/get-captcha-code`).
    #[default]
    Builtin,
    /// Cloudflare Turnstile.
    Turnstile,
    /// hCaptcha.
    Hcaptcha,
    /// Google reCAPTCHA (v2 or v3; v3's `score` is not read).
    Recaptcha,
}

impl Provider {
    /// The provider's siteverify endpoint (`None` for the builtin captcha).
    pub fn default_verify_url(self) -> Option<&'static str> {
        match self {
            Provider::Builtin => None,
            Provider::Turnstile => {
                Some("https://challenges.cloudflare.com/turnstile/v0/siteverify")
            }
            Provider::Hcaptcha => Some("https://api.hcaptcha.com/siteverify"),
            Provider::Recaptcha => Some("https://www.google.com/recaptcha/api/siteverify"),
        }
    }

    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Builtin => "builtin",
            Provider::Turnstile => "turnstile",
            Provider::Hcaptcha => "hcaptcha",
            Provider::Recaptcha => "recaptcha",
        }
    }
}

/// The `[captcha]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptchaConfig {
    /// `builtin` (the default), `turnstile`, `hcaptcha` or `recaptcha`.
    pub provider: Provider,
    /// Environment variable holding the provider's secret key.
    pub secret_env: String,
    /// The siteverify URL; defaults to the provider's (override for tests or a proxy).
    pub verify_url: Option<String>,
    /// Budget for one verification, connect to last byte.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for CaptchaConfig {
    fn default() -> Self {
        CaptchaConfig {
            provider: Provider::Builtin,
            secret_env: "POOLGATE_CAPTCHA_SECRET".into(),
            verify_url: None,
            timeout: Duration::from_secs(3),
        }
    }
}

impl CaptchaConfig {
    /// The siteverify URL in force: the configured one, else the provider's.
    pub fn verify_url(&self) -> Option<&str> {
        self.verify_url
            .as_deref()
            .or_else(|| self.provider.default_verify_url())
    }
}

/// Why a token could not be verified. Every one of them means "not solved".
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// `provider = "builtin"`: there is no remote verification.
    #[error("the captcha provider is builtin: nothing to verify remotely")]
    Builtin,
    /// The secret's environment variable is unset or empty.
    #[error("the captcha provider secret is missing: set {0}")]
    MissingSecret(String),
    /// The verify URL does not parse as an http(s) URL.
    #[error("bad captcha verify_url {0:?}")]
    BadUrl(String),
    /// Connecting, sending, or reading the answer failed.
    #[error("captcha siteverify: {0}")]
    Connect(String),
    /// The provider answered with a non-2xx status.
    #[error("captcha siteverify answered HTTP {0}")]
    Status(u16),
    /// The answer is not the siteverify JSON.
    #[error("captcha siteverify answer unreadable: {0}")]
    Body(String),
    /// No complete answer within the timeout.
    #[error("captcha siteverify timed out after {0:?}")]
    Timeout(Duration),
}

/// The secret key; `Debug` never shows it.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Deserialize)]
struct Answer {
    success: bool,
    #[serde(default, rename = "error-codes")]
    error_codes: Vec<String>,
}

/// A client of one provider's siteverify API.
pub struct SiteVerify {
    provider: Provider,
    client: HttpsClient,
    url: Uri,
    secret: Secret,
    timeout: Duration,
}

impl std::fmt::Debug for SiteVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteVerify")
            .field("provider", &self.provider)
            .field("url", &self.url)
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SiteVerify {
    /// The verifier `cfg` asks for, with the secret read from the environment:
    /// `Ok(None)` for the builtin captcha.
    pub fn from_config(cfg: &CaptchaConfig) -> Result<Option<Self>, VerifyError> {
        if cfg.provider == Provider::Builtin {
            return Ok(None);
        }
        let secret = std::env::var(&cfg.secret_env)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| VerifyError::MissingSecret(cfg.secret_env.clone()))?;
        let url = cfg.verify_url().ok_or(VerifyError::Builtin)?;
        Self::new(cfg.provider, url, secret, cfg.timeout).map(Some)
    }

    /// A verifier posting to `url` with `secret`.
    pub fn new(
        provider: Provider,
        url: &str,
        secret: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, VerifyError> {
        if provider == Provider::Builtin {
            return Err(VerifyError::Builtin);
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| VerifyError::BadUrl(url.to_string()))?;
        if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
            return Err(VerifyError::BadUrl(url.to_string()));
        }
        Ok(SiteVerify {
            provider,
            client: crate::source::authing::https_client(timeout),
            url: uri,
            secret: Secret(secret.into()),
            timeout,
        })
    }

    /// The provider this verifier asks.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Asks the provider whether `response_token` (the widget's answer) is a
    /// solved challenge, from `remote_ip` when known.
    ///
    /// `Ok(false)`: the provider said no (or the token is empty or too long to
    /// be one, which costs no call). `Err`: no usable answer; the caller must
    /// treat it as not solved (fail closed, see the module doc).
    pub async fn verify(
        &self,
        response_token: &str,
        remote_ip: Option<IpAddr>,
    ) -> Result<bool, VerifyError> {
        let token = response_token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Ok(false);
        }
        // Built in a block: the serializer is not `Sync`, and must not live
        // across an await of a future that has to be `Send`.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("secret", &self.secret.0)
                .append_pair("response", token);
            if let Some(ip) = remote_ip {
                form.append_pair("remoteip", &ip.to_string());
            }
            form.finish()
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| VerifyError::Connect(format!("building the request: {e}")))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| VerifyError::Connect(crate::error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| VerifyError::Connect(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, VerifyError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| VerifyError::Timeout(self.timeout))??;
        if !status.is_success() {
            return Err(VerifyError::Status(status.as_u16()));
        }
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| VerifyError::Body(e.to_string()))?;
        if !answer.success {
            tracing::debug!(
                provider = self.provider.as_str(),
                error_codes = ?answer.error_codes,
                "captcha token rejected by the provider"
            );
        }
        Ok(answer.success)
    }

    /// [`verify`](Self::verify), failing closed: an error is logged (without
    /// the secret or the token) and counts as not solved.
    pub async fn is_solved(&self, response_token: &str, remote_ip: Option<IpAddr>) -> bool {
        match self.verify(response_token, remote_ip).await {
            Ok(solved) => solved,
            Err(e) => {
                tracing::warn!(
                    provider = self.provider.as_str(),
                    error = %e,
                    "captcha siteverify failed; the captcha counts as not solved"
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_parsing() {
        let c = CaptchaConfig::default();
        assert_eq!(c.provider, Provider::Builtin);
        assert_eq!(c.secret_env, "POOLGATE_CAPTCHA_SECRET");
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.verify_url(), None);

        let c: CaptchaConfig =
            toml::from_str("provider = \"turnstile\"\ntimeout = \"1500ms\"").unwrap();
        assert_eq!(c.provider, Provider::Turnstile);
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(
            c.verify_url(),
            Some("https://challenges.cloudflare.com/turnstile/v0/siteverify")
        );
        for (name, url) in [
            ("hcaptcha", "https://api.hcaptcha.com/siteverify"),
            (
                "recaptcha",
                "https://www.google.com/recaptcha/api/siteverify",
            ),
        ] {
            let c: CaptchaConfig = toml::from_str(&format!("provider = \"{name}\"")).unwrap();
            assert_eq!(c.verify_url(), Some(url));
        }
        let c: CaptchaConfig =
            toml::from_str("provider = \"hcaptcha\"\nverify_url = \"http://127.0.0.1:9/v\"")
                .unwrap();
        assert_eq!(c.verify_url(), Some("http://127.0.0.1:9/v"));
        assert!(toml::from_str::<CaptchaConfig>("provider = \"Turnstile\"").is_err());
        assert!(toml::from_str::<CaptchaConfig>("provider = \"geetest\"").is_err());
        assert!(toml::from_str::<CaptchaConfig>("secret = \"inline\"").is_err());
    }

    #[test]
    fn builtin_has_no_verifier_and_a_missing_secret_is_an_error() {
        assert!(SiteVerify::from_config(&CaptchaConfig::default())
            .unwrap()
            .is_none());
        let c = CaptchaConfig {
            provider: Provider::Hcaptcha,
            secret_env: "POOLGATE_TEST_CAPTCHA_SECRET_SURELY_UNSET".into(),
            ..CaptchaConfig::default()
        };
        assert!(matches!(
            SiteVerify::from_config(&c),
            Err(VerifyError::MissingSecret(v)) if v == "POOLGATE_TEST_CAPTCHA_SECRET_SURELY_UNSET"
        ));
        assert!(matches!(
            SiteVerify::new(
                Provider::Turnstile,
                "ftp://x/y",
                "s",
                Duration::from_secs(1)
            ),
            Err(VerifyError::BadUrl(_))
        ));
        assert!(matches!(
            SiteVerify::new(
                Provider::Builtin,
                "https://x/y",
                "s",
                Duration::from_secs(1)
            ),
            Err(VerifyError::Builtin)
        ));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let v = SiteVerify::new(
            Provider::Recaptcha,
            "https://www.google.com/recaptcha/api/siteverify",
            "very-secret-key",
            Duration::from_secs(1),
        )
        .unwrap();
        let d = format!("{v:?}");
        assert!(!d.contains("very-secret-key"), "{d}");
        assert!(d.contains("<redacted>"));
    }
}
