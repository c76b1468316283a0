//! Error bodies in the shape each service uses (Graph, Gmail, Entra ID, Google OAuth).

use serde_json::json;

use crate::http::Resp;
use crate::state::guid;

/// Which service a path belongs to, for error shapes and stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// graph.microsoft.com (and outlook.office.com).
    Graph,
    /// gmail.googleapis.com / www.googleapis.com.
    Gmail,
    /// login.microsoftonline.com.
    MsLogin,
    /// accounts.google.com / oauth2.googleapis.com.
    GoogleLogin,
    /// /_control and unknown hosts.
    Other,
}

impl Service {
    /// Classifies a host prefix.
    pub fn of_host(host: &str) -> Service {
        match host {
            "graph.microsoft.com" | "outlook.office.com" => Service::Graph,
            "gmail.googleapis.com" | "www.googleapis.com" => Service::Gmail,
            "login.microsoftonline.com" | "microsoft.com" => Service::MsLogin,
            "accounts.google.com" | "oauth2.googleapis.com" | "www.google.com" => {
                Service::GoogleLogin
            }
            _ => Service::Other,
        }
    }

    /// Short name used in stats route names.
    pub fn name(self) -> &'static str {
        match self {
            Service::Graph => "graph",
            Service::Gmail => "gmail",
            Service::MsLogin => "mslogin",
            Service::GoogleLogin => "googlelogin",
            Service::Other => "other",
        }
    }
}

/// Graph timestamp form used in `innerError.date` (no fractional seconds).
pub fn graph_date() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// A Graph error: `{"error":{"code","message","innerError":{...}}}`.
pub fn graph(status: u16, code: &str, message: &str) -> Resp {
    let rid = guid();
    Resp::json(
        status,
        &json!({"error": {"code": code, "message": message,
            "innerError": {"date": graph_date(), "request-id": rid, "client-request-id": rid}}}),
    )
    .with_header("request-id", &rid)
}

/// Graph 400 for a malformed request.
pub fn graph_bad(message: &str) -> Resp {
    graph(400, "BadRequest", message)
}

/// Graph 404 for an unknown item.
pub fn graph_not_found() -> Resp {
    graph(
        404,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

/// Graph 429 with `Retry-After` (fractional seconds, as the docs show).
pub fn graph_throttled(code: &str, message: &str, retry_after: f64) -> Resp {
    let rid = guid();
    Resp::json(
        429,
        &json!({"error": {"code": code, "message": message,
            "innerError": {"code": "429", "date": graph_date(), "message": "Please retry after",
                "request-id": rid, "status": "429"}}}),
    )
    .with_header("Retry-After", &fmt_retry(retry_after))
}

/// Formats a Retry-After value with at most three decimals.
pub fn fmt_retry(secs: f64) -> String {
    let s = format!("{:.3}", secs.max(0.001));
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Graph 401 for a missing, expired or wrong-audience token.
pub fn graph_unauthorized(message: &str) -> Resp {
    graph(401, "InvalidAuthenticationToken", message).with_header(
        "WWW-Authenticate",
        "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
    )
}

/// Google API error envelope with one `errors[]` entry and a `status` string.
pub fn google(code: u16, reason: &str, message: &str) -> Resp {
    let (domain, status) = match code {
        400 => ("global", "INVALID_ARGUMENT"),
        401 => ("global", "UNAUTHENTICATED"),
        403 if reason.contains("RateLimit") => ("usageLimits", "PERMISSION_DENIED"),
        403 => ("global", "PERMISSION_DENIED"),
        404 => ("global", "NOT_FOUND"),
        409 => ("global", "ALREADY_EXISTS"),
        429 => ("usageLimits", "RESOURCE_EXHAUSTED"),
        500 => ("global", "INTERNAL"),
        503 => ("global", "UNAVAILABLE"),
        _ => ("global", "UNKNOWN"),
    };
    let mut entry = json!({"message": message, "domain": domain, "reason": reason});
    if code == 401 {
        entry["locationType"] = json!("header");
        entry["location"] = json!("Authorization");
    }
    Resp::json(
        code,
        &json!({"error": {"code": code, "message": message, "errors": [entry], "status": status}}),
    )
}

/// Google 400 `invalidArgument`.
pub fn google_bad(message: &str) -> Resp {
    google(400, "invalidArgument", message)
}

/// Google 404 `notFound`.
pub fn google_not_found() -> Resp {
    google(404, "notFound", "Requested entity was not found.")
}

/// Google 401 `authError` with the `WWW-Authenticate` challenge.
pub fn google_unauthorized() -> Resp {
    google(
        401,
        "authError",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
    )
    .with_header("WWW-Authenticate", "Bearer realm=\"https://accounts.google.com/\"")
}

/// Google 403 for a token without the scope a method needs.
pub fn google_insufficient_scope() -> Resp {
    google(
        403,
        "insufficientPermissions",
        "Request had insufficient authentication scopes.",
    )
}

/// Entra ID token/authorize error body (§2.2 envelope with AADSTS code and ids).
pub fn aad(status: u16, error: &str, code: u32, text: &str) -> Resp {
    let trace = guid();
    let corr = guid();
    let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let desc =
        format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}");
    Resp::json(
        status,
        &json!({"error": error, "error_description": desc, "error_codes": [code],
            "timestamp": ts, "trace_id": trace, "correlation_id": corr,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}")}),
    )
}

/// Google OAuth error body `{"error","error_description"}`.
pub fn google_oauth(status: u16, error: &str, description: &str) -> Resp {
    Resp::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// An error body for an injected status, in the shape of the service owning the path.
pub fn injected(service: Service, status: u16) -> Resp {
    match service {
        Service::Graph => match status {
            429 => graph_throttled("TooManyRequests", "Please retry again later.", 1.0),
            401 => graph_unauthorized("Access token has expired or is not yet valid."),
            404 => graph_not_found(),
            503 => graph(
                503,
                "ServiceUnavailable",
                "Service is temporarily unavailable.",
            )
            .with_header("Retry-After", "1"),
            504 => graph(504, "UnknownError", "Gateway timeout."),
            s if s >= 500 => graph(s, "UnknownError", "An internal server error occurred."),
            s => graph(s, "BadRequest", "Injected failure."),
        },
        Service::Gmail => match status {
            429 => google(
                429,
                "rateLimitExceeded",
                "Too many concurrent requests for user.",
            ),
            403 => google(403, "userRateLimitExceeded", "User Rate Limit Exceeded"),
            401 => google_unauthorized(),
            404 => google_not_found(),
            500 => google(500, "backendError", "Backend Error"),
            503 => google(503, "backendError", "The service is currently unavailable."),
            s => google(s, "failedPrecondition", "Injected failure."),
        },
        Service::MsLogin => match status {
            s if s >= 500 => aad(s, "temporarily_unavailable", 50196, "Injected outage."),
            s => aad(s, "invalid_request", 90014, "Injected failure."),
        },
        Service::GoogleLogin => match status {
            s if s >= 500 => google_oauth(s, "internal_failure", "Backend Error"),
            s => google_oauth(s, "invalid_request", "Injected failure."),
        },
        Service::Other => Resp::json(status, &json!({"error": "injected"})),
    }
}
