//! The user an image asks to run as (`USER` in its config), resolved to a
//! numeric uid and gid through the image's own `/etc/passwd` and
//! `/etc/group`. Comparing names is not enough: `USER toor` (uid 0 in the
//! image's passwd), `USER 00` or `USER 0:0` are all root.

/// A numeric uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

impl UserIds {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Whether resolving `user` needs the image's passwd (a name, or a uid
/// whose group must be looked up) and group file (a group name).
pub fn needs_files(user: &str) -> (bool, bool) {
    let (u, g) = split(user);
    let passwd = !is_number(u) || g.is_none();
    let group = g.is_some_and(|g| !is_number(g));
    (passwd, group)
}

fn split(user: &str) -> (&str, Option<&str>) {
    match user.trim().split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user.trim(), None),
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn number(what: &str, s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("{what} {s:?} is not a valid id"))
}

/// Finds `name` in a passwd or group file: (its id, its passwd gid).
fn lookup(file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    file.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let id = fields.next()?.trim().parse().ok()?;
        let gid = fields.next().and_then(|g| g.trim().parse().ok());
        Some((id, gid))
    })
}

/// Finds the primary gid of `uid` in a passwd file.
fn gid_of_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[2].trim().parse::<u32>().ok() == Some(uid))
            .then(|| fields[3].trim().parse().ok())
            .flatten()
    })
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`...) against the
/// image's files. A uid with no passwd entry and no group gets its own
/// number as gid (Docker would give it gid 0).
pub fn resolve(user: &str, passwd: Option<&str>, group: Option<&str>) -> Result<UserIds, String> {
    let (u, g) = split(user);
    if u.is_empty() {
        return Err("the image's USER names no user".into());
    }
    let (uid, passwd_gid) = if is_number(u) {
        let uid = number("uid", u)?;
        (uid, passwd.and_then(|p| gid_of_uid(p, uid)))
    } else {
        lookup(passwd.unwrap_or(""), u)
            .ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?
    };
    let gid = match g {
        Some(g) if is_number(g) => number("gid", g)?,
        Some(g) => {
            lookup(group.unwrap_or(""), g)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?
                .0
        }
        None => passwd_gid.unwrap_or(uid),
    };
    Ok(UserIds { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        toor:x:0:0:root again:/root:/bin/sh\n\
        node:x:1000:1000::/home/node:/bin/sh\n\
        app:x:1001:50::/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\nnode:x:1000:\n";

    fn ids(user: &str) -> Result<UserIds, String> {
        resolve(user, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn every_spelling_of_root_is_root() {
        for user in [
            "root",
            "0",
            "00",
            "0:0",
            "toor",
            "root:root",
            "000:node",
            " 0 ",
        ] {
            let resolved = ids(user).unwrap_or_else(|e| panic!("{user}: {e}"));
            assert!(resolved.is_root(), "{user} resolved to {resolved:?}");
        }
    }

    #[test]
    fn non_root_users_keep_their_ids() {
        assert_eq!(
            ids("node"),
            Ok(UserIds {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            ids("1000"),
            Ok(UserIds {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(ids("app"), Ok(UserIds { uid: 1001, gid: 50 }));
        assert_eq!(ids("app:staff"), Ok(UserIds { uid: 1001, gid: 50 }));
        assert_eq!(ids("1001:7"), Ok(UserIds { uid: 1001, gid: 7 }));
        // A uid with no entry gets its own number as gid, not 0.
        assert_eq!(
            ids("4242"),
            Ok(UserIds {
                uid: 4242,
                gid: 4242
            })
        );
        assert_eq!(
            resolve("4242", None, None),
            Ok(UserIds {
                uid: 4242,
                gid: 4242
            })
        );
    }

    #[test]
    fn unknown_names_and_bad_numbers_are_refused() {
        assert!(ids("nobody-here").is_err());
        assert!(ids("node:nogroup").is_err());
        assert!(ids("99999999999").is_err());
        assert!(resolve("node", None, None).is_err());
        // A prefix of a name is not the name.
        assert!(ids("roo").is_err());
        assert!(ids("").is_err());
    }

    #[test]
    fn which_files_are_needed() {
        assert_eq!(needs_files("1000:1000"), (false, false));
        assert_eq!(needs_files("1000"), (true, false));
        assert_eq!(needs_files("node"), (true, false));
        assert_eq!(needs_files("node:staff"), (true, true));
    }
}
