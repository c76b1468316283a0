//! Pure mapping between our flag bits and Graph message JSON (behavior.md §3):
//! read is `isRead`, flagged is `flag.flagStatus == "flagged"`, and replied
//! lives in three MAPI properties read through `singleValueExtendedProperties`
//! (PidTagIconIndex 0x1080, PidTagLastVerbExecuted 0x1081, PidTagMessageStatus
//! 0xe17). No IO here.

use crate::types::Flags;

use super::wire::{DeltaMessage, ExtendedProperty, FollowupFlag, MessagePatch};

/// PidTagIconIndex: 0x105 replied, 0x106 forwarded, 0x100 read, -1 new.
pub const ICON_INDEX: &str = "Integer 0x1080";
/// PidTagLastVerbExecuted: 102 reply to sender, 103 reply all, 104 forward.
pub const LAST_VERB: &str = "Integer 0x1081";
/// PidTagLastVerbExecutionTime, written with the verb.
pub const LAST_VERB_TIME: &str = "SystemTime 0x1082";
/// PidTagMessageStatus: bit 0x200 is MSGSTATUS_ANSWERED (IMAP `\Answered`);
/// read-only over REST.
pub const MESSAGE_STATUS: &str = "Integer 0xe17";

/// The `$expand` clause that returns the three replied-state properties (each
/// message lists only those it has).
pub const EXPAND: &str = "singleValueExtendedProperties($filter=id eq 'Integer 0x1080' or id eq 'Integer 0x1081' or id eq 'Integer 0xe17')";

/// The `$select` of listings: what the flags, the id cache and routing need.
pub const SELECT: &str = "internetMessageId,isRead,flag,receivedDateTime";

const ICON_REPLIED: i64 = 0x105;
const ICON_FORWARDED: i64 = 0x106;
const ICON_READ: i64 = 0x100;
const ICON_NEW: i64 = -1;
const VERB_REPLY_ALL: i64 = 103;
/// NOTEIVERB_OPEN: the neutral verb written when the replied state is cleared
/// (the property cannot be deleted through a PATCH).
const VERB_NONE: i64 = 0;
const STATUS_ANSWERED: i64 = 0x200;

/// What the replied-state properties say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepliedState {
    /// Any of the three sources says replied (or forwarded).
    pub replied: bool,
    /// PidTagMessageStatus has the answered bit, which Graph cannot clear.
    pub status_answered: bool,
}

/// `(type, tag)` of a property id such as `Integer 0x1080` (type compared
/// case-insensitively, tag as a number).
fn tag_of(id: &str) -> Option<(String, u32)> {
    let (ty, tag) = id.trim().split_once(' ')?;
    let hex = tag
        .trim()
        .strip_prefix("0x")
        .or_else(|| tag.trim().strip_prefix("0X"))?;
    Some((ty.to_ascii_lowercase(), u32::from_str_radix(hex, 16).ok()?))
}

fn same_prop(a: &str, b: &str) -> bool {
    matches!((tag_of(a), tag_of(b)), (Some(x), Some(y)) if x == y)
}

/// An Integer property's value as a signed 32-bit number (`4294967295` and
/// `-1` are the same value).
fn int_value(v: &str) -> Option<i64> {
    let n: i64 = v.trim().parse().ok()?;
    Some(i64::from(n as u32 as i32))
}

/// Read the replied state from the expanded properties.
pub fn replied_state(props: &[ExtendedProperty]) -> RepliedState {
    let get = |id: &str| {
        props
            .iter()
            .find(|p| same_prop(&p.id, id))
            .and_then(|p| p.value.as_deref())
            .and_then(int_value)
    };
    let icon = get(ICON_INDEX).is_some_and(|v| v == ICON_REPLIED || v == ICON_FORWARDED);
    let verb = get(LAST_VERB).is_some_and(|v| (102..=104).contains(&v));
    let status_answered = get(MESSAGE_STATUS).is_some_and(|v| v & STATUS_ANSWERED != 0);
    RepliedState {
        replied: icon || verb || status_answered,
        status_answered,
    }
}

/// True when the follow-up flag counts as flagged (`complete` does not).
pub fn is_flagged(flag: Option<&FollowupFlag>) -> bool {
    flag.and_then(|f| f.flag_status.as_deref())
        .is_some_and(|s| s.eq_ignore_ascii_case("flagged"))
}

/// Flags of a listed message; properties absent from the answer count as
/// unset (Graph leaves out the ones the message does not have).
pub fn flags_of(m: &DeltaMessage) -> (Flags, RepliedState) {
    let replied = replied_state(m.single_value_extended_properties.as_deref().unwrap_or(&[]));
    let mut f = Flags::NONE;
    f = f.with(Flags::READ, m.is_read.unwrap_or(false));
    f = f.with(Flags::FLAGGED, is_flagged(m.flag.as_ref()));
    f = f.with(Flags::REPLIED, replied.replied);
    (f, replied)
}

/// The PATCH body that applies `set`/`clear` to a message whose read state
/// is `read_now` before the change. `now` (seconds since the epoch) stamps
/// the reply verb. Unsupported bits are ignored; a bit in both sets is set.
pub fn patch_for(set: Flags, clear: Flags, read_now: bool, now: i64) -> MessagePatch {
    let mut p = MessagePatch::default();
    if set.contains(Flags::READ) {
        p.is_read = Some(true);
    } else if clear.contains(Flags::READ) {
        p.is_read = Some(false);
    }
    if set.contains(Flags::FLAGGED) {
        p.flag = Some(FollowupFlag {
            flag_status: Some("flagged".into()),
        });
    } else if clear.contains(Flags::FLAGGED) {
        p.flag = Some(FollowupFlag {
            flag_status: Some("notFlagged".into()),
        });
    }
    let prop = |id: &str, v: String| ExtendedProperty {
        id: id.to_string(),
        value: Some(v),
    };
    if set.contains(Flags::REPLIED) {
        // As Outlook records a reply-all: the verb, its time, and the icon.
        p.single_value_extended_properties = vec![
            prop(LAST_VERB, VERB_REPLY_ALL.to_string()),
            prop(LAST_VERB_TIME, super::wire::format_utc(now)),
            prop(ICON_INDEX, ICON_REPLIED.to_string()),
        ];
    } else if clear.contains(Flags::REPLIED) {
        let read = p.is_read.unwrap_or(read_now);
        // The icon goes back to read/new, and the verb to a neutral one, so
        // neither source reads as replied any more. PidTagMessageStatus
        // cannot be written over REST (see `RepliedState::status_answered`).
        p.single_value_extended_properties = vec![
            prop(
                ICON_INDEX,
                if read { ICON_READ } else { ICON_NEW }.to_string(),
            ),
            prop(LAST_VERB, VERB_NONE.to_string()),
        ];
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(list: &[(&str, &str)]) -> Vec<ExtendedProperty> {
        list.iter()
            .map(|(id, v)| ExtendedProperty {
                id: id.to_string(),
                value: Some(v.to_string()),
            })
            .collect()
    }

    #[test]
    fn replied_from_each_source() {
        let r = |l: &[(&str, &str)]| replied_state(&props(l)).replied;
        assert!(!r(&[]));
        assert!(r(&[("Integer 0x1080", "261")]));
        assert!(r(&[("Integer 0x1080", "262")]));
        assert!(!r(&[("Integer 0x1080", "256")]));
        assert!(!r(&[("Integer 0x1080", "-1")]));
        assert!(!r(&[("Integer 0x1080", "4294967295")]));
        for v in ["102", "103", "104"] {
            assert!(r(&[("Integer 0x1081", v)]), "{v}");
        }
        assert!(!r(&[("Integer 0x1081", "0")]));
        assert!(!r(&[("Integer 0x1081", "105")]));
        assert!(r(&[("Integer 0xe17", "512")]));
        assert!(r(&[("integer 0xE17", "513")]));
        assert!(!r(&[("Integer 0xe17", "0")]));
        assert!(!r(&[("Integer 0xe17", "1")]));
        assert!(replied_state(&props(&[("Integer 0xe17", "512")])).status_answered);
        // Other types with the same tag do not count.
        assert!(!r(&[("String 0x1080", "261")]));
        assert!(!r(&[("Integer 0x1080", "junk")]));
    }

    #[test]
    fn flags_of_message() {
        let m: DeltaMessage = serde_json::from_str(
            r#"{"id":"x","isRead":true,"flag":{"flagStatus":"flagged"},
                "singleValueExtendedProperties":[{"id":"Integer 0x1081","value":"102"}]}"#,
        )
        .unwrap();
        assert_eq!(
            flags_of(&m).0,
            Flags::READ | Flags::FLAGGED | Flags::REPLIED
        );
        let m: DeltaMessage =
            serde_json::from_str(r#"{"id":"x","flag":{"flagStatus":"complete"}}"#).unwrap();
        assert_eq!(flags_of(&m).0, Flags::NONE);
    }

    #[test]
    fn patches() {
        let j = |p: MessagePatch| serde_json::to_value(p).unwrap();
        assert_eq!(
            j(patch_for(
                Flags::READ | Flags::FLAGGED,
                Flags::NONE,
                false,
                0
            )),
            serde_json::json!({"isRead": true, "flag": {"flagStatus": "flagged"}})
        );
        assert_eq!(
            j(patch_for(
                Flags::NONE,
                Flags::READ | Flags::FLAGGED,
                true,
                0
            )),
            serde_json::json!({"isRead": false, "flag": {"flagStatus": "notFlagged"}})
        );
        assert_eq!(
            j(patch_for(Flags::REPLIED, Flags::NONE, true, 1_714_558_830)),
            serde_json::json!({"singleValueExtendedProperties": [
                {"id": "Integer 0x1081", "value": "103"},
                {"id": "SystemTime 0x1082", "value": "2024-05-01T10:20:30Z"},
                {"id": "Integer 0x1080", "value": "261"}]})
        );
        assert_eq!(
            j(patch_for(Flags::NONE, Flags::REPLIED, true, 0)),
            serde_json::json!({"singleValueExtendedProperties": [
                {"id": "Integer 0x1080", "value": "256"},
                {"id": "Integer 0x1081", "value": "0"}]})
        );
        // Clearing replied while marking unread uses the new read state.
        assert_eq!(
            j(patch_for(
                Flags::NONE,
                Flags::REPLIED | Flags::READ,
                true,
                0
            )),
            serde_json::json!({"isRead": false, "singleValueExtendedProperties": [
                {"id": "Integer 0x1080", "value": "-1"},
                {"id": "Integer 0x1081", "value": "0"}]})
        );
        assert!(patch_for(Flags::DELETED, Flags::NONE, true, 0).is_empty());
    }

    #[test]
    fn patch_then_read_back_round_trips() {
        // What a PATCH writes, read back as the listing would see it.
        for (set, clear, read) in [
            (Flags::REPLIED, Flags::NONE, true),
            (Flags::NONE, Flags::REPLIED, true),
            (Flags::NONE, Flags::REPLIED, false),
        ] {
            let p = patch_for(set, clear, read, 0);
            let mut have = props(&[("Integer 0x1080", "262"), ("Integer 0x1081", "104")]);
            for w in p.single_value_extended_properties {
                have.retain(|h| !same_prop(&h.id, &w.id));
                have.push(w);
            }
            assert_eq!(replied_state(&have).replied, set.contains(Flags::REPLIED));
        }
    }
}
