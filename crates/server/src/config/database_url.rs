//! The database URL: printed without its password, and joined with a password that comes from
//! the environment or a file (`ORACLE_CALLS_DATABASE_PASSWORD(_FILE)`).

use serde::Deserialize;

use crate::{Error, Result, Secret};

/// A `sqlite://…` or `postgres://…` URL as configured. Its `Debug` hides a password in it
/// (`postgres://user:***@host/db`, `?password=***`); keep the password out of it altogether
/// with `ORACLE_CALLS_DATABASE_PASSWORD_FILE`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL as configured. Named `dangerous_*` because it may hold a password.
    pub fn dangerous_expose(&self) -> &str {
        &self.0
    }

    /// The URL to connect with: this one, with `password` (percent-encoded) put in as the
    /// user's password when there is one.
    ///
    /// # Errors
    /// [`Error::Config`] when a password is given for a URL that is not PostgreSQL, has no
    /// user name, or has a password already.
    pub fn with_password(&self, password: Option<&Secret>) -> Result<Secret> {
        let Some(password) = password else {
            return Ok(Secret::new(self.0.clone()));
        };
        let (scheme, rest) = self
            .0
            .split_once("://")
            .filter(|(s, _)| matches!(*s, "postgres" | "postgresql"))
            .ok_or_else(|| {
                Error::Config("a database password is for a postgres:// database_url only".into())
            })?;
        let (user_info, host) = rest.rsplit_once('@').ok_or_else(|| {
            Error::Config(
                "database_url needs a user name (postgres://user@host/db) to go with \
                 ORACLE_CALLS_DATABASE_PASSWORD"
                    .into(),
            )
        })?;
        if user_info.contains(':') {
            return Err(Error::Config(
                "database_url has a password already: remove it or unset \
                 ORACLE_CALLS_DATABASE_PASSWORD(_FILE)"
                    .into(),
            ));
        }
        let mut url = zeroize::Zeroizing::new(format!("{scheme}://{user_info}:"));
        for b in password.dangerous_expose().bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                url.push(char::from(b));
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
        url.push('@');
        url.push_str(host);
        Ok(Secret::new(url.as_str()))
    }

    /// The URL with any password replaced by `***`.
    fn redacted(&self) -> String {
        let (before_query, query) = match self.0.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (self.0.as_str(), None),
        };
        let mut out = match before_query.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((user_info, host)) => {
                    let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
                    let hidden = if user_info.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}")
                }
                None => before_query.to_owned(),
            },
            None => before_query.to_owned(),
        };
        if let Some(query) = query {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords() {
        for (url, shown) in [
            (
                "postgres://calls:hunter2@db:5432/calls",
                "postgres://calls:***@db:5432/calls",
            ),
            (
                "postgres://calls:p@ss/w@db/calls?sslmode=require&sslpassword=hunter2",
                "postgres://calls:***@db/calls?sslmode=require&sslpassword=***",
            ),
            (
                "postgres://db/calls?user=calls&password=hunter2",
                "postgres://db/calls?user=calls&password=***",
            ),
            ("postgres://calls@db/calls", "postgres://calls@db/calls"),
            (
                "sqlite:///data/c.sqlite3?mode=rwc",
                "sqlite:///data/c.sqlite3?mode=rwc",
            ),
        ] {
            let dbg = format!("{:?}", DatabaseUrl::new(url));
            assert_eq!(dbg, format!("DatabaseUrl({shown:?})"));
            assert!(!dbg.contains("hunter2"), "{dbg}");
        }
    }

    #[test]
    fn the_password_is_put_in_encoded_and_only_where_it_fits() {
        let pw = Secret::new("p@ss:w/rd é");
        let url = DatabaseUrl::new("postgres://calls@db:5432/calls?sslmode=disable");
        assert_eq!(
            url.with_password(Some(&pw)).unwrap().dangerous_expose(),
            "postgres://calls:p%40ss%3Aw%2Frd%20%C3%A9@db:5432/calls?sslmode=disable"
        );
        assert_eq!(
            url.with_password(None).unwrap().dangerous_expose(),
            url.dangerous_expose()
        );
        for bad in [
            "postgres://calls:already@db/calls",
            "postgres://db/calls",
            "sqlite:///x.sqlite3",
        ] {
            let err = DatabaseUrl::new(bad).with_password(Some(&pw)).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
            assert!(!err.to_string().contains("p@ss"), "{err}");
        }
    }
}
