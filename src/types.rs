//! Small shared value types: message flags, content hashes and cloud ids.
//! Everything here is plain data with no IO.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The four message flags the product tracks, as a bit set with the values
/// the Python config API exposes (`FLAG_REPLIED=1`, `FLAG_READ=2`,
/// `FLAG_FLAGGED=4`, `FLAG_DELETED=8`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Flags(pub u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// The message was answered (maildir `R`).
    pub const REPLIED: Flags = Flags(1);
    /// The message was read (maildir `S`).
    pub const READ: Flags = Flags(2);
    /// The message is flagged for follow-up (maildir `F`).
    pub const FLAGGED: Flags = Flags(4);
    /// The message is marked for deletion (maildir `T`).
    pub const DELETED: Flags = Flags(8);
    /// Every flag bit.
    pub const ALL: Flags = Flags(15);

    /// True when every bit of `other` is set in `self`.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` set or cleared.
    pub fn with(self, other: Flags, on: bool) -> Flags {
        if on { self | other } else { self & !other }
    }

    /// True when no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
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

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitAnd for Flags {
    type Output = Flags;
    fn bitand(self, rhs: Flags) -> Flags {
        Flags(self.0 & rhs.0)
    }
}

impl std::ops::BitXor for Flags {
    type Output = Flags;
    fn bitxor(self, rhs: Flags) -> Flags {
        Flags(self.0 ^ rhs.0)
    }
}

impl std::ops::Not for Flags {
    type Output = Flags;
    fn not(self) -> Flags {
        Flags(!self.0 & Flags::ALL.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
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
