//! Strict matcher for the privileged action paths passgate guards. It turns a method and a raw
//! request target into a typed [`Action`], or refuses. It must never normalise its way into a
//! match: anything a lenient router would clean up (encodings, dot segments, empty segments,
//! odd characters) is refused here, so what is forwarded is exactly what was authorised.

use crate::error::Reason;
use crate::text::guid;

/// Graph API version segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ApiVersion {
    #[serde(rename = "v1.0")]
    V1,
    #[serde(rename = "beta")]
    Beta,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1.0",
            ApiVersion::Beta => "beta",
        }
    }
}

/// The privileged action. Only one today; the enum keeps room for siblings (wipe, retire, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionKind {
    RecoverPasscode,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::RecoverPasscode => "recoverPasscode",
        }
    }
}

/// Which documented path form the operator used. All forms address the same managed device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum RouteForm {
    /// `/deviceManagement/managedDevices/{id}/recoverPasscode`
    DeviceManagement,
    /// `/users/{userId}/managedDevices/{id}/recoverPasscode`
    User { user_id: String },
    /// `/deviceManagement/detectedApps/{appId}/managedDevices/{id}/recoverPasscode`
    DetectedApp { detected_app_id: String },
}

impl RouteForm {
    pub fn label(&self) -> &'static str {
        match self {
            RouteForm::DeviceManagement => "device_management",
            RouteForm::User { .. } => "user",
            RouteForm::DetectedApp { .. } => "detected_app",
        }
    }
}

/// A parsed privileged request. The canonical target for policy, limits and audit is
/// `managed_device_id` (lower-case GUID) whatever form was used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Action {
    pub kind: ActionKind,
    pub version: ApiVersion,
    pub form: RouteForm,
    pub managed_device_id: String,
}

impl Action {
    /// The path passgate forwards: the operator's form, re-serialised with Graph's canonical
    /// segment spelling and lower-case ids, so Graph still checks the user/app relation.
    pub fn upstream_path(&self) -> String {
        let v = self.version.as_str();
        let id = &self.managed_device_id;
        let act = self.kind.as_str();
        match &self.form {
            RouteForm::DeviceManagement => {
                format!("/{v}/deviceManagement/managedDevices/{id}/{act}")
            }
            RouteForm::User { user_id } => {
                format!("/{v}/users/{user_id}/managedDevices/{id}/{act}")
            }
            RouteForm::DetectedApp { detected_app_id } => format!(
                "/{v}/deviceManagement/detectedApps/{detected_app_id}/managedDevices/{id}/{act}"
            ),
        }
    }

    /// The canonical target string used in audit records and limiter keys.
    pub fn target(&self) -> String {
        format!("managedDevices/{}", self.managed_device_id)
    }
}

/// A routing refusal: the reason code plus a human message safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RouteError {
    pub reason: Reason,
    pub message: String,
}

fn refuse(reason: Reason, message: impl Into<String>) -> RouteError {
    RouteError {
        reason,
        message: message.into(),
    }
}

fn not_found() -> RouteError {
    refuse(
        Reason::RouteNotFound,
        "passgate only serves POST .../managedDevices/{id}/recoverPasscode; this path is not a guarded action",
    )
}

/// Parses `method` and the raw request target (`path` plus optional `?query`, as received).
pub fn parse(method: &http::Method, target: &str) -> Result<Action, RouteError> {
    // Only origin-form targets. Absolute-form and authority-form are refused outright.
    if !target.starts_with('/') {
        return Err(not_found());
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if path.contains('#') {
        return Err(not_found());
    }
    // Every byte must be an unreserved path character; no percent-encoding, no backslash,
    // no ';' parameters, no non-ASCII. Graph ids never need them.
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'@'))
    {
        return Err(not_found());
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(not_found());
    }
    let version = match segments[0] {
        s if s.eq_ignore_ascii_case("v1.0") => ApiVersion::V1,
        s if s.eq_ignore_ascii_case("beta") => ApiVersion::Beta,
        _ => return Err(not_found()),
    };
    let rest = &segments[1..];
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let is_action = |s: &str| eq(s, ActionKind::RecoverPasscode.as_str());

    let (form, device) = match rest {
        [dm, md, id, act]
            if eq(dm, "deviceManagement") && eq(md, "managedDevices") && is_action(act) =>
        {
            (RouteForm::DeviceManagement, *id)
        }
        [users, user, md, id, act]
            if eq(users, "users") && eq(md, "managedDevices") && is_action(act) =>
        {
            (
                RouteForm::User {
                    user_id: user_id(user)?,
                },
                *id,
            )
        }
        [me, md, _id, act] if eq(me, "me") && eq(md, "managedDevices") && is_action(act) => {
            return Err(refuse(
                Reason::MeRouteNotSupported,
                "/me cannot be served: passgate calls Graph with an app-only token. Use /users/{userId}/managedDevices/{id}/recoverPasscode or /deviceManagement/managedDevices/{id}/recoverPasscode",
            ));
        }
        [dm, da, app, md, id, act]
            if eq(dm, "deviceManagement")
                && eq(da, "detectedApps")
                && eq(md, "managedDevices")
                && is_action(act) =>
        {
            (
                RouteForm::DetectedApp {
                    detected_app_id: detected_app_id(app)?,
                },
                *id,
            )
        }
        _ => return Err(not_found()),
    };
    let managed_device_id = guid(device).ok_or_else(|| {
        refuse(
            Reason::RouteNotFound,
            "managed device id must be a GUID (8-4-4-4-12 hex digits)",
        )
    })?;
    if method != http::Method::POST {
        return Err(refuse(
            Reason::MethodNotAllowed,
            format!(
                "{} is not allowed on this action; use POST",
                crate::text::truncated(method.as_str(), 32)
            ),
        ));
    }
    // Even an empty query (`...recoverPasscode?`) is refused: what is accepted must be exactly
    // what is forwarded, and the forwarded path never carries a `?`.
    if query.is_some() {
        return Err(refuse(
            Reason::QueryNotAllowed,
            "recoverPasscode takes no query parameters",
        ));
    }
    Ok(Action {
        kind: ActionKind::RecoverPasscode,
        version,
        form,
        managed_device_id,
    })
}

/// `/users/{id}` accepts an object id (GUID) or a user principal name.
fn user_id(s: &str) -> Result<String, RouteError> {
    if let Some(g) = guid(s) {
        return Ok(g);
    }
    let upn_ok = s.len() <= 113
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !local.starts_with('.')
                && domain.contains('.')
        });
    if upn_ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(refuse(
            Reason::RouteNotFound,
            "user id must be an object id (GUID) or a user principal name",
        ))
    }
}

/// Intune detected-app ids are opaque alphanumeric strings (often 44–64 hex characters).
fn detected_app_id(s: &str) -> Result<String, RouteError> {
    if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(refuse(
            Reason::RouteNotFound,
            "detected app id must be 1-128 letters, digits or '-'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const ID: &str = "f61dc341-c9c9-40c1-abbd-6997016f4c9e";

    fn post(p: &str) -> Result<Action, RouteError> {
        parse(&Method::POST, p)
    }

    #[test]
    fn all_three_forms_map_to_one_target() {
        let a = post(&format!(
            "/v1.0/deviceManagement/managedDevices/{ID}/recoverPasscode"
        ))
        .unwrap();
        let b = post(&format!(
            "/beta/users/0f7e78ba-6e1f-485b-8b8b-fb86895f0498/managedDevices/{ID}/recoverPasscode"
        ))
        .unwrap();
        let c = post(&format!(
            "/v1.0/deviceManagement/detectedApps/abc123/managedDevices/{ID}/recoverPasscode"
        ))
        .unwrap();
        assert_eq!(a.target(), b.target());
        assert_eq!(a.target(), c.target());
        assert_eq!(b.version, ApiVersion::Beta);
    }

    #[test]
    fn segments_match_case_insensitively_and_reserialise_canonically() {
        let up = ID.to_uppercase();
        let a = post(&format!(
            "/V1.0/DEVICEMANAGEMENT/manageddevices/{up}/RECOVERPASSCODE"
        ))
        .unwrap();
        assert_eq!(
            a.upstream_path(),
            format!("/v1.0/deviceManagement/managedDevices/{ID}/recoverPasscode")
        );
    }

    #[test]
    fn me_is_refused_with_its_own_reason() {
        let e = post(&format!("/v1.0/me/managedDevices/{ID}/recoverPasscode")).unwrap_err();
        assert_eq!(e.reason, Reason::MeRouteNotSupported);
    }

    #[test]
    fn wrong_method_on_a_real_route_is_405() {
        let e = parse(
            &Method::GET,
            &format!("/v1.0/deviceManagement/managedDevices/{ID}/recoverPasscode"),
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::MethodNotAllowed);
    }

    #[test]
    fn hostile_paths_are_not_found() {
        let cases = [
            format!("/v1.0/deviceManagement/managedDevices/{ID}/recoverPasscode/"),
            format!("/v1.0/deviceManagement/managedDevices/{ID}/wipe"),
            format!("/v1.0/deviceManagement//managedDevices/{ID}/recoverPasscode"),
            format!("/v1.0/deviceManagement/managedDevices/{ID}/../{ID}/recoverPasscode"),
            format!("/v1.0/deviceManagement%2FmanagedDevices/{ID}/recoverPasscode"),
            format!("/v1.0/deviceManagement/managedDevices/{ID};x=1/recoverPasscode"),
            format!("/v1.0\\deviceManagement/managedDevices/{ID}/recoverPasscode"),
            format!("/deviceManagement/managedDevices/{ID}/recoverPasscode"),
            format!("/v2.0/deviceManagement/managedDevices/{ID}/recoverPasscode"),
            format!("http://graph/v1.0/deviceManagement/managedDevices/{ID}/recoverPasscode"),
            "/v1.0/deviceManagement/managedDevices/not-a-guid/recoverPasscode".to_string(),
            format!("/v1.0/deviceManagement/managedDevices/{ID}/recoverPasscode#x"),
            format!("/v1.0/deviceManagement/managedDevices/{ID}/recoverPass\u{0441}ode"),
            "*".to_string(),
            "/".to_string(),
        ];
        for c in cases {
            let e = post(&c).expect_err(&c);
            assert_eq!(e.reason, Reason::RouteNotFound, "{c}");
        }
    }

    #[test]
    fn an_empty_query_is_refused_too() {
        // `...recoverPasscode?` would otherwise be accepted and forwarded without the `?`:
        // harmless today, but it breaks "what is accepted is exactly what is forwarded".
        let e = post(&format!(
            "/v1.0/deviceManagement/managedDevices/{ID}/recoverPasscode?"
        ))
        .unwrap_err();
        assert_eq!(e.reason, Reason::QueryNotAllowed);
    }

    /// Property tests: the matcher accepts a target only if it is, modulo ASCII case, exactly
    /// the path passgate forwards; and no input makes it panic.
    mod props {
        use super::*;
        use proptest::prelude::*;

        fn hex_guid() -> impl Strategy<Value = String> {
            "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
        }

        /// Flips the ASCII case of letters where `mask` says so (keeps the route valid).
        fn recase(s: &str, mask: u64) -> String {
            s.chars()
                .enumerate()
                .map(|(i, c)| {
                    if mask >> (i % 64) & 1 == 1 {
                        if c.is_ascii_lowercase() {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    } else {
                        c
                    }
                })
                .collect()
        }

        /// Valid targets in all three forms, both versions, random case.
        fn valid_path() -> impl Strategy<Value = String> {
            let version = prop_oneof![Just("v1.0"), Just("beta")];
            let user = prop_oneof![
                hex_guid(),
                "[a-z][a-z0-9._-]{0,20}@[a-z0-9-]{1,10}\\.[a-z]{2,5}",
            ];
            let app = "[0-9a-zA-Z-]{1,64}";
            let form = prop_oneof![
                Just(0u8).prop_map(|_| None),
                user.prop_map(|u| Some(format!("users/{u}"))),
                app.prop_map(|a| Some(format!("deviceManagement/detectedApps/{a}"))),
            ];
            (version, form, hex_guid(), any::<u64>(), any::<u64>()).prop_map(
                |(v, form, id, m1, m2)| {
                    let prefix = form.unwrap_or_else(|| "deviceManagement".to_string());
                    let fixed = recase(&format!("{v}/{prefix}/managedDevices/"), m1);
                    let act = recase("recoverPasscode", m2);
                    format!("/{fixed}{id}/{act}")
                },
            )
        }

        /// Characters a mutation may insert: the ones that trip lenient routers.
        fn hostile_char() -> impl Strategy<Value = char> {
            prop_oneof![
                3 => prop::sample::select(vec![
                    '%', '/', '.', '\\', ';', '?', '#', '@', '-', '_', '~', ' ', '+', '&', '=',
                    ':', '\0', '\t', '\n', '\r', '\u{0441}', '\u{0435}', '\u{FF0F}',
                    '\u{2215}', '\u{00A0}', '\u{FEFF}', '\u{0130}', '\u{212A}', 'A', 'f', '0',
                    '2', 'F', 'e',
                ]),
                1 => any::<char>(),
            ]
        }

        #[derive(Debug, Clone)]
        enum Mutation {
            Insert(usize, char),
            Delete(usize),
            Replace(usize, char),
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                (any::<usize>(), hostile_char()).prop_map(|(i, c)| Mutation::Insert(i, c)),
                any::<usize>().prop_map(Mutation::Delete),
                (any::<usize>(), hostile_char()).prop_map(|(i, c)| Mutation::Replace(i, c)),
            ]
        }

        fn apply(p: &str, muts: &[Mutation]) -> String {
            let mut cs: Vec<char> = p.chars().collect();
            for m in muts {
                let n = cs.len();
                match *m {
                    Mutation::Insert(i, c) => cs.insert(i % (n + 1), c),
                    Mutation::Delete(i) if n > 0 => {
                        cs.remove(i % n);
                    }
                    Mutation::Replace(i, c) if n > 0 => cs[i % n] = c,
                    _ => {}
                }
            }
            cs.into_iter().collect()
        }

        fn assert_canonical(target: &str) -> Result<(), TestCaseError> {
            if let Ok(a) = parse(&Method::POST, target) {
                let up = a.upstream_path();
                prop_assert!(
                    up.eq_ignore_ascii_case(target),
                    "accepted {target:?} but would forward {up:?}"
                );
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 2000,
                // Found cases become named unit tests above; no stray regression files.
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn valid_paths_are_accepted_and_reserialise_to_themselves(p in valid_path()) {
                let a = parse(&Method::POST, &p);
                prop_assert!(a.is_ok(), "refused valid {p:?}: {a:?}");
                assert_canonical(&p)?;
            }

            #[test]
            fn mutated_paths_are_refused_or_still_canonical(
                p in valid_path(),
                muts in prop::collection::vec(mutation(), 1..5),
            ) {
                let m = apply(&p, &muts);
                assert_canonical(&m)?;
            }

            #[test]
            fn suffixed_paths_are_refused_or_still_canonical(
                p in valid_path(),
                suffix in prop::sample::select(vec![
                    "?", "#", "/", "//", ";", ";x", "%00", "%2F", "?x", ".", "/.", "/..", "\\",
                    "\u{0441}", " ", "?#",
                ]),
            ) {
                assert_canonical(&format!("{p}{suffix}"))?;
            }

            #[test]
            fn arbitrary_targets_never_panic_and_stay_canonical(
                t in prop_oneof![
                    any::<String>(),
                    "/[ -~]{0,120}",
                    "/(v1\\.0|beta|V1\\.0|%2F|\\.\\.|/|[a-zA-Z0-9%.;@-]{1,40})(/[a-zA-Z0-9%.;@?#-]{0,40}){0,7}",
                ],
                method in prop::sample::select(vec![
                    Method::POST, Method::GET, Method::PUT, Method::DELETE, Method::PATCH,
                    Method::OPTIONS, Method::CONNECT,
                ]),
            ) {
                let r = parse(&method, &t);
                if method != Method::POST {
                    prop_assert!(r.is_err(), "{method} accepted on {t:?}");
                }
                assert_canonical(&t)?;
            }
        }
    }

    #[test]
    fn query_strings_are_refused() {
        let e = post(&format!(
            "/v1.0/deviceManagement/managedDevices/{ID}/recoverPasscode?$select=id"
        ))
        .unwrap_err();
        assert_eq!(e.reason, Reason::QueryNotAllowed);
    }
}
