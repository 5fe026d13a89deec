//! The captcha endpoints, answered by poolgate: a v2 SVG image with its
//! cookie, or v3 JSON with its token.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::{Answer, Ctx, Gateway};
use crate::guards;
use crate::response;
use crate::routes::RouteKind;
use crate::store::Unavailable;

/// Cookie that binds a v2 captcha to the browser that fetched it.
pub const CAPTCHA_COOKIE: &str = "poolgate_captcha";

impl Gateway {
    /// Issues a captcha (v2: SVG image + cookie; v3: JSON with token).
    pub(super) async fn captcha(&self, kind: RouteKind, ctx: &Ctx) -> Answer {
        if let Some(p) = &ctx.rt.captcha_provider {
            // The login page renders the provider's widget; there is no image.
            let msg = format!(
                "this pool's captcha is a {} challenge: no image is served here",
                p.provider().as_str()
            );
            let mut r = response::error(ctx.flavor, StatusCode::NOT_FOUND, 404, &msg);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Answer::rejected(r);
        }
        let issued = match self.store.issue_captcha(ctx.client.key).await {
            Ok(i) => i,
            Err(Unavailable) => {
                return Answer::rejected(self.refuse(
                    guards::store::unavailable(),
                    ctx,
                    ctx.client.ip,
                ))
            }
        };
        let Some((token, svg)) = issued else {
            return Answer::rejected(self.refuse(
                guards::captcha::store_full(),
                ctx,
                ctx.client.ip,
            ));
        };
        self.metrics.captchas_issued.inc();
        let resp = if kind == RouteKind::CaptchaV3 {
            response::json(
                StatusCode::OK,
                &serde_json::json!({"statusCode": 200, "message": "", "apiCode": 200,
                    "data": {"captchaCodeSvg": svg, "captchaToken": token}}),
            )
        } else {
            let mut r = Response::new(Either::Right(Full::new(Bytes::from(svg))));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            let cookie = set_cookie(
                &token,
                ctx.rt.settings.captcha_ttl,
                ctx.rt.settings.captcha_cookie_samesite,
                ctx.tls,
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                h.insert(header::SET_COOKIE, v);
            }
            r
        };
        Answer::new(resp, "captcha_issued")
    }
}

/// The v2 captcha cookie: `HttpOnly`, living as long as the captcha,
/// `Secure` when the client came over TLS (as a trusted proxy reports) or
/// when `SameSite=None` (browsers drop a cross-site cookie that is not).
fn set_cookie(
    token: &str,
    ttl: std::time::Duration,
    same_site: crate::config::SameSite,
    tls: bool,
) -> String {
    let secure = tls || same_site == crate::config::SameSite::None;
    format!(
        "{CAPTCHA_COOKIE}={token}; Path=/; HttpOnly; SameSite={}; Max-Age={}{}",
        same_site.as_str(),
        ttl.as_secs().max(1),
        if secure { "; Secure" } else { "" }
    )
}

/// The v2 captcha token the browser sends back in its cookie.
pub(super) fn cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == CAPTCHA_COOKIE).then(|| v.trim().to_string())
        })
}
