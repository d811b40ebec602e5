//! Validation of the `console:` block, with the same located errors as the rest of `load`.
//! It must refuse a console that would set cookies without `Secure` on anything but loopback,
//! and never echo a client id or secret that may have been pasted into the wrong key.

use super::super::console::{ConsoleConfig, ConsoleSettings};
use super::super::locate::KeyPath;
use super::{Validator, R};
use crate::approval::ApproverSet;
use std::time::Duration;

/// The path the console serves its OIDC redirect on.
pub const CALLBACK_PATH: &str = "/auth/callback";

impl Validator<'_> {
    pub(super) fn console(&self, c: &ConsoleConfig) -> R<ConsoleSettings> {
        let path = KeyPath::root().key("console");
        let listen = c.listen.trim().to_string();
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(self.err(
                &path.key("listen"),
                true,
                format!("`{listen}` is not a socket address"),
                "write host:port with an IP address, e.g. 0.0.0.0:8443 or 127.0.0.1:8081; it must differ from server.listen",
            ));
        }
        let client_id = crate::text::guid(c.client_id.trim()).ok_or_else(|| {
            self.err(
                &path.key("client_id"),
                true,
                "is not a GUID (value not shown: it may be a misplaced secret)".into(),
                "write the Application (client) ID of the console's app registration: 8-4-4-4-12 hex digits",
            )
        })?;
        match (&c.client_secret, &c.certificate) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    &path.key("certificate"),
                    false,
                    "both `client_secret` and `certificate` are set".into(),
                    "keep exactly one credential for the console's app registration",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    &path,
                    false,
                    "no credential: set `client_secret` or `certificate`".into(),
                    "the console is a confidential client: e.g. `client_secret: env:PASSGATE_CONSOLE_SECRET`, or a `certificate:` block like app.certificate",
                ))
            }
            _ => {}
        }
        if let Some(cert) = &c.certificate {
            self.non_empty(
                &path.key("certificate").key("cert_file"),
                &cert.cert_file,
                "the PEM certificate registered on the console's app",
            )?;
        }
        let rp = path.key("redirect_uri");
        let (redirect_uri, u) = self.bare_url(
            &rp,
            &c.redirect_uri,
            "write the redirect URI registered on the app, e.g. https://passgate.example.com:8443/auth/callback",
            "remove the `user:password@` part",
        )?;
        let loopback = match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        let secure_cookies = match u.scheme() {
            "https" if u.host().is_some() => true,
            "http" if loopback => false,
            _ => {
                return Err(self.err(
                    &rp,
                    true,
                    format!("`{redirect_uri}` is not an https URL"),
                    "browsers reach the console over https (its cookies are Secure); http:// is allowed only to 127.0.0.1, [::1] or localhost (the sandbox)",
                ))
            }
        };
        if u.path() != CALLBACK_PATH {
            return Err(self.err(
                &rp,
                true,
                format!("the path is `{}`, not `{CALLBACK_PATH}`", u.path()),
                "the console answers the sign-in redirect at /auth/callback: register https://<console host>/auth/callback on the app and write the same here",
            ));
        }
        let public_origin = u.origin().ascii_serialization();
        let ap = path.key("auditors");
        let auditors = ApproverSet {
            users: self.guid_set(
                &ap.key("users"),
                &c.auditors.users,
                "an auditor's object id (GUID)",
            )?,
            groups: self.guid_set(
                &ap.key("groups"),
                &c.auditors.groups,
                "an Entra group object id (GUID)",
            )?,
            app_roles: c
                .auditors
                .app_roles
                .iter()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect(),
        };
        let bounded = |key: &str, text: &str, min: Duration, max: Duration, what: &str| {
            self.bounded_duration(&path.key(key), text, min, max, what)
        };
        let idle_timeout = bounded(
            "session_idle_timeout",
            &c.session_idle_timeout,
            Duration::from_secs(60),
            Duration::from_secs(12 * 3600),
            "a session unused this long ends; the default is 15m",
        )?;
        let max_age = bounded(
            "session_max_age",
            &c.session_max_age,
            Duration::from_secs(300),
            Duration::from_secs(86_400),
            "a session ends this long after sign-in; the default is 8h",
        )?;
        if idle_timeout > max_age {
            return Err(self.err(
                &path.key("session_idle_timeout"),
                true,
                "is longer than session_max_age".into(),
                "the idle timeout must not exceed the maximum session age",
            ));
        }
        if !(10..=500).contains(&c.page_size) {
            return Err(self.err(
                &path.key("page_size"),
                true,
                format!("{} is outside 10..=500", c.page_size),
                "the default is 50",
            ));
        }
        Ok(ConsoleSettings {
            listen,
            client_id,
            client_secret: c.client_secret.clone(),
            certificate: c.certificate.clone(),
            redirect_uri,
            public_origin,
            secure_cookies,
            auditors,
            idle_timeout,
            max_age,
            page_size: c.page_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use crate::dev::DEV_CONFIG;

    fn with(old: &str, new: &str) -> String {
        assert!(DEV_CONFIG.contains(old), "{old}");
        DEV_CONFIG.replacen(old, new, 1)
    }

    #[test]
    fn the_dev_console_loads_with_defaults() {
        let s = load_str(DEV_CONFIG, "dev.yaml").unwrap();
        let c = s.console.expect("dev.yaml has a console");
        assert_eq!(c.public_origin, "http://127.0.0.1:8081");
        assert!(!c.secure_cookies);
        assert_eq!(c.idle_timeout.as_secs(), 900);
        assert_eq!(c.max_age.as_secs(), 8 * 3600);
        assert_eq!(c.page_size, 50);
        assert_eq!(c.auditors.groups.len(), 1);
        let no_console = DEV_CONFIG.split("\nconsole:\n").next().unwrap();
        assert!(load_str(no_console, "x").unwrap().console.is_none());
    }

    #[test]
    fn console_mistakes_are_located_errors() {
        let redirect = "  redirect_uri: \"http://127.0.0.1:8081/auth/callback\"";
        let cases = [
            (
                with(
                    redirect,
                    "  redirect_uri: \"http://console.example.com/auth/callback\"",
                ),
                "console.redirect_uri",
            ),
            (
                with(
                    redirect,
                    "  redirect_uri: \"https://console.example.com/callback\"",
                ),
                "console.redirect_uri",
            ),
            (
                with(
                    redirect,
                    "  redirect_uri: \"https://console.example.com/auth/callback?x=1\"",
                ),
                "console.redirect_uri",
            ),
            (
                with(
                    "  listen: \"127.0.0.1:8081\"",
                    "  listen: \"127.0.0.1:8080\"",
                ),
                "console.listen",
            ),
            (
                with(
                    "  client_id: \"3f6b8d0e-2a4c-4e6a-8b1d-5c7e9f1a3b50\"",
                    "  client_id: \"pasted~secret\"",
                ),
                "console.client_id",
            ),
            (
                with(
                    "  client_secret: \"env:PASSGATE_SANDBOX_CONSOLE_SECRET\"\n",
                    "",
                ),
                "no credential",
            ),
            (
                format!("{DEV_CONFIG}  session_idle_timeout: 9h\n  session_max_age: 1h\n"),
                "session_idle_timeout",
            ),
            (
                format!("{DEV_CONFIG}  session_max_age: 2d\n"),
                "session_max_age",
            ),
            (format!("{DEV_CONFIG}  page_size: 5\n"), "page_size"),
            (format!("{DEV_CONFIG}  auditor: []\n"), "unknown field"),
        ];
        for (text, needle) in cases {
            let e = load_str(&text, "c.yaml").expect_err(needle).to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(e.starts_with("c.yaml:"), "{e}");
            assert!(!e.contains("pasted~secret"), "{e}");
        }
        // https anywhere: Secure cookies.
        let s = load_str(
            &with(
                redirect,
                "  redirect_uri: \"https://console.example.com:8444/auth/callback\"",
            ),
            "x",
        )
        .unwrap();
        let c = s.console.unwrap();
        assert!(c.secure_cookies);
        assert_eq!(c.public_origin, "https://console.example.com:8444");
    }
}
