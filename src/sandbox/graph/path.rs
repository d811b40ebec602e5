//! Graph path parsing: version segment, case-insensitive segment names, OData key forms
//! (`managedDevices('id')`, `devices(deviceId='id')`), and the routes the emulator serves.
//! Pure string work; it must never touch state.

/// One path token after OData key segments are split off.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    /// `name('v')`: a key in parentheses.
    Key(String),
    /// `name(k='v')`: an alternate key (k lower-cased).
    AltKey(String, String),
}

impl Tok {
    fn is(&self, name: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(name))
    }

    /// An entity id, given either as a plain segment or a key in parentheses.
    fn id(&self) -> Option<&str> {
        match self {
            Tok::Word(w) | Tok::Key(w) => Some(w),
            Tok::AltKey(..) => None,
        }
    }
}

/// How the directory device is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeviceKey {
    ObjectId(String),
    DeviceId(String),
}

/// Which documented Intune route form addressed the managed device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Form {
    DeviceManagement,
    User(String),
    DetectedApp(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    ManagedDevice {
        form: Form,
        id: String,
    },
    RecoverPasscode {
        form: Form,
        id: String,
    },
    /// `/me/managedDevices/...`: only valid with delegated tokens.
    Me {
        action: bool,
    },
    DeviceCollection,
    Device(DeviceKey),
    Memberships {
        key: DeviceKey,
        transitive: bool,
        groups_only: bool,
    },
    CheckMemberGroups {
        object_id: String,
        objects: bool,
    },
}

impl Route {
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Route::RecoverPasscode { .. } | Route::CheckMemberGroups { .. } => "POST",
            Route::Me { action: true } => "POST",
            _ => "GET",
        }
    }
}

/// Why a path did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Missing or unknown version segment (lower-cased, as Graph reports it).
    Version(String),
    /// The segment Graph would name in "Resource not found for the segment '…'".
    Segment(String),
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unquote(v: &str) -> String {
    v.strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(v)
        .to_string()
}

fn tokenize(seg: &str, out: &mut Vec<Tok>) {
    if let (Some(open), true) = (seg.find('('), seg.ends_with(')')) {
        let name = &seg[..open];
        let inner = &seg[open + 1..seg.len() - 1];
        if !name.is_empty() {
            out.push(Tok::Word(name.to_string()));
            match inner.split_once('=') {
                Some((k, v)) if !inner.starts_with('\'') => out.push(Tok::AltKey(
                    k.trim().to_ascii_lowercase(),
                    unquote(v.trim()),
                )),
                _ => out.push(Tok::Key(unquote(inner))),
            }
            return;
        }
    }
    out.push(Tok::Word(seg.to_string()));
}

/// Splits `/{version}/...` into the version (as sent) and tokens.
fn split(path: &str) -> Result<(String, Vec<Tok>), PathError> {
    let path = path.split('?').next().unwrap_or("");
    let mut segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    if segs.len() > 1 && segs.last().is_some_and(|s| s.is_empty()) {
        segs.pop();
    }
    let version = segs.first().cloned().unwrap_or_default();
    if !version.eq_ignore_ascii_case("v1.0") && !version.eq_ignore_ascii_case("beta") {
        return Err(PathError::Version(version.to_ascii_lowercase()));
    }
    let mut toks = Vec::new();
    for s in &segs[1..] {
        tokenize(s, &mut toks);
    }
    Ok((version.to_ascii_lowercase(), toks))
}

/// Resolves a request path to (version, route).
pub(crate) fn resolve(path: &str) -> Result<(String, Route), PathError> {
    let (version, toks) = split(path)?;
    route(&toks).map(|r| (version, r))
}

fn route(t: &[Tok]) -> Result<Route, PathError> {
    // Graph also binds actions by their namespace-qualified name.
    let act = |a: &Tok| a.is("recoverPasscode") || a.is("microsoft.graph.recoverPasscode");
    let md = |id: &Tok, form: Form, action: bool| -> Option<Route> {
        let id = id.id()?.to_string();
        Some(if action {
            Route::RecoverPasscode { form, id }
        } else {
            Route::ManagedDevice { form, id }
        })
    };
    let found = match t {
        [dm, m, id] if dm.is("deviceManagement") && m.is("managedDevices") => {
            md(id, Form::DeviceManagement, false)
        }
        [dm, m, id, a] if dm.is("deviceManagement") && m.is("managedDevices") && act(a) => {
            md(id, Form::DeviceManagement, true)
        }
        [u, uid, m, id] if u.is("users") && m.is("managedDevices") => {
            md(id, Form::User(uid.id().unwrap_or("").to_string()), false)
        }
        [u, uid, m, id, a] if u.is("users") && m.is("managedDevices") && act(a) => {
            md(id, Form::User(uid.id().unwrap_or("").to_string()), true)
        }
        [dm, d, app, m, id]
            if dm.is("deviceManagement") && d.is("detectedApps") && m.is("managedDevices") =>
        {
            md(
                id,
                Form::DetectedApp(app.id().unwrap_or("").to_string()),
                false,
            )
        }
        [dm, d, app, m, id, a]
            if dm.is("deviceManagement")
                && d.is("detectedApps")
                && m.is("managedDevices")
                && act(a) =>
        {
            md(
                id,
                Form::DetectedApp(app.id().unwrap_or("").to_string()),
                true,
            )
        }
        [me, m, _] if me.is("me") && m.is("managedDevices") => Some(Route::Me { action: false }),
        [me, m, _, a] if me.is("me") && m.is("managedDevices") && act(a) => {
            Some(Route::Me { action: true })
        }
        [d] if d.is("devices") => Some(Route::DeviceCollection),
        [d, key] if d.is("devices") => device_key(key).map(Route::Device),
        [d, key, rel, rest @ ..]
            if d.is("devices")
                && (rel.is("transitiveMemberOf") || rel.is("memberOf"))
                && (rest.is_empty()
                    || (rest.len() == 1 && rest[0].is("microsoft.graph.group"))) =>
        {
            device_key(key).map(|key| Route::Memberships {
                key,
                transitive: rel.is("transitiveMemberOf"),
                groups_only: !rest.is_empty(),
            })
        }
        // The alternate key is not documented for these actions, so only the object id works.
        [d, Tok::Word(oid), a]
            if d.is("devices") && (a.is("checkMemberGroups") || a.is("checkMemberObjects")) =>
        {
            Some(Route::CheckMemberGroups {
                object_id: oid.clone(),
                objects: a.is("checkMemberObjects"),
            })
        }
        _ => None,
    };
    found.ok_or_else(|| PathError::Segment(unmatched(t)))
}

fn device_key(t: &Tok) -> Option<DeviceKey> {
    match t {
        Tok::Word(w) | Tok::Key(w) => Some(DeviceKey::ObjectId(w.clone())),
        Tok::AltKey(k, v) if k == "deviceid" => Some(DeviceKey::DeviceId(v.clone())),
        Tok::AltKey(..) => None,
    }
}

/// The segment Graph names when a path does not resolve: an unknown root, else the last name.
fn unmatched(t: &[Tok]) -> String {
    const ROOTS: [&str; 5] = ["deviceManagement", "users", "me", "devices", "groups"];
    let word = |tok: &Tok| match tok {
        Tok::Word(w) => w.clone(),
        Tok::Key(k) => k.clone(),
        Tok::AltKey(k, v) => format!("{k}='{v}'"),
    };
    match t.first() {
        None => String::new(),
        Some(first) if !ROOTS.iter().any(|r| first.is(r)) => word(first),
        Some(_) => t
            .iter()
            .rev()
            .find(|x| matches!(x, Tok::Word(_)))
            .map(word)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_forms_case_insensitively() {
        let (v, r) = resolve("/V1.0/devicemanagement/MANAGEDDEVICES/abc/RecoverPasscode").unwrap();
        assert_eq!(v, "v1.0");
        assert_eq!(
            r,
            Route::RecoverPasscode {
                form: Form::DeviceManagement,
                id: "abc".into()
            }
        );
        let (_, r) = resolve("/beta/deviceManagement/managedDevices('abc')").unwrap();
        assert_eq!(
            r,
            Route::ManagedDevice {
                form: Form::DeviceManagement,
                id: "abc".into()
            }
        );
        let (_, r) = resolve("/v1.0/users/u1/managedDevices/abc/recoverPasscode").unwrap();
        assert_eq!(
            r,
            Route::RecoverPasscode {
                form: Form::User("u1".into()),
                id: "abc".into()
            }
        );
        let (_, r) =
            resolve("/v1.0/devices(deviceId=%27d1%27)/transitiveMemberOf/microsoft.graph.group")
                .unwrap();
        assert_eq!(
            r,
            Route::Memberships {
                key: DeviceKey::DeviceId("d1".into()),
                transitive: true,
                groups_only: true
            }
        );
    }

    #[test]
    fn namespace_qualified_action_resolves() {
        let (_, r) =
            resolve("/v1.0/deviceManagement/managedDevices/abc/microsoft.graph.recoverPasscode")
                .unwrap();
        assert!(matches!(r, Route::RecoverPasscode { .. }));
    }

    #[test]
    fn reports_versions_and_segments_like_graph() {
        assert_eq!(
            resolve("/deviceManagement/managedDevices/x").unwrap_err(),
            PathError::Version("devicemanagement".into())
        );
        assert_eq!(
            resolve("/v1.0/managedDevices/x/recoverPasscode").unwrap_err(),
            PathError::Segment("managedDevices".into())
        );
        assert_eq!(
            resolve("/v1.0/deviceManagement/managedDevices/x/wipe").unwrap_err(),
            PathError::Segment("wipe".into())
        );
        assert_eq!(
            resolve("/v1.0/devices(deviceId='d')/checkMemberGroups").unwrap_err(),
            PathError::Segment("checkMemberGroups".into())
        );
    }
}
