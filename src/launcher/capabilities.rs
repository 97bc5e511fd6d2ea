//! The container's capability set: Docker's default set, changed by
//! `--cap-add` and `--cap-drop`, and applied to the bounding, permitted,
//! effective and inheritable sets before `execve`.

use caps::{CapSet, Capability, CapsHashSet};

/// The capability set the container gets.
pub type Capabilities = CapsHashSet;

/// Docker's default capabilities (moby `oci/defaults.go`,
/// `DefaultCapabilities`): everything else, `CAP_SYS_ADMIN` included, is
/// dropped from every set.
pub const DOCKER_DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// An unknown capability name.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid capability {0:?} in --cap-add or --cap-drop: use a name from capabilities(7) such as SYS_ADMIN or CAP_NET_ADMIN, or ALL"
)]
pub struct CapabilityError(String);

/// Computes the container's set as Docker does: start from the default
/// set (from nothing with `--cap-drop ALL`, from every capability with
/// `--cap-add ALL`), remove the dropped ones, then add the added ones.
pub fn resolve(add: &[String], drop: &[String]) -> Result<Capabilities, CapabilityError> {
    let add = parse_all(add)?;
    let drop = parse_all(drop)?;
    let mut set: Capabilities = DOCKER_DEFAULT.into_iter().collect();
    if drop.iter().any(Option::is_none) {
        set.clear();
    }
    if add.iter().any(Option::is_none) {
        set = caps::all();
    }
    for cap in drop.iter().flatten() {
        set.remove(cap);
    }
    set.extend(add.iter().flatten());
    Ok(set)
}

/// Parses names; `None` stands for `ALL`.
fn parse_all(names: &[String]) -> Result<Vec<Option<Capability>>, CapabilityError> {
    names.iter().map(|name| parse(name)).collect()
}

fn parse(name: &str) -> Result<Option<Capability>, CapabilityError> {
    let upper = name.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse::<Capability>()
        .map(Some)
        .map_err(|_| CapabilityError(name.to_string()))
}

/// Drops every capability outside `keep` from the bounding set, so that no
/// later `execve` (of a setuid binary or one with file capabilities) can
/// regain it. Needs `CAP_SETPCAP`.
pub fn limit_bounding_set(keep: &Capabilities) -> Result<(), caps::errors::CapsError> {
    let bounding = caps::read(None, CapSet::Bounding)?;
    for cap in bounding.difference(keep) {
        caps::drop(None, CapSet::Bounding, *cap)?;
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets to `keep` and
/// clears the ambient set. For a uid other than 0, `execve` then clears
/// the permitted and effective sets, as it does for Docker's non-root
/// users.
pub fn set_process_sets(keep: &Capabilities) -> Result<(), caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: Capabilities = keep.intersection(&permitted).copied().collect();
    // The effective set must stay a subset of the permitted set at every
    // step, so it shrinks first.
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    caps::set(None, CapSet::Inheritable, &keep)?;
    caps::clear(None, CapSet::Ambient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn default_set() {
        let set = resolve(&[], &[]).unwrap();
        assert_eq!(set.len(), 14);
        assert!(set.contains(&Capability::CAP_CHOWN));
        assert!(!set.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!set.contains(&Capability::CAP_NET_ADMIN));
    }

    #[test]
    fn add_and_drop() {
        let set = resolve(&names(&["sys_admin", "CAP_NET_ADMIN"]), &names(&["chown"])).unwrap();
        assert!(set.contains(&Capability::CAP_SYS_ADMIN));
        assert!(set.contains(&Capability::CAP_NET_ADMIN));
        assert!(!set.contains(&Capability::CAP_CHOWN));
        assert_eq!(set.len(), 15);
    }

    #[test]
    fn drop_all_then_add() {
        let set = resolve(&names(&["KILL"]), &names(&["ALL"])).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [Capability::CAP_KILL]);
    }

    #[test]
    fn add_all_then_drop() {
        let set = resolve(&names(&["all"]), &names(&["SYS_MODULE"])).unwrap();
        assert!(set.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!set.contains(&Capability::CAP_SYS_MODULE));
    }

    #[test]
    fn unknown_name() {
        let message = resolve(&names(&["FLY"]), &[]).unwrap_err().to_string();
        assert!(message.contains("\"FLY\""), "{message}");
        assert!(message.contains("SYS_ADMIN"), "{message}");
    }
}
