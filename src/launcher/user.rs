//! The `--user UID[:GID]` value and its lookup in the container's
//! `/etc/passwd` and `/etc/group`.

use std::path::PathBuf;

/// A user or group given as a number or a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Id {
    Number(u32),
    Name(String),
}

/// The parsed `--user` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    pub user: Id,
    pub group: Option<Id>,
}

/// Credentials the command runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the primary group alone, as Docker sets it
    /// when /etc/group lists none for the user.
    pub groups: Vec<u32>,
    /// The passwd entry's home directory, or `/` without one.
    pub home: PathBuf,
}

/// An invalid `--user` value, or a name the container does not define.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error(
        "invalid --user {0:?}: write UID[:GID] with numbers or names, such as 1000:1000 or nobody"
    )]
    Syntax(String),
    #[error(
        "--user: no user {0:?} in the container's /etc/passwd; give a numeric uid or add the user to the image"
    )]
    UnknownUser(String),
    #[error(
        "--user: no group {0:?} in the container's /etc/group; give a numeric gid or add the group to the image"
    )]
    UnknownGroup(String),
}

impl UserSpec {
    /// Returns the default user, root.
    pub fn root() -> UserSpec {
        UserSpec {
            user: Id::Number(0),
            group: None,
        }
    }

    /// Parses `USER[:GROUP]`, each a number or a name.
    pub fn parse(text: &str) -> Result<UserSpec, UserError> {
        let (user, group) = match text.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (text, None),
        };
        let parse_id = |text: &str| -> Result<Id, UserError> {
            if text.is_empty() || text.contains(['\0', '\n']) {
                return Err(UserError::Syntax(text.to_string()));
            }
            Ok(match text.parse::<u32>() {
                Ok(number) => Id::Number(number),
                Err(_) => Id::Name(text.to_string()),
            })
        };
        let user = parse_id(user).map_err(|_| UserError::Syntax(text.to_string()))?;
        let group = group
            .map(parse_id)
            .transpose()
            .map_err(|_| UserError::Syntax(text.to_string()))?;
        Ok(UserSpec { user, group })
    }

    /// Resolves names against the contents of the container's /etc/passwd
    /// and /etc/group (either may be empty). Without a group, the gid is
    /// the user's passwd entry's, or 0 for a uid the file does not list.
    pub fn resolve(&self, passwd: &str, group: &str) -> Result<Credentials, UserError> {
        let users = parse_colon_file(passwd, 6);
        let entry = users.iter().find(|fields| match &self.user {
            Id::Number(uid) => fields[2].parse() == Ok(*uid),
            Id::Name(name) => fields[0] == name,
        });
        let uid = match (&self.user, entry) {
            (Id::Number(uid), _) => *uid,
            (Id::Name(_), Some(fields)) => fields[2].parse().map_err(|_| self.unknown_user())?,
            (Id::Name(_), None) => return Err(self.unknown_user()),
        };
        let passwd_gid = entry.and_then(|fields| fields[3].parse::<u32>().ok());
        let gid = match &self.group {
            Some(Id::Number(gid)) => *gid,
            Some(Id::Name(name)) => parse_colon_file(group, 3)
                .iter()
                .find(|fields| fields[0] == name)
                .and_then(|fields| fields[2].parse().ok())
                .ok_or_else(|| UserError::UnknownGroup(name.clone()))?,
            None => passwd_gid.unwrap_or(0),
        };
        let home = entry
            .map(|fields| PathBuf::from(fields[5]))
            .filter(|home| home.is_absolute())
            .unwrap_or_else(|| PathBuf::from("/"));
        Ok(Credentials {
            uid,
            gid,
            groups: vec![gid],
            home,
        })
    }

    fn unknown_user(&self) -> UserError {
        match &self.user {
            Id::Name(name) => UserError::UnknownUser(name.clone()),
            Id::Number(uid) => UserError::UnknownUser(uid.to_string()),
        }
    }
}

/// Splits the lines of a passwd or group file into fields, keeping lines
/// with more than `min_fields` fields and skipping comments.
fn parse_colon_file(text: &str, min_fields: usize) -> Vec<Vec<&str>> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(|fields| fields.len() > min_fields)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # comment\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                          app:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nstaff:x:50:app\n";

    fn resolve(text: &str) -> Result<Credentials, UserError> {
        UserSpec::parse(text)?.resolve(PASSWD, GROUP)
    }

    #[test]
    fn numeric() {
        let creds = resolve("1234:5678").unwrap();
        assert_eq!((creds.uid, creds.gid), (1234, 5678));
        assert_eq!(creds.groups, [5678]);
        assert_eq!(creds.home, PathBuf::from("/"));
    }

    #[test]
    fn numeric_uid_listed_takes_gid_and_home() {
        let creds = resolve("1000").unwrap();
        assert_eq!((creds.uid, creds.gid), (1000, 1001));
        assert_eq!(creds.home, PathBuf::from("/home/app"));
    }

    #[test]
    fn names() {
        let creds = resolve("nobody:staff").unwrap();
        assert_eq!((creds.uid, creds.gid), (65534, 50));
        assert_eq!(creds.home, PathBuf::from("/nonexistent"));
    }

    #[test]
    fn root_default() {
        let creds = UserSpec::root().resolve(PASSWD, GROUP).unwrap();
        assert_eq!((creds.uid, creds.gid), (0, 0));
        assert_eq!(creds.home, PathBuf::from("/root"));
    }

    #[test]
    fn root_without_passwd() {
        let creds = UserSpec::root().resolve("", "").unwrap();
        assert_eq!((creds.uid, creds.gid), (0, 0));
        assert_eq!(creds.home, PathBuf::from("/"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            resolve("ghost"),
            Err(UserError::UnknownUser("ghost".into()))
        );
        assert_eq!(
            resolve("0:ghosts"),
            Err(UserError::UnknownGroup("ghosts".into()))
        );
        assert_eq!(UserSpec::parse(""), Err(UserError::Syntax("".into())));
        assert_eq!(UserSpec::parse("1:"), Err(UserError::Syntax("1:".into())));
        assert_eq!(UserSpec::parse(":1"), Err(UserError::Syntax(":1".into())));
    }
}
