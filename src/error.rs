//! One vocabulary for what went wrong: every module's error maps to a
//! [`Kind`], and the daemon decides from the kind, per folder, when to try
//! that folder again ([`Kind::retry`]) while the other folders go on.

use std::time::Duration;

/// What kind of failure an error is, by what the daemon does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A network error, a timeout, a 5xx: try again with backoff.
    Transient,
    /// The service asked us to slow down: the folder waits (at least
    /// `retry_after`, when the service said), the others go on.
    RateLimited {
        /// What the service asked for (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The account has no usable token: it shows "login needed" and its
    /// folders wait for the login; other accounts go on.
    NeedsLogin,
    /// The configuration names something the service refuses (an
    /// ambiguous folder name, a request it will never accept): reported,
    /// tried again rarely.
    Config,
    /// What the configuration names does not exist (a folder renamed or
    /// deleted in the cloud): reported, tried again rarely; its local files
    /// are left alone.
    NotFound,
    /// Nothing will help until a restart (e.g. no HTTP client): the folder
    /// stops.
    Fatal,
    /// One of our own invariants broke: reported as a bug, tried again
    /// rarely.
    Bug,
}

/// When a folder that failed is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// After the folder's backoff, never sooner than `at_least`.
    Backoff {
        /// The server's `Retry-After`, if any.
        at_least: Option<Duration>,
    },
    /// When a login finishes (and at its normal polls, which cost nothing
    /// while no token exists).
    AfterLogin,
    /// Every [`RARELY`].
    Rarely,
    /// Not until the daemon restarts.
    Never,
}

/// How often a folder failing with [`Kind::Config`], [`Kind::NotFound`] or
/// [`Kind::Bug`] is tried again.
pub const RARELY: Duration = Duration::from_secs(600);

impl Kind {
    /// False only when retrying cannot help before a restart.
    pub fn is_recoverable(self) -> bool {
        !matches!(self, Kind::Fatal)
    }

    /// When a folder that failed with this kind is tried again.
    pub fn retry(self) -> Retry {
        match self {
            Kind::Transient => Retry::Backoff { at_least: None },
            Kind::RateLimited { retry_after } => Retry::Backoff {
                at_least: retry_after,
            },
            Kind::NeedsLogin => Retry::AfterLogin,
            Kind::Config | Kind::NotFound | Kind::Bug => Retry::Rarely,
            Kind::Fatal => Retry::Never,
        }
    }

    /// Of two kinds met by one folder in one cycle, the one that decides
    /// (the longer wait; the longer `Retry-After` among rate limits).
    pub fn worst(self, other: Kind) -> Kind {
        match (self, other) {
            (Kind::RateLimited { retry_after: a }, Kind::RateLimited { retry_after: b }) => {
                Kind::RateLimited {
                    retry_after: a.max(b),
                }
            }
            _ if other.rank() > self.rank() => other,
            _ => self,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Kind::Transient => 0,
            Kind::RateLimited { .. } => 1,
            Kind::NeedsLogin => 2,
            Kind::NotFound => 3,
            Kind::Config => 4,
            Kind::Bug => 5,
            Kind::Fatal => 6,
        }
    }

    /// A short name for logs and the status (`"rate limited"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Transient => "transient",
            Kind::RateLimited { .. } => "rate limited",
            Kind::NeedsLogin => "needs login",
            Kind::Config => "config",
            Kind::NotFound => "not found",
            Kind::Fatal => "fatal",
            Kind::Bug => "bug",
        }
    }
}

/// An error that knows its [`Kind`].
pub trait HasKind {
    /// What the daemon should do about it.
    fn kind(&self) -> Kind;
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Kind; 7] = [
        Kind::Transient,
        Kind::RateLimited { retry_after: None },
        Kind::NeedsLogin,
        Kind::Config,
        Kind::NotFound,
        Kind::Fatal,
        Kind::Bug,
    ];

    #[test]
    fn every_kind_has_a_retry_and_only_fatal_is_final() {
        for k in ALL {
            assert_eq!(k.is_recoverable(), k.retry() != Retry::Never, "{k:?}");
        }
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(
            Kind::RateLimited {
                retry_after: s(300)
            }
            .retry(),
            Retry::Backoff { at_least: s(300) }
        );
        assert_eq!(Kind::NeedsLogin.retry(), Retry::AfterLogin);
        assert_eq!(Kind::NotFound.retry(), Retry::Rarely);
    }

    #[test]
    fn the_longer_wait_decides() {
        let s = |n| Some(Duration::from_secs(n));
        let rl = |n| Kind::RateLimited { retry_after: s(n) };
        assert_eq!(rl(30).worst(rl(300)), rl(300));
        assert_eq!(rl(300).worst(Kind::Transient), rl(300));
        assert_eq!(Kind::Transient.worst(Kind::NotFound), Kind::NotFound);
        assert_eq!(Kind::Fatal.worst(Kind::Config), Kind::Fatal);
        for a in ALL {
            for b in ALL {
                assert_eq!(a.worst(b).rank(), a.rank().max(b.rank()), "{a:?} {b:?}");
            }
        }
    }
}
