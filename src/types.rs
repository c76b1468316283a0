//! Small shared value types: message flags, content hashes and cloud ids.
//! Everything here is plain data with no IO.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The four message flags the product tracks, as a bit set with the values
/// the Python config API exposes (`FLAG_REPLIED=1`, `FLAG_READ=2`,
/// `FLAG_FLAGGED=4`, `FLAG_DELETED=8`). The set operations (`|`, `&`, `^`,
/// `!` within the four bits, `-`, `contains`, `is_empty`, iteration) come
/// from `bitflags`; the field stays public so stored and wire values (`u8`)
/// convert as they are.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Flags(pub u8);

bitflags::bitflags! {
    impl Flags: u8 {
        /// The message was answered (maildir `R`).
        const REPLIED = 1;
        /// The message was read (maildir `S`).
        const READ = 2;
        /// The message is flagged for follow-up (maildir `F`).
        const FLAGGED = 4;
        /// The message is marked for deletion (maildir `T`).
        const DELETED = 8;
    }
}

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags::empty();
    /// Every flag bit.
    pub const ALL: Flags = Flags::all();

    /// `self` with the bits of `other` set or cleared (clearing also drops
    /// bits outside the four, as `& !other` does).
    pub fn with(self, other: Flags, on: bool) -> Flags {
        if on { self | other } else { self & !other }
    }
}

/// The maildir letters, in maildir order (`F`, `R`, `S`, `T`); `-` for none.
impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (bit, letter) in [
            (Flags::FLAGGED, 'F'),
            (Flags::REPLIED, 'R'),
            (Flags::READ, 'S'),
            (Flags::DELETED, 'T'),
        ] {
            if self.contains(bit) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// BLAKE3 hash of a message's content with CRLF normalised to LF; the
/// message's identity everywhere in the product.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Lower-case hex, 64 characters: the file name in the store.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", &self.to_hex()[..16])
    }
}

/// Error for a string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a content hash: {0:?}")]
pub struct BadHash(pub String);

impl FromStr for ContentHash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, BadHash> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(BadHash(s.to_string()));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in bytes.chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).map_err(|_| BadHash(s.to_string()))?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| BadHash(s.to_string()))?;
        }
        Ok(ContentHash(out))
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a message id comes from: it scopes a storage id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Microsoft Graph message id (immutable id form).
    Office365,
    /// Gmail message id.
    Gmail,
    /// A file in a local maildir.
    Maildir,
}

impl StorageKind {
    /// The name used in state files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Office365 => "office365",
            StorageKind::Gmail => "gmail",
            StorageKind::Maildir => "maildir",
        }
    }
}

/// A message's cloud identity: (storage kind, storage id, Message-ID). The id
/// cache maps it to a [`ContentHash`] so a restart downloads nothing twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cid {
    /// Which service issued `storage_id`.
    pub kind: StorageKind,
    /// The service's id for the message.
    pub storage_id: String,
    /// The Message-ID header, when the service reports one.
    pub email_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_round_trip() {
        let h = ContentHash(*blake3::hash(b"hello").as_bytes());
        assert_eq!(h.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(h.to_hex().parse::<ContentHash>().unwrap(), h);
        assert!("xyz".parse::<ContentHash>().is_err());
        assert!("zz".repeat(32).parse::<ContentHash>().is_err());
    }

    #[test]
    fn flag_ops() {
        let f = Flags::READ | Flags::FLAGGED;
        assert!(f.contains(Flags::READ));
        assert!(!f.contains(Flags::REPLIED));
        assert_eq!(f.with(Flags::READ, false), Flags::FLAGGED);
        assert_eq!(!Flags::NONE, Flags::ALL);
    }

    /// The bitflags operations agree with the hand-written ones they
    /// replaced on every `u8`, bits outside the four included (a stored or
    /// cloud value may carry them).
    #[test]
    fn flag_ops_match_the_plain_bit_arithmetic() {
        for a in 0..=u8::MAX {
            let fa = Flags(a);
            assert_eq!((!fa).0, !a & 15);
            assert_eq!(fa.is_empty(), a == 0);
            for b in 0..=u8::MAX {
                let fb = Flags(b);
                assert_eq!((fa | fb).0, a | b);
                assert_eq!((fa & fb).0, a & b);
                assert_eq!((fa ^ fb).0, a ^ b);
                assert_eq!(fa.contains(fb), a & b == b);
                assert_eq!(fa.with(fb, true).0, a | b);
                assert_eq!(fa.with(fb, false).0, a & (!b & 15));
                let mut or = fa;
                or |= fb;
                assert_eq!(or.0, a | b);
                assert_eq!(fa.cmp(&fb), a.cmp(&b));
            }
        }
        assert_eq!((Flags::NONE.0, Flags::ALL.0), (0, 15));
        assert_eq!(
            [Flags::REPLIED, Flags::READ, Flags::FLAGGED, Flags::DELETED].map(|f| f.0),
            [1, 2, 4, 8]
        );
        assert_eq!(Flags::default(), Flags::NONE);
    }

    #[test]
    fn flag_display_debug_and_serde() {
        assert_eq!(Flags::NONE.to_string(), "-");
        assert_eq!(Flags::ALL.to_string(), "FRST");
        assert_eq!((Flags::READ | Flags::REPLIED).to_string(), "RS");
        assert_eq!(format!("{:?}", Flags::READ), "Flags(2)");
        assert_eq!(serde_json::to_string(&Flags(5)).unwrap(), "5");
        assert_eq!(serde_json::from_str::<Flags>("11").unwrap(), Flags(11));
    }
}

/// Which cloud service a mailbox or account belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudKind {
    /// Microsoft Office365 through Graph.
    Office365,
    /// Google Gmail through the Gmail API.
    Gmail,
}

/// What a local deletion does in the cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteAction {
    /// Office365: move to Archive; Gmail: remove the synced label.
    Archive,
    /// Office365: move to Deleted Items; Gmail: add `TRASH`.
    Delete,
}

/// A protocol a credential server hands tokens out for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    /// Outgoing mail (XOAUTH2 over SMTP).
    #[serde(rename = "SMTP")]
    Smtp,
    /// Incoming mail (XOAUTH2 over IMAP).
    #[serde(rename = "IMAP")]
    Imap,
}
