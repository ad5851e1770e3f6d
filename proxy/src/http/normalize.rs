//! Request path normalisation (RFC 3986 6.2.2), applied once to every
//! request before routing, so that a route sees the path the app will act
//! on: `/public/../admin` is `/admin`, never something under `/public`.
//!
//! In order: percent-encoded unreserved characters are decoded (`%2e` is
//! `.`, `%41` is `A`) and every other escape gets uppercase hex; then
//! dot-segments are removed (RFC 3986 5.2.4), `..` above the root staying at
//! the root; then, if configured, runs of `/` are merged. An encoded slash
//! (`%2F`) or backslash (`%5C`) stays encoded and is part of its segment, as
//! Envoy does by default: the app decides what it means. A path the proxy
//! cannot read one way only (a bad escape, a raw backslash, which browsers
//! and some servers read as `/`) is refused.
//!
//! This module owns the path only: the query is never touched, and what the
//! request is routed on is `route`'s business.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("the path has a bad percent-escape at byte {0}: encode % as %25")]
    BadEscape(usize),
    #[error("the path has a raw backslash, which servers read differently: encode it as %5C")]
    Backslash,
    #[error("the path does not start with /")]
    NotAbsolute,
}

/// How paths are normalised (`http.pathNormalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathOptions {
    pub(crate) merge_slashes: bool,
}

/// The normalised form of `path` (an origin-form path, no query); borrowed
/// when it is already normal, as nearly every path is.
pub(crate) fn normalize_path(path: &str, options: PathOptions) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    let decoded = decode_unreserved(path)?;
    let mut out = remove_dot_segments(&decoded);
    if options.merge_slashes {
        out = merge_slashes(out);
    }
    Ok(match out {
        // Nothing changed: hand back the caller's string.
        Cow::Borrowed(_) if matches!(decoded, Cow::Borrowed(_)) => Cow::Borrowed(path),
        other => Cow::Owned(other.into_owned()),
    })
}

/// RFC 3986 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes escapes of unreserved characters and uppercases the hex of the
/// rest (RFC 3986 6.2.2.1 and 6.2.2.2).
fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'%') else {
        return Ok(Cow::Borrowed(path));
    };
    // Bytes, not chars: a path may carry raw UTF-8, copied as it is. Only
    // ASCII escapes are rewritten, into ASCII, so the result stays UTF-8.
    let mut out = Vec::with_capacity(path.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    let mut changed = false;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadEscape(i));
        };
        let value = hi * 16 + lo;
        if is_unreserved(value) {
            out.push(value);
            changed = true;
        } else {
            out.extend_from_slice(&[b'%', HEX_UPPER[usize::from(hi)], HEX_UPPER[usize::from(lo)]]);
            changed |= bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase);
        }
        i += 3;
    }
    if !changed {
        return Ok(Cow::Borrowed(path));
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadEscape(first))
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// RFC 3986 5.2.4, on an absolute path. Borrowed when there is no dot
/// segment.
fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    let has_dot_segment = path
        .split('/')
        .skip(1)
        .any(|segment| segment == "." || segment == "..");
    if !has_dot_segment {
        return Cow::Borrowed(path);
    }
    // Segments of the output; a path `/a/b/` is ["a", "b", ""].
    let mut out: Vec<&str> = Vec::new();
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {
                // `/a/.` is `/a/`: a trailing dot segment leaves a slash.
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            _ => out.push(segment),
        }
    }
    let mut result = String::with_capacity(path.len());
    for segment in &out {
        result.push('/');
        result.push_str(segment);
    }
    if result.is_empty() {
        result.push('/');
    }
    Cow::Owned(result)
}

/// Collapses runs of `/` into one.
fn merge_slashes(path: Cow<'_, str>) -> Cow<'_, str> {
    if !path.contains("//") {
        return path;
    }
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        out.push(c);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: PathOptions = PathOptions {
        merge_slashes: false,
    };
    const MERGE: PathOptions = PathOptions {
        merge_slashes: true,
    };

    fn norm(path: &str) -> String {
        normalize_path(path, PLAIN)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .into_owned()
    }

    /// RFC 3986 5.4.1 and 5.4.2: each relative reference against the base
    /// `http://a/b/c/d;p?q`, merged as 5.2.3 says (the base path up to its
    /// last `/`, then the reference), must normalise to the RFC's result.
    #[test]
    fn rfc_3986_reference_resolution_examples() {
        let base = "/b/c/";
        let cases = [
            ("g", "/b/c/g"),
            ("./g", "/b/c/g"),
            ("g/", "/b/c/g/"),
            (";x", "/b/c/;x"),
            ("g;x", "/b/c/g;x"),
            ("", "/b/c/"),
            (".", "/b/c/"),
            ("./", "/b/c/"),
            ("..", "/b/"),
            ("../", "/b/"),
            ("../g", "/b/g"),
            ("../..", "/"),
            ("../../", "/"),
            ("../../g", "/g"),
            // 5.4.2, abnormal examples.
            ("../../../g", "/g"),
            ("../../../../g", "/g"),
            ("g.", "/b/c/g."),
            (".g", "/b/c/.g"),
            ("g..", "/b/c/g.."),
            ("..g", "/b/c/..g"),
            ("./../g", "/b/g"),
            ("./g/.", "/b/c/g/"),
            ("g/./h", "/b/c/g/h"),
            ("g/../h", "/b/c/h"),
            ("g;x=1/./y", "/b/c/g;x=1/y"),
            ("g;x=1/../y", "/b/c/y"),
        ];
        for (reference, expected) in cases {
            let merged = format!("{base}{reference}");
            assert_eq!(norm(&merged), expected, "reference {reference:?}");
        }
        // Absolute-path references are not merged.
        assert_eq!(norm("/./g"), "/g");
        assert_eq!(norm("/../g"), "/g");
    }

    #[test]
    fn dot_segments_never_climb_above_the_root() {
        assert_eq!(norm("/public/../admin"), "/admin");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/../../.."), "/");
        assert_eq!(norm("/../../admin"), "/admin");
        assert_eq!(norm("/a/b/../../../../c/"), "/c/");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/a/.."), "/");
    }

    #[test]
    fn encoded_dots_are_dots() {
        assert_eq!(norm("/public/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/public/%2E%2E/admin"), "/admin");
        assert_eq!(norm("/public/.%2e/admin"), "/admin");
        assert_eq!(norm("/public/%2e/admin"), "/public/admin");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_the_rest_uppercased() {
        assert_eq!(norm("/%41%62c%2D%5f%7E%30"), "/Abc-_~0");
        assert_eq!(norm("/a%20b"), "/a%20b");
        assert_eq!(norm("/a%3fb%3Fc"), "/a%3Fb%3Fc");
        assert_eq!(norm("/%e2%82%ac"), "/%E2%82%AC");
        assert_eq!(norm("/100%25"), "/100%25");
        assert_eq!(norm("/caf\u{e9}/%41"), "/caf\u{e9}/A");
    }

    #[test]
    fn encoded_slash_and_backslash_stay_encoded_inside_their_segment() {
        assert_eq!(norm("/a%2fb"), "/a%2Fb");
        assert_eq!(norm("/public/..%2Fadmin"), "/public/..%2Fadmin");
        assert_eq!(norm("/public/%2e%2e%2fadmin"), "/public/..%2Fadmin");
        assert_eq!(norm("/a%5cb"), "/a%5Cb");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/a/b",
            "/a//b",
            "/a%20b",
            "/a%2Fb",
            "/.well-known/x",
            "/a/b/",
        ] {
            assert!(
                matches!(normalize_path(path, PLAIN), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn slashes_merge_only_when_asked() {
        assert_eq!(norm("/a//b///c"), "/a//b///c");
        let merged = |p: &str| normalize_path(p, MERGE).unwrap().into_owned();
        assert_eq!(merged("/a//b///c"), "/a/b/c");
        assert_eq!(merged("//a/"), "/a/");
        assert_eq!(merged("/a//../b"), "/a/b");
        assert_eq!(merged("/a/b"), "/a/b");
    }

    #[test]
    fn paths_that_cannot_be_read_one_way_are_refused() {
        assert_eq!(normalize_path("/a%zz", PLAIN), Err(PathError::BadEscape(2)));
        assert_eq!(normalize_path("/a%4", PLAIN), Err(PathError::BadEscape(2)));
        assert_eq!(normalize_path("/a%", PLAIN), Err(PathError::BadEscape(2)));
        assert_eq!(normalize_path("/%%41", PLAIN), Err(PathError::BadEscape(1)));
        assert_eq!(
            normalize_path("/a\\..\\admin", PLAIN),
            Err(PathError::Backslash)
        );
        assert_eq!(normalize_path("a/b", PLAIN), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("", PLAIN), Err(PathError::NotAbsolute));
    }
}
