//! Entra ID login-host emulator: v1/v2 OIDC discovery, JWKS, and dispatch to the token
//! endpoint, in the shapes of graph-notes §5–§6. It publishes only public key material.

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::server::{http_date, reply, set_header, Incoming, Reply};
use super::{token, Fault, Shared};

const JSON_UTF8: &str = "application/json; charset=utf-8";

/// Which tenant a path segment names: the sample tenant, or a multi-tenant alias whose
/// discovery documents carry the literal `{tenantid}` template.
enum TenantRef {
    Concrete,
    Template,
}

fn tenant_ref(shared: &Shared, segment: &str) -> Option<TenantRef> {
    if shared.tenant.is_tenant(segment) {
        Some(TenantRef::Concrete)
    } else if ["common", "organizations"]
        .iter()
        .any(|a| a.eq_ignore_ascii_case(segment))
    {
        Some(TenantRef::Template)
    } else {
        None
    }
}

pub(crate) fn handle(shared: &Shared, req: &Incoming) -> Reply {
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let Some((tenant, rest)) = segs.split_first() else {
        return not_found();
    };
    let rest: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    enum Ep {
        DiscoveryV2,
        DiscoveryV1,
        KeysV2,
        KeysV1,
        Token,
        Authorize,
    }
    let ep = match rest.as_slice() {
        ["v2.0", ".well-known", "openid-configuration"] => Ep::DiscoveryV2,
        [".well-known", "openid-configuration"] => Ep::DiscoveryV1,
        ["discovery", "v2.0", "keys"] => Ep::KeysV2,
        ["discovery", "keys"] => Ep::KeysV1,
        ["oauth2", "v2.0", "token"] => Ep::Token,
        ["oauth2", "v2.0", "authorize"] => Ep::Authorize,
        _ => return not_found(),
    };
    match ep {
        Ep::Token => return token::handle(shared, tenant, req),
        Ep::Authorize => return super::authorize::handle(shared, tenant, req),
        _ => {}
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, None, Vec::new());
    }
    let Some(tref) = tenant_ref(shared, tenant) else {
        return token::aadsts_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &tenant_not_found(tenant),
        );
    };
    match ep {
        Ep::DiscoveryV2 => discovery(shared, tenant, &tref, true),
        Ep::DiscoveryV1 => discovery(shared, tenant, &tref, false),
        Ep::KeysV2 => keys(shared, &tref, true),
        Ep::KeysV1 => keys(shared, &tref, false),
        Ep::Token | Ep::Authorize => not_found(),
    }
}

pub(crate) fn tenant_not_found(tenant: &str) -> String {
    format!(
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
         and are signing into the correct cloud. Check with your subscription administrator, this \
         may happen if there are no active subscriptions for the tenant."
    )
}

fn not_found() -> Reply {
    reply(StatusCode::NOT_FOUND, None, Vec::new())
}

/// Issuer for a key or document. The v1 issuer is on sts.windows.net even in the emulator, as
/// in Entra; the v2 issuer is on the emulated login host.
fn issuer(shared: &Shared, tref: &TenantRef, v2: bool) -> String {
    let tid = match tref {
        TenantRef::Concrete => shared.tenant.tenant_id.as_str(),
        TenantRef::Template => "{tenantid}",
    };
    if v2 {
        format!("{}/{tid}/v2.0", shared.authority_url)
    } else {
        format!("https://sts.windows.net/{tid}/")
    }
}

fn discovery(shared: &Shared, seg: &str, tref: &TenantRef, v2: bool) -> Reply {
    let a = &shared.authority_url;
    // Concrete tenants are addressed by GUID in every URL, whatever the caller used.
    let t = match tref {
        TenantRef::Concrete => shared.tenant.tenant_id.as_str(),
        TenantRef::Template => seg,
    };
    let graph_host = shared
        .graph_url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let common = json!({
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "issuer": issuer(shared, tref, v2),
        "request_uri_parameter_supported": false,
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "kerberos_endpoint": format!("{a}/{t}/kerberos"),
        "tenant_region_scope": "WW",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": graph_host,
        "rbac_url": "https://pas.windows.net",
    });
    let specific = if v2 {
        json!({
            "token_endpoint": format!("{a}/{t}/oauth2/v2.0/token"),
            "jwks_uri": format!("{a}/{t}/discovery/v2.0/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "userinfo_endpoint": format!("{}/oidc/userinfo", shared.graph_url),
            "authorization_endpoint": format!("{a}/{t}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{a}/{t}/oauth2/v2.0/devicecode"),
            "end_session_endpoint": format!("{a}/{t}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        })
    } else {
        json!({
            "token_endpoint": format!("{a}/{t}/oauth2/token"),
            "jwks_uri": format!("{a}/{t}/discovery/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "microsoft_multi_refresh_token": true,
            "check_session_iframe": format!("{a}/{t}/oauth2/checksession"),
            "userinfo_endpoint": format!("{a}/{t}/openid/userinfo"),
            "authorization_endpoint": format!("{a}/{t}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{a}/{t}/oauth2/devicecode"),
            "end_session_endpoint": format!("{a}/{t}/oauth2/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                "amr", "nonce", "email", "given_name", "family_name", "nickname"],
        })
    };
    let mut doc = common;
    if let (Value::Object(d), Value::Object(s)) = (&mut doc, specific) {
        d.extend(s);
    }
    cacheable_json(&doc)
}

fn cacheable_json(doc: &Value) -> Reply {
    let mut r = reply(
        StatusCode::OK,
        Some(JSON_UTF8),
        doc.to_string().into_bytes(),
    );
    set_header(&mut r, "cache-control", "max-age=86400, private");
    set_header(&mut r, "access-control-allow-origin", "*");
    set_header(&mut r, "x-ms-request-id", &uuid::Uuid::new_v4().to_string());
    set_header(&mut r, "date", &http_date());
    r
}

fn keys(shared: &Shared, tref: &TenantRef, v2: bool) -> Reply {
    let iss = issuer(shared, tref, v2);
    let keys: Vec<Value> = {
        let st = shared.lock();
        if st.fault == Fault::JwksDown {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("text/plain"),
                b"Service Unavailable".to_vec(),
            );
        }
        st.signing_keys.iter().map(|k| k.jwk(&iss)).collect()
    };
    cacheable_json(&json!({ "keys": keys }))
}
