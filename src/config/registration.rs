//! Built-in OAuth app registrations. These are public facts the Python
//! program ships; keeping them lets existing refresh tokens keep working.

/// An Azure app registration: tenant and client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Azure tenant (`common`, a GUID or a domain).
    pub tenant: &'static str,
    /// Application (client) id.
    pub client_id: &'static str,
}

/// The registration used when no domain-specific one applies.
pub const O365_DEFAULT: Registration = Registration {
    tenant: "common",
    client_id: "122f4826-adf9-465d-8e84-e9d00bc9f234",
};

/// Domain-specific Office365 registrations.
pub const O365_BY_DOMAIN: &[(&str, Registration)] = &[(
    "nvidia.com",
    Registration {
        tenant: "43083d15-7273-40c1-b7db-39efd9ccc17a",
        client_id: "472bb794-a546-4311-96f9-76bc79989214",
    },
)];

/// The Gmail desktop client id.
pub const GMAIL_CLIENT_ID: &str =
    "14979213351-bik90v3b8b9f22160ura3oah71u3l113.apps.googleusercontent.com";

/// The Gmail desktop client secret; Google does not treat it as confidential
/// for installed apps, but its token endpoint requires it.
pub const GMAIL_CLIENT_SECRET: &str = "cLICGg-LVQuMAPTh3VxTC42p";

/// The registration for `user`: the domain's entry, or the default when the
/// user has no domain, the domain is unknown, or the default was asked for.
pub fn office365_for(user: Option<&str>, use_default: bool) -> Registration {
    if use_default {
        return O365_DEFAULT;
    }
    let domain = user.and_then(|u| u.split_once('@')).map(|(_, d)| d);
    domain
        .and_then(|d| {
            O365_BY_DOMAIN
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(d))
                .map(|(_, r)| *r)
        })
        .unwrap_or(O365_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        assert_eq!(
            office365_for(Some("a@nvidia.com"), false).tenant,
            O365_BY_DOMAIN[0].1.tenant
        );
        assert_eq!(office365_for(Some("a@nvidia.com"), true), O365_DEFAULT);
        assert_eq!(office365_for(Some("a@example.com"), false), O365_DEFAULT);
        assert_eq!(office365_for(Some("nodomain"), false), O365_DEFAULT);
        assert_eq!(office365_for(None, false), O365_DEFAULT);
    }
}
