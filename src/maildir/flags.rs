//! The maildir file-name flag codec (behavior.md §3): `base:2,LETTERS`,
//! where R, S, F and T map to [`Flags`] and every other letter is kept as is.
//! Pure functions, no IO.

use crate::types::Flags;

/// Which of a maildir's message directories a file lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subdir {
    /// `cur/`: messages the MUA has seen, or that carry any flag letter.
    Cur,
    /// `new/`: messages with no info letters at all.
    New,
}

impl Subdir {
    /// The directory name, `"cur"` or `"new"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subdir::Cur => "cur",
            Subdir::New => "new",
        }
    }
}

/// The separator between a base name and its info letters.
const INFO_SEP: &str = ":2,";

/// Flag bits and their maildir letters.
const LETTERS: [(Flags, char); 4] = [
    (Flags::REPLIED, 'R'),
    (Flags::READ, 'S'),
    (Flags::FLAGGED, 'F'),
    (Flags::DELETED, 'T'),
];

/// The flag bit a letter stands for, if it is one of R, S, F, T.
fn flag_of(letter: char) -> Option<Flags> {
    LETTERS.iter().find(|(_, l)| *l == letter).map(|(f, _)| *f)
}

/// The base of a maildir file name: the name without its `:2,` info.
pub fn base_name(name: &str) -> &str {
    name.split_once(INFO_SEP).map_or(name, |(base, _)| base)
}

/// Splits a maildir file name into its base, its flags and its other info
/// letters (sorted, without duplicates). A name without `:2,` has no flags.
pub fn parse_name(name: &str) -> (&str, Flags, String) {
    let Some((base, info)) = name.split_once(INFO_SEP) else {
        return (name, Flags::NONE, String::new());
    };
    let mut flags = Flags::NONE;
    let mut other: Vec<char> = Vec::new();
    for c in info.chars() {
        match flag_of(c) {
            Some(f) => flags |= f,
            None => other.push(c),
        }
    }
    other.sort_unstable();
    other.dedup();
    (base, flags, other.into_iter().collect())
}

/// The directory and file name for a message with this base, flags and other
/// letters: `new/base` when there is no letter at all, else
/// `cur/base:2,<letters in ASCII order>`. R/S/F/T in `other` are ignored;
/// `flags` alone decides them.
pub fn encode_name(base: &str, flags: Flags, other: &str) -> (Subdir, String) {
    let mut letters: Vec<char> = other.chars().filter(|c| flag_of(*c).is_none()).collect();
    letters.extend(
        LETTERS
            .iter()
            .filter(|(f, _)| flags.contains(*f))
            .map(|(_, l)| *l),
    );
    if letters.is_empty() {
        return (Subdir::New, base.to_string());
    }
    letters.sort_unstable();
    letters.dedup();
    let mut name = String::with_capacity(base.len() + INFO_SEP.len() + letters.len());
    name.push_str(base);
    name.push_str(INFO_SEP);
    name.extend(letters);
    (Subdir::Cur, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(
            parse_name("123.abc"),
            ("123.abc", Flags::NONE, String::new())
        );
        assert_eq!(
            parse_name("123.abc:2,"),
            ("123.abc", Flags::NONE, String::new())
        );
        assert_eq!(
            parse_name("b:2,FPRSTa"),
            ("b", Flags::ALL, "Pa".to_string())
        );
        assert_eq!(parse_name("b:2,DS"), ("b", Flags::READ, "D".to_string()));
        assert_eq!(
            encode_name("b", Flags::NONE, ""),
            (Subdir::New, "b".to_string())
        );
        assert_eq!(
            encode_name("b", Flags::ALL, ""),
            (Subdir::Cur, "b:2,FRST".to_string())
        );
        assert_eq!(
            encode_name("b", Flags::READ | Flags::REPLIED, "P"),
            (Subdir::Cur, "b:2,PRS".to_string())
        );
        // Only "other" letters left: stays in cur/ with them.
        assert_eq!(
            encode_name("b", Flags::NONE, "D"),
            (Subdir::Cur, "b:2,D".to_string())
        );
        // Flag letters passed as "other" do not override the flags.
        assert_eq!(
            encode_name("b", Flags::NONE, "ST"),
            (Subdir::New, "b".to_string())
        );
    }

    /// A base name as maildir writers produce them: no ':' or '/', no
    /// leading dot.
    fn base_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_][A-Za-z0-9._,=-]{0,40}"
    }

    /// A set of non-flag letters, as the codec returns them (sorted, unique).
    fn other_strategy() -> impl Strategy<Value = String> {
        proptest::collection::btree_set(
            prop_oneof![
                Just('D'),
                Just('P'),
                Just('a'),
                Just('z'),
                Just('Q'),
                Just('b')
            ],
            0..5,
        )
        .prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        #[test]
        fn round_trip(base in base_strategy(), bits in 0u8..16, other in other_strategy()) {
            let flags = Flags(bits);
            let (sub, name) = encode_name(&base, flags, &other);
            let (b, f, o) = parse_name(&name);
            prop_assert_eq!(b, base.as_str());
            prop_assert_eq!(f, flags);
            prop_assert_eq!(&o, &other);
            if flags.is_empty() && other.is_empty() {
                prop_assert_eq!(sub, Subdir::New);
                prop_assert!(!name.contains(":2,"));
            } else {
                prop_assert_eq!(sub, Subdir::Cur);
                let letters = name.split_once(":2,").unwrap().1;
                let mut sorted: Vec<char> = letters.chars().collect();
                sorted.sort_unstable();
                prop_assert_eq!(letters.chars().collect::<Vec<_>>(), sorted);
            }
        }

        #[test]
        fn changing_flags_preserves_other_letters(
            base in base_strategy(), bits in 0u8..16, new_bits in 0u8..16, other in other_strategy()
        ) {
            let (_, name) = encode_name(&base, Flags(bits), &other);
            let (b, _, o) = parse_name(&name);
            let (_, renamed) = encode_name(b, Flags(new_bits), &o);
            let (b2, f2, o2) = parse_name(&renamed);
            prop_assert_eq!(b2, base.as_str());
            prop_assert_eq!(f2, Flags(new_bits));
            prop_assert_eq!(o2, other);
        }

        #[test]
        fn parse_accepts_any_letter_order(base in base_strategy(), letters in "[A-Za-z]{0,8}") {
            let name = format!("{base}:2,{letters}");
            let (b, f, o) = parse_name(&name);
            prop_assert_eq!(b, base.as_str());
            for (flag, l) in LETTERS {
                prop_assert_eq!(f.contains(flag), letters.contains(l));
            }
            for c in letters.chars().filter(|c| !"RSFT".contains(*c)) {
                prop_assert!(o.contains(c));
            }
        }
    }
}
