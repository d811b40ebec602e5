//! Microsoft Graph emulator: version check, app-token authentication, per-endpoint roles,
//! fault injection, then dispatch to the Intune and directory handlers. It accepts only app
//! tokens its own token endpoint could have issued and never echoes a token.

mod directory;
mod intune;
mod path;
pub(crate) mod reply;

use http::StatusCode;
use serde_json::Value;

use super::jwt::{self, now};
use super::server::{set_header, Incoming, Reply};
use super::{Fault, Shared, GRAPH_RESOURCE};
use path::{PathError, Route};
use reply::Ctx;

/// Whether a recorded path names the recoverPasscode action anywhere (any route form, `/me`,
/// namespace-qualified, or even a path Graph would refuse). Deliberately broad: tests use it
/// to prove nothing resembling the action reached Graph.
pub(crate) fn is_recover_passcode_path(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or("");
    path.split('/').any(|seg| {
        let seg = path::percent_decode(seg).to_ascii_lowercase();
        seg == "recoverpasscode" || seg.ends_with(".recoverpasscode")
    })
}

pub(crate) fn handle(shared: &Shared, req: &Incoming) -> Reply {
    let client_request_id = req
        .header("client-request-id")
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut ctx = Ctx {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id,
        base: shared.graph_url.clone(),
    };
    let mut r = dispatch(shared, req, &mut ctx);
    reply::decorate(&mut r, &ctx);
    r
}

/// The app's granted roles, or the 401 Graph would send.
/// Boxed error: a whole response is large and this is the cold path.
fn authenticate(shared: &Shared, req: &Incoming, ctx: &Ctx) -> Result<Vec<String>, Box<Reply>> {
    let token = req
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("");
    if token.is_empty() {
        return Err(Box::new(reply::unauthenticated(
            ctx,
            "Access token is empty.",
        )));
    }
    let invalid = || {
        Box::new(reply::unauthenticated(
            ctx,
            "Access token validation failure.",
        ))
    };
    let parsed = jwt::parse(token).ok_or_else(invalid)?;
    let key = &shared.graph_key;
    let h = &parsed.header;
    if h.get("alg").and_then(Value::as_str) != Some("RS256")
        || h.get("kid").and_then(Value::as_str) != Some(key.kid.as_str())
        || !jwt::verify_rs256(
            &key.public(),
            parsed.signing_input.as_bytes(),
            &parsed.signature,
        )
    {
        return Err(invalid());
    }
    let c = &parsed.claims;
    let str_claim = |n: &str| c.get(n).and_then(Value::as_str);
    if str_claim("aud") != Some(GRAPH_RESOURCE)
        || str_claim("tid") != Some(&shared.tenant.tenant_id)
    {
        return Err(invalid());
    }
    let t = now();
    let exp = c.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let nbf = c.get("nbf").and_then(Value::as_i64).unwrap_or(0);
    if exp <= t || nbf > t {
        return Err(Box::new(reply::unauthenticated(
            ctx,
            "Access token has expired or is not yet valid.",
        )));
    }
    Ok(c.get("roles")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

/// The granted roles, with helpers for "any of these".
pub(crate) struct Roles(Vec<String>);

impl Roles {
    pub(crate) fn any(&self, wanted: &[&str]) -> bool {
        self.0.iter().any(|r| wanted.contains(&r.as_str()))
    }
}

fn dispatch(shared: &Shared, req: &Incoming, ctx: &mut Ctx) -> Reply {
    let fault = shared.lock().fault.clone();
    if let Fault::GraphStatus {
        status,
        retry_after,
    } = fault
    {
        return reply::fault(ctx, status, retry_after);
    }
    if fault == Fault::MalformedReads
        && !(req.method == http::Method::POST && is_recover_passcode_path(&req.path))
    {
        // Cut off mid-document, as a truncating proxy would leave it.
        return super::server::reply(
            StatusCode::OK,
            Some("application/json"),
            br#"{"@odata.context":"#.to_vec(),
        );
    }
    let resolved = path::resolve(&req.path);
    if let Err(PathError::Version(v)) = &resolved {
        return reply::error(
            ctx,
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Invalid version: {v}"),
        );
    }
    let roles = match authenticate(shared, req, ctx) {
        Ok(r) => Roles(r),
        Err(r) => return *r,
    };
    let (version, route) = match resolved {
        Ok(ok) => ok,
        // Version errors were answered above; both arms keep the match total.
        Err(PathError::Segment(s) | PathError::Version(s)) => return reply::bad_segment(ctx, &s),
    };
    ctx.base = format!("{}/{version}", shared.graph_url);
    if req.method.as_str() != route.method() {
        let mut r = reply::error(
            ctx,
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequest",
            &format!(
                "The HTTP method '{}' is not supported for this resource.",
                req.method
            ),
        );
        set_header(&mut r, "allow", route.method());
        return r;
    }
    if let Route::Me { .. } = route {
        return reply::error(
            ctx,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "/me request is only valid with delegated authentication flow.",
        );
    }
    match route {
        Route::ManagedDevice { form, id } => intune::get(shared, req, ctx, &roles, &form, &id),
        Route::RecoverPasscode { form, id } => {
            intune::recover_passcode(shared, req, ctx, &roles, &form, &id, &fault)
        }
        Route::DeviceCollection => directory::collection(shared, req, ctx, &roles),
        Route::Device(key) => directory::get(shared, req, ctx, &roles, &key),
        Route::Memberships {
            key,
            transitive,
            groups_only,
        } => directory::memberships(shared, req, ctx, &roles, &key, transitive, groups_only),
        Route::CheckMemberGroups { object_id, objects } => {
            directory::check_member(shared, req, ctx, &roles, &object_id, objects)
        }
        Route::Me { .. } => reply::bad_segment(ctx, "me"),
    }
}

/// An entity after `$select`: `names` is the selected list (for the context URL), if any.
pub(crate) struct Selected {
    pub(crate) names: Option<Vec<String>>,
    pub(crate) fields: serde_json::Map<String, Value>,
}

/// Applies `$select` (case-insensitive names, canonical spelling out); `Err` names the
/// first unknown property.
pub(crate) fn select(
    entity: serde_json::Map<String, Value>,
    raw: Option<&str>,
) -> Result<Selected, String> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Ok(Selected {
            names: None,
            fields: entity,
        });
    };
    let mut names = Vec::new();
    let mut fields = serde_json::Map::new();
    for wanted in raw.split(',').map(str::trim) {
        let Some((name, value)) = entity
            .iter()
            .find(|(k, _)| !k.starts_with('@') && k.eq_ignore_ascii_case(wanted))
        else {
            return Err(wanted.to_string());
        };
        if !names.contains(name) {
            names.push(name.clone());
            fields.insert(name.clone(), value.clone());
        }
    }
    Ok(Selected {
        names: Some(names),
        fields,
    })
}

/// First value of a query option, OData-style (`$name`, case-insensitive).
pub(crate) fn query_opt(req: &Incoming, name: &str) -> Option<String> {
    req.query_pairs()
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}
