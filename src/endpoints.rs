//! Where the services are: the real hosts in production, or every host
//! behind one base URL (the emulator, `CMS_CLOUD_BASE_URL`). The OAuth
//! servers and both mail APIs are reached through it.

/// Base URLs of the services. Production uses the real hosts; tests and the
/// demo point every host at the emulator (`CMS_CLOUD_BASE_URL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// `None` for the real services; `Some("http://127.0.0.1:PORT")` sends
    /// `https://HOST/PATH` to `http://127.0.0.1:PORT/HOST/PATH`.
    pub base: Option<String>,
}

impl Endpoints {
    /// The real services.
    pub fn real() -> Endpoints {
        Endpoints { base: None }
    }

    /// Everything through one base URL (the emulator).
    pub fn emulated(base: &str) -> Endpoints {
        Endpoints {
            base: Some(base.trim_end_matches('/').to_string()),
        }
    }

    /// The URL for `path` (starting with `/`) on `host`.
    pub fn url(&self, host: &str, path: &str) -> String {
        match &self.base {
            None => format!("https://{host}{path}"),
            Some(b) => format!("{b}/{host}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            Endpoints::real().url("graph.microsoft.com", "/v1.0/me"),
            "https://graph.microsoft.com/v1.0/me"
        );
        assert_eq!(
            Endpoints::emulated("http://127.0.0.1:5/").url("graph.microsoft.com", "/v1.0/me"),
            "http://127.0.0.1:5/graph.microsoft.com/v1.0/me"
        );
    }
}
