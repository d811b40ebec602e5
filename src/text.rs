//! Small string rules shared by routing, config, token validation, device facts and the audit
//! trail: the one GUID check and the one UTF-8-safe truncation. Pure functions; they must never
//! allocate more than their result or panic on any input.

/// Lower-cased GUID if `s` is exactly 8-4-4-4-12 hex digits (no braces, no surrounding space).
pub fn guid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let well_formed = b.iter().enumerate().all(|(i, c)| {
        if matches!(i, 8 | 13 | 18 | 23) {
            *c == b'-'
        } else {
            c.is_ascii_hexdigit()
        }
    });
    well_formed.then(|| s.to_ascii_lowercase())
}

/// The longest prefix of `s` of at most `max` bytes that does not split a UTF-8 character.
pub fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`truncated`], in place.
pub fn truncate_in_place(s: &mut String, max: usize) {
    let keep = truncated(s, max).len();
    s.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_accepts_only_the_hyphenated_form_and_lowercases() {
        assert_eq!(
            guid("F61DC341-C9C9-40C1-ABBD-6997016F4C9E").as_deref(),
            Some("f61dc341-c9c9-40c1-abbd-6997016f4c9e")
        );
        for bad in [
            "",
            "f61dc341c9c940c1abbd6997016f4c9e",
            "{f61dc341-c9c9-40c1-abbd-6997016f4c9e}",
            "f61dc341-c9c9-40c1-abbd-6997016f4c9g",
            "f61dc341-c9c9-40c1-abbd-6997016f4c9e ",
            "f61dc341_c9c9-40c1-abbd-6997016f4c9e",
            "f61dc341-c9c9-40c1-abbd-6997016f4c9é",
        ] {
            assert_eq!(guid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncated("abc", 5), "abc");
        assert_eq!(truncated("abcdef", 3), "abc");
        // 'é' is two bytes: cutting at 2 would split it.
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("€", 2), "");
        let mut s = String::from("aéb");
        truncate_in_place(&mut s, 2);
        assert_eq!(s, "a");
    }
}
