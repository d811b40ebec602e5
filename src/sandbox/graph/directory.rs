//! Directory endpoints for devices: get by object id or `deviceId` alternate key, `$filter`
//! by deviceId, memberOf/transitiveMemberOf with paging, checkMemberGroups/Objects
//! (graph-notes §3). Read-only.

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::path::DeviceKey;
use super::reply::{self, directory_denied, directory_not_found, json_reply, Ctx};
use super::{query_opt, select, Roles};
use crate::sandbox::crypto::{b64url, b64url_decode};
use crate::sandbox::server::{Incoming, Reply};
use crate::sandbox::tenant::SampleDevice;
use crate::sandbox::Shared;

const DEVICE_READ: [&str; 4] = [
    "Device.Read.All",
    "Device.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const GROUP_READ: [&str; 5] = [
    "GroupMember.Read.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const MAX_CHECK_IDS: usize = 20;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 999;

fn bad_request(ctx: &Ctx, message: &str) -> Reply {
    reply::error(ctx, StatusCode::BAD_REQUEST, "Request_BadRequest", message)
}

fn find<'a>(shared: &'a Shared, key: &DeviceKey) -> Option<&'a SampleDevice> {
    match key {
        DeviceKey::ObjectId(id) => shared.tenant.device_by_object_id(id),
        DeviceKey::DeviceId(id) => shared.tenant.device_by_device_id(id),
    }
}

fn key_text(key: &DeviceKey) -> &str {
    match key {
        DeviceKey::ObjectId(s) | DeviceKey::DeviceId(s) => s,
    }
}

/// The directory device entity (graph-notes §3 example shape).
fn entity(shared: &Shared, d: &SampleDevice) -> Map<String, Value> {
    let oid = d.device_object_id.clone().unwrap_or_default();
    let v = json!({
        "@odata.id": format!(
            "{}/v2/{}/directoryObjects/{oid}/Microsoft.DirectoryServices.Device",
            shared.graph_url, shared.tenant.tenant_id
        ),
        "id": oid,
        "deletedDateTime": null,
        "accountEnabled": true,
        "approximateLastSignInDateTime": "2024-05-16T03:40:00Z",
        "complianceExpirationDateTime": null,
        "createdDateTime": "2024-05-15T14:10:02Z",
        "deviceId": d.azure_ad_device_id,
        "deviceVersion": 2,
        "displayName": d.device_name,
        "isCompliant": true,
        "isManaged": true,
        "mdmAppId": "0000000a-0000-0000-c000-000000000000",
        "operatingSystem": d.operating_system,
        "operatingSystemVersion": d.os_version,
        "profileType": "RegisteredDevice",
        "trustType": "AzureAd",
        "alternativeSecurityIds": [],
        "physicalIds": [],
        "systemLabels": [],
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn unknown_property(ctx: &Ctx, name: &str) -> Reply {
    bad_request(
        ctx,
        &format!("Could not find a property named '{name}' on type 'microsoft.graph.device'."),
    )
}

pub(crate) fn get(
    shared: &Shared,
    req: &Incoming,
    ctx: &Ctx,
    roles: &Roles,
    key: &DeviceKey,
) -> Reply {
    if !roles.any(&DEVICE_READ) {
        return directory_denied(ctx);
    }
    let Some(d) = find(shared, key) else {
        return directory_not_found(ctx, key_text(key));
    };
    let sel = match select(entity(shared, d), query_opt(req, "$select").as_deref()) {
        Ok(sel) => sel,
        Err(name) => return unknown_property(ctx, &name),
    };
    let mut body = sel.fields;
    let fragment = match sel.names {
        Some(n) => format!("devices({})/$entity", n.join(",")),
        None => "devices/$entity".to_string(),
    };
    body.insert("@odata.context".into(), json!(ctx.context(&fragment)));
    json_reply(StatusCode::OK, &Value::Object(body))
}

/// `deviceId eq 'x'`, the only filter the emulator understands.
fn parse_filter(filter: &str) -> Result<String, String> {
    let parts: Vec<&str> = filter.split_whitespace().collect();
    match parts.as_slice() {
        [prop, op, value]
            if prop.eq_ignore_ascii_case("deviceId") && op.eq_ignore_ascii_case("eq") =>
        {
            value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .map(str::to_string)
                .ok_or_else(|| "deviceId".to_string())
        }
        [prop, ..] => Err(prop.to_string()),
        [] => Err(String::new()),
    }
}

pub(crate) fn collection(shared: &Shared, req: &Incoming, ctx: &Ctx, roles: &Roles) -> Reply {
    if !roles.any(&DEVICE_READ) {
        return directory_denied(ctx);
    }
    let devices: Vec<&SampleDevice> = match query_opt(req, "$filter") {
        Some(f) => match parse_filter(&f) {
            Ok(id) => shared.tenant.device_by_device_id(&id).into_iter().collect(),
            Err(prop) => {
                return reply::error(
                    ctx,
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    &format!(
                        "Unsupported or invalid query filter clause specified for property '{prop}' of resource 'Device'."
                    ),
                )
            }
        },
        None => shared
            .tenant
            .devices
            .iter()
            .filter(|d| d.device_object_id.is_some())
            .collect(),
    };
    let mut value = Vec::new();
    let mut names = None;
    for d in devices {
        match select(entity(shared, d), query_opt(req, "$select").as_deref()) {
            Ok(sel) => {
                names = sel.names;
                value.push(Value::Object(sel.fields));
            }
            Err(name) => return unknown_property(ctx, &name),
        }
    }
    let fragment = match names {
        Some(n) => format!("devices({})", n.join(",")),
        None => "devices".to_string(),
    };
    json_reply(
        StatusCode::OK,
        &json!({"@odata.context": ctx.context(&fragment), "value": value}),
    )
}

fn group_json(shared: &Shared, id: &str, full: bool) -> Option<Value> {
    let g = shared.tenant.groups.iter().find(|g| g.id == id)?;
    if !full {
        // "Limited information": without a group-read permission only type and id come back.
        return Some(json!({"@odata.type": "#microsoft.graph.group", "id": g.id}));
    }
    Some(json!({
        "@odata.type": "#microsoft.graph.group",
        "id": g.id,
        "deletedDateTime": null,
        "description": format!("{} (sample)", g.name),
        "displayName": g.name,
        "groupTypes": [],
        "mailEnabled": false,
        "mailNickname": g.name.replace(' ', ""),
        "securityEnabled": true,
    }))
}

fn admin_unit_json(shared: &Shared, id: &str) -> Option<Value> {
    let au = shared.tenant.admin_units.iter().find(|a| a.id == id)?;
    Some(json!({
        "@odata.type": "#microsoft.graph.administrativeUnit",
        "id": au.id,
        "deletedDateTime": null,
        "displayName": au.name,
        "description": null,
        "visibility": null,
    }))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn memberships(
    shared: &Shared,
    req: &Incoming,
    ctx: &Ctx,
    roles: &Roles,
    key: &DeviceKey,
    transitive: bool,
    groups_only: bool,
) -> Reply {
    if !roles.any(&DEVICE_READ) {
        return directory_denied(ctx);
    }
    let Some(d) = find(shared, key) else {
        return directory_not_found(ctx, key_text(key));
    };
    let top = match query_opt(req, "$top") {
        None => DEFAULT_PAGE,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return bad_request(
                    ctx,
                    &format!("Invalid page size specified: '{t}'. Must be between 1 and {MAX_PAGE} inclusive."),
                )
            }
        },
    };
    let skip = match query_opt(req, "$skiptoken") {
        None => 0,
        Some(t) => match decode_skiptoken(&t) {
            Some(n) => n,
            None => return bad_request(ctx, "Invalid skip token."),
        },
    };
    let full = roles.any(&GROUP_READ);
    let group_ids = if transitive {
        shared.tenant.transitive_groups(d)
    } else {
        d.groups.clone()
    };
    let mut all: Vec<Value> = group_ids
        .iter()
        .filter_map(|g| group_json(shared, g, full))
        .collect();
    if !groups_only {
        // Administrative units cannot nest, so direct and transitive agree.
        all.extend(
            d.admin_units
                .iter()
                .filter_map(|a| admin_unit_json(shared, a)),
        );
    }
    let page: Vec<Value> = all.iter().skip(skip).take(top).cloned().collect();
    let context = if groups_only {
        "groups"
    } else {
        "directoryObjects"
    };
    let mut body = json!({"@odata.context": ctx.context(context), "value": page});
    if skip.saturating_add(top) < all.len() {
        let mut link = format!("{}{}?", shared.graph_url, req.path);
        if query_opt(req, "$top").is_some() {
            link.push_str(&format!("$top={top}&"));
        }
        link.push_str(&format!(
            "$skiptoken={}",
            encode_skiptoken(skip.saturating_add(top))
        ));
        body["@odata.nextLink"] = json!(link);
    }
    json_reply(StatusCode::OK, &body)
}

/// Opaque to clients, like Graph's; only this emulator reads it back.
fn encode_skiptoken(offset: usize) -> String {
    b64url(format!("RFNwdAoAAQAA:{offset}").as_bytes())
}

fn decode_skiptoken(t: &str) -> Option<usize> {
    let raw = String::from_utf8(b64url_decode(t)?).ok()?;
    raw.strip_prefix("RFNwdAoAAQAA:")?.parse().ok()
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

pub(crate) fn check_member(
    shared: &Shared,
    req: &Incoming,
    ctx: &Ctx,
    roles: &Roles,
    object_id: &str,
    objects: bool,
) -> Reply {
    if !roles.any(&DEVICE_READ) || !roles.any(&GROUP_READ) {
        return directory_denied(ctx);
    }
    let Some(d) = shared.tenant.device_by_object_id(object_id) else {
        return directory_not_found(ctx, object_id);
    };
    let field = if objects { "ids" } else { "groupIds" };
    let ids: Option<Vec<String>> = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| {
            v.get(field)?
                .as_array()?
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect()
        });
    let Some(ids) = ids else {
        return bad_request(
            ctx,
            &format!("Invalid request body: expected {{\"{field}\":[\"<guid>\", ...]}}."),
        );
    };
    if ids.len() > MAX_CHECK_IDS {
        return bad_request(
            ctx,
            &format!(
                "The request contains {} ids in '{field}'; at most {MAX_CHECK_IDS} are allowed.",
                ids.len()
            ),
        );
    }
    if let Some(bad) = ids.iter().find(|i| !is_guid(i)) {
        return bad_request(ctx, &format!("Invalid GUID: '{bad}'."));
    }
    let mut member_of = shared.tenant.transitive_groups(d);
    if objects {
        member_of.extend(d.admin_units.iter().cloned());
    }
    let mut value: Vec<String> = Vec::new();
    for id in &ids {
        let id = id.to_ascii_lowercase();
        if member_of.contains(&id) && !value.contains(&id) {
            value.push(id);
        }
    }
    json_reply(
        StatusCode::OK,
        &json!({"@odata.context": ctx.context("Collection(Edm.String)"), "value": value}),
    )
}
