//! Syntax rules shared by the contract and the config: Kubernetes names, label keys and values, IANA
//! service names and NATS subject tokens. Pure functions; each answers "is this valid" and, where a caller
//! reports it, the rule in words.

/// A DNS-1123 label: what Kubernetes requires of namespace names.
pub const DNS1123_LABEL_RULE: &str = "a DNS-1123 label: 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit";
/// A DNS-1123 subdomain: what Kubernetes requires of most object names.
pub const DNS1123_SUBDOMAIN_RULE: &str =
    "a DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels";
/// A resource manager's name is one NATS subject token.
pub const SUBJECT_TOKEN_RULE: &str = "1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'";

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `s` is a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
}

/// Whether `s` is a DNS-1123 subdomain (dot-separated labels, at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Whether `s` is a NATS subject token made of `A-Z a-z 0-9 _ -`, 1 to 64 characters.
pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Whether `s` is the name part of a label key, or a non-empty label value: at most 63 characters of
/// alphanumerics, `-`, `_` and `.`, starting and ending with an alphanumeric.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Whether `s` is a valid label key: an optional DNS-subdomain prefix and `/`, then a name.
pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

/// Whether `s` is a valid label value (empty, or a qualified name part).
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

/// Whether `s` is an IANA service name as Kubernetes checks port names: 1 to 15 characters of a-z, 0-9 and
/// '-', at least one letter, no leading, trailing or doubled '-'.
pub fn is_iana_svc_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

/// Whether `s` is 1 to 255 printable ASCII characters without whitespace: the contract's allocation id.
pub fn is_allocation_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|c| c.is_ascii_graphic())
}

/// Whether `s` is an RFC 3339 timestamp naming a real instant: `YYYY-MM-DDTHH:MM:SS`, an optional fraction
/// of a second, then `Z` or a `+HH:MM`/`-HH:MM` offset (`T` and `Z` in either case). Stricter than
/// `jiff::Timestamp`'s parser, which also reads other ISO 8601 forms (a space for `T`, no seconds, `+0100`,
/// a bracketed time zone).
pub fn is_rfc3339_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |at: usize, n: usize| {
        b.get(at..at + n)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let shape = digits(0, 4)
        && b.get(4) == Some(&b'-')
        && digits(5, 2)
        && b.get(7) == Some(&b'-')
        && digits(8, 2)
        && matches!(b.get(10), Some(b'T' | b't'))
        && digits(11, 2)
        && b.get(13) == Some(&b':')
        && digits(14, 2)
        && b.get(16) == Some(&b':')
        && digits(17, 2);
    if !shape {
        return false;
    }
    let mut end = 19;
    if b.get(end) == Some(&b'.') {
        let first = end + 1;
        end = first;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == first {
            return false;
        }
    }
    // Every byte before `end` is ASCII, so `end` is a character boundary.
    let offset = &s[end..];
    let o = offset.as_bytes();
    let two = |d: &[u8], max: u8| {
        d.iter().all(u8::is_ascii_digit) && (d[0] - b'0') * 10 + (d[1] - b'0') <= max
    };
    let offset_ok = matches!(offset, "Z" | "z")
        || (o.len() == 6
            && matches!(o[0], b'+' | b'-')
            && two(&o[1..3], 23)
            && o[3] == b':'
            && two(&o[4..6], 59));
    if !offset_ok {
        return false;
    }
    // RFC 3339 allows any number of fraction digits; jiff reads at most nine, and the rest add nothing.
    let kept = end.min(19 + 1 + 9);
    format!("{}{offset}", &s[..kept])
        .parse::<jiff::Timestamp>()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains_follow_kubernetes() {
        assert!(is_dns1123_label("gateway-system"));
        assert!(!is_dns1123_label("Gateway"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("itg.example.com"));
        assert!(!is_dns1123_subdomain("itg..com"));
    }

    #[test]
    fn label_keys_allow_a_prefix_and_values_may_be_empty() {
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("determined.ai/allocation_id"));
        assert!(!is_label_key("/name"));
        assert!(!is_label_key("a/b/c"));
        assert!(is_label_value(""));
        assert!(is_label_value("6f1c2d3e.1"));
        assert!(!is_label_value("has space"));
        assert!(!is_label_value(&"v".repeat(64)));
    }

    #[test]
    fn iana_names_need_a_letter_and_no_double_dash() {
        assert!(is_iana_svc_name("jupyter"));
        assert!(is_iana_svc_name("tb-6006"));
        assert!(!is_iana_svc_name("6006"));
        assert!(!is_iana_svc_name("a--b"));
        assert!(!is_iana_svc_name("sixteen-chars-xx"));
    }

    #[test]
    fn subject_tokens_refuse_wildcards_and_dots() {
        assert!(is_subject_token("k8s-west_2"));
        for bad in ["", "a.b", "*", ">", "a b", &"x".repeat(65)] {
            assert!(!is_subject_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn allocation_ids_are_printable_ascii_without_spaces() {
        assert!(is_allocation_id("6f1c2d3e-0000-4000-8000-000000000000.1"));
        assert!(!is_allocation_id("a b"));
        assert!(!is_allocation_id("é"));
        assert!(!is_allocation_id(&"a".repeat(256)));
    }
}
