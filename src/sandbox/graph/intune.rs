//! Intune endpoints: GET managedDevice (three route forms, `$select`) and the recoverPasscode
//! action with Intune's checks and error shapes (graph-notes §1–§2, §9.1). Read-only data;
//! the action only answers, it changes nothing.

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::path::Form;
use super::reply::{self, intune_error, intune_url, json_reply, Ctx};
use super::{query_opt, select, Roles};
use crate::sandbox::server::{reply as bare_reply, Incoming, Reply};
use crate::sandbox::tenant::{SampleDevice, ZERO_GUID};
use crate::sandbox::{Fault, Shared};

const READ_ROLES: [&str; 2] = [
    "DeviceManagementManagedDevices.Read.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
];
const PRIVILEGED_ROLE: &str = "DeviceManagementManagedDevices.PrivilegedOperations.All";
/// The only platform the legacy recoverPasscode action supports (graph-notes §1.1).
const SUPPORTED_OS: &str = "Windows Phone";

fn forbidden(ctx: &Ctx, id: &str, action: Option<&str>, scopes: &str) -> Reply {
    intune_error(
        ctx,
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "Application is not authorized to perform this operation. Application must have one of the following scopes: {scopes}"
        ),
        &intune_url(id, action),
    )
}

fn not_found(ctx: &Ctx, id: &str, action: Option<&str>) -> Reply {
    intune_error(
        ctx,
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "An error has occurred",
        &intune_url(id, action),
    )
}

/// The device addressed by id and route form; the users form also requires the device's user
/// (by id or UPN), as Graph navigates through that user's devices.
fn lookup<'a>(shared: &'a Shared, form: &Form, id: &str) -> Option<&'a SampleDevice> {
    let d = shared.tenant.managed_device(id)?;
    match form {
        Form::User(u)
            if !u.eq_ignore_ascii_case(&d.user_id)
                && !u.eq_ignore_ascii_case(&d.user_principal_name) =>
        {
            None
        }
        _ => Some(d),
    }
}

pub(crate) fn get(
    shared: &Shared,
    req: &Incoming,
    ctx: &Ctx,
    roles: &Roles,
    form: &Form,
    id: &str,
) -> Reply {
    if !roles.any(&READ_ROLES) {
        return forbidden(ctx, id, None, &READ_ROLES.join(", "));
    }
    let Some(device) = lookup(shared, form, id) else {
        return not_found(ctx, id, None);
    };
    let selected = match select(entity(device), query_opt(req, "$select").as_deref()) {
        Ok(sel) => sel,
        Err(unknown) => {
            return reply::error(
                ctx,
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "Could not find a property named '{unknown}' on type 'microsoft.graph.managedDevice'."
                ),
            )
        }
    };
    let mut body = selected.fields;
    let set = match &form {
        Form::DeviceManagement => "deviceManagement/managedDevices".to_string(),
        Form::User(u) => format!("users('{u}')/managedDevices"),
        Form::DetectedApp(a) => format!("deviceManagement/detectedApps('{a}')/managedDevices"),
    };
    let fragment = match selected.names {
        Some(names) => format!("{set}({})/$entity", names.join(",")),
        None => format!("{set}/$entity"),
    };
    body.insert("@odata.context".into(), json!(ctx.context(&fragment)));
    json_reply(StatusCode::OK, &Value::Object(body))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn recover_passcode(
    shared: &Shared,
    req: &Incoming,
    ctx: &Ctx,
    roles: &Roles,
    form: &Form,
    id: &str,
    fault: &Fault,
) -> Reply {
    const ACTION: Option<&str> = Some("recoverPasscode");
    // "Do not supply a request body for this method."
    if !req.body.is_empty() {
        return reply::error(
            ctx,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The action 'recoverPasscode' does not accept a request body.",
        );
    }
    if !roles.any(&[PRIVILEGED_ROLE]) {
        return forbidden(ctx, id, ACTION, PRIVILEGED_ROLE);
    }
    if let Fault::ActionStatus {
        status,
        retry_after,
    } = fault
    {
        return reply::fault(ctx, *status, *retry_after);
    }
    if *fault == Fault::DeviceGoneForAction {
        return not_found(ctx, id, ACTION);
    }
    let Some(device) = lookup(shared, form, id) else {
        return not_found(ctx, id, ACTION);
    };
    if device.operating_system != SUPPORTED_OS {
        return intune_error(
            ctx,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "An error has occurred",
            &intune_url(&device.managed_device_id, ACTION),
        );
    }
    bare_reply(StatusCode::NO_CONTENT, None, Vec::new())
}

/// Hardware details derived from the platform so entities look plausible.
fn hardware(os: &str) -> (&'static str, &'static str, &'static str) {
    match os {
        "Windows Phone" => ("Microsoft", "Lumia 950", "windowsAzureADJoin"),
        "iOS" => ("Apple", "iPad (10th generation)", "appleBulkWithUser"),
        _ => ("Contoso Hardware", "Surface Laptop 5", "windowsAzureADJoin"),
    }
}

/// The full managedDevice entity (graph-notes §2), top level, no `value` wrapper.
pub(crate) fn entity(d: &SampleDevice) -> Map<String, Value> {
    let (manufacturer, model, enrollment) = hardware(&d.operating_system);
    let registered = d.azure_ad_device_id != ZERO_GUID;
    let serial: String = d
        .managed_device_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect::<String>()
        .to_ascii_uppercase();
    let v = json!({
        "id": d.managed_device_id,
        "userId": d.user_id,
        "deviceName": d.device_name,
        "managedDeviceOwnerType": "company",
        "enrolledDateTime": "2024-05-15T14:13:19.376941Z",
        "lastSyncDateTime": "2024-05-16T03:45:42.4309247Z",
        "operatingSystem": d.operating_system,
        "complianceState": "compliant",
        "jailBroken": "False",
        "managementAgent": "mdm",
        "osVersion": d.os_version,
        "easActivated": false,
        "easDeviceId": "",
        "easActivationDateTime": "0001-01-01T00:00:00Z",
        "azureADRegistered": registered,
        "deviceEnrollmentType": enrollment,
        "activationLockBypassCode": null,
        "emailAddress": d.user_principal_name,
        "azureADDeviceId": d.azure_ad_device_id,
        "deviceRegistrationState": if registered { "registered" } else { "notRegistered" },
        "deviceCategoryDisplayName": "Unknown Category",
        "isSupervised": false,
    });
    // Split in two: one json! this long exceeds the macro recursion limit.
    let rest = json!({
        "exchangeLastSuccessfulSyncDateTime": "0001-01-01T00:00:00Z",
        "exchangeAccessState": "none",
        "exchangeAccessStateReason": "none",
        "remoteAssistanceSessionUrl": null,
        "remoteAssistanceSessionErrorDetails": null,
        "isEncrypted": true,
        "userPrincipalName": d.user_principal_name,
        "model": model,
        "manufacturer": manufacturer,
        "imei": "",
        "complianceGracePeriodExpirationDateTime": "9999-12-31T23:59:59Z",
        "serialNumber": serial,
        "phoneNumber": "",
        "androidSecurityPatchLevel": "",
        "userDisplayName": d.user_principal_name.split('@').next().unwrap_or(""),
        "configurationManagerClientEnabledFeatures": null,
        "wiFiMacAddress": "",
        "deviceHealthAttestationState": null,
        "subscriberCarrier": "",
        "meid": "",
        "totalStorageSpaceInBytes": 0,
        "freeStorageSpaceInBytes": 0,
        "managedDeviceName": format!("{}_{}", d.device_name, d.operating_system.replace(' ', "")),
        "partnerReportedThreatState": "unknown",
        "deviceActionResults": [],
    });
    let mut m = Map::new();
    for part in [v, rest] {
        if let Value::Object(o) = part {
            m.extend(o);
        }
    }
    m
}
