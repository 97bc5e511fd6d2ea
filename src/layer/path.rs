//! Entry names of a layer tar, checked so that no entry lands outside the
//! layer directory.
//!
//! A name is split at `/`. Empty and `.` components are dropped, so
//! `./etc//passwd` is `etc/passwd` and `./` is the layer's root. A name
//! that starts with `/` or contains a `..` component is rejected, and so is a
//! component longer than 255 bytes or a name with a NUL byte. Symlinks met
//! on the way to an entry are handled where the entry is created: see
//! `import`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::real::NAME_MAX;

/// Splits tar entry name `raw` into checked components. An empty result
/// names the layer's root.
pub fn components(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.is_empty() {
        return Err("the name is empty".to_string());
    }
    if raw.starts_with(b"/") {
        return Err("absolute names are not allowed in a layer".to_string());
    }
    if raw.contains(&0) {
        return Err("the name contains a NUL byte".to_string());
    }
    let mut parts = Vec::new();
    for part in raw.split(|&byte| byte == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err("'..' components are not allowed in a layer".to_string()),
            _ if part.len() > NAME_MAX => {
                return Err(format!(
                    "a component is {} bytes long, more than the {NAME_MAX} a name may have",
                    part.len()
                ));
            }
            _ => parts.push(OsStr::from_bytes(part).to_os_string()),
        }
    }
    Ok(parts)
}

/// Formats components back into a name for messages.
pub fn display(parts: &[OsString]) -> String {
    if parts.is_empty() {
        return "./".to_string();
    }
    let joined: Vec<_> = parts.iter().map(|part| part.to_string_lossy()).collect();
    joined.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(raw: &str) -> Result<Vec<String>, String> {
        components(raw.as_bytes()).map(|parts| {
            parts
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn components_normalised() {
        assert_eq!(names("./etc//passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(names("usr/bin/").unwrap(), ["usr", "bin"]);
        assert!(names("./").unwrap().is_empty());
        assert!(names(".").unwrap().is_empty());
        assert_eq!(names("a/./b").unwrap(), ["a", "b"]);
        assert_eq!(names("..a/b..").unwrap(), ["..a", "b.."]);
    }

    #[test]
    fn components_rejected() {
        for raw in ["", "/etc/passwd", "../x", "a/../../x", "a/..", "a\0b"] {
            assert!(names(raw).is_err(), "{raw:?} was accepted");
        }
        let long = "x".repeat(256);
        assert!(names(&long).is_err());
        assert!(names(&"x".repeat(255)).is_ok());
    }
}
