//! The Graph emulator: authentication, Intune reads and recoverPasscode, directory lookups,
//! memberships, faults and recording.

use serde_json::{json, Value};

use super::{app_token, graph, send, start};
use crate::sandbox::graph::reply::ODATA_JSON;
use crate::sandbox::{token, Fault};

fn intune_inner(body: &Value) -> Value {
    // Intune puts a JSON document inside the message string.
    serde_json::from_str(body["error"]["message"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn recover_passcode_succeeds_on_windows_phone_and_is_recorded() {
    let sb = start().await;
    let tok = app_token(&sb).await;
    let id = sb
        .tenant()
        .device("kiosk-phone")
        .unwrap()
        .managed_device_id
        .clone();
    let path = format!("/v1.0/deviceManagement/managedDevices/{id}/recoverPasscode");
    let r = super::send(
        "POST",
        &format!("{}{path}", sb.graph_url()),
        &[
            ("authorization", &format!("Bearer {tok}")),
            ("client-request-id", "abc-123"),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("client-request-id"), Some("abc-123"));
    assert!(uuid::Uuid::parse_str(r.header("request-id").unwrap()).is_ok());
    assert!(r.header("x-ms-ags-diagnostic").is_some());
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert!(r.header("date").is_some());

    // The users form, case-insensitive segments, beta.
    let dev = sb.tenant().device("kiosk-phone").unwrap().clone();
    let p2 = format!(
        "/beta/USERS/{}/manageddevices/{id}/RECOVERPASSCODE",
        dev.user_principal_name
    );
    assert_eq!(graph(&sb, "POST", &p2, &tok, b"").await.status, 204);
    // A non-action GET is not a recoverPasscode call.
    let get = format!("/v1.0/deviceManagement/managedDevices/{id}");
    assert_eq!(graph(&sb, "GET", &get, &tok, b"").await.status, 200);

    // The namespace-qualified action name binds too.
    let p3 = format!("/v1.0/deviceManagement/managedDevices/{id}/microsoft.graph.recoverPasscode");
    assert_eq!(graph(&sb, "POST", &p3, &tok, b"").await.status, 204);

    let calls = sb.recover_passcode_calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].path_and_query, path);
    assert_eq!(calls[0].status, 204);
    assert_eq!(
        calls[0].header("Authorization"),
        Some(format!("Bearer {tok}").as_str())
    );
    assert_eq!(sb.graph_calls().len(), 4);
    assert!(!format!("{:?}", calls).contains(&tok));
}

#[tokio::test]
async fn recover_passcode_refusals_match_graph() {
    let sb = start().await;
    let tok = app_token(&sb).await;
    let t = sb.tenant().clone();
    let laptop = &t.device("finance-laptop").unwrap().managed_device_id;
    let phone = t.device("kiosk-phone").unwrap();
    let action = |id: &str| format!("/v1.0/deviceManagement/managedDevices/{id}/recoverPasscode");

    // Unsupported platform: Intune's 400 with a _version 3 document inside the message.
    let r = graph(&sb, "POST", &action(laptop), &tok, b"").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some(ODATA_JSON));
    let b = r.json();
    assert_eq!(b["error"]["code"], "BadRequest");
    let inner = intune_inner(&b);
    assert_eq!(inner["_version"], 3);
    assert!(inner["Message"]
        .as_str()
        .unwrap()
        .contains("recoverPasscode"));
    assert!(b["error"]["message"].as_str().unwrap().contains("\r\n"));
    for k in ["date", "request-id", "client-request-id"] {
        assert!(b["error"]["innerError"][k].is_string(), "{k}");
    }

    // Unknown device: Intune 404.
    let r = graph(
        &sb,
        "POST",
        &action("11111111-2222-3333-4444-555555555555"),
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "ResourceNotFound");

    // Users form with someone else's device.
    let p = format!(
        "/v1.0/users/{}/managedDevices/{}/recoverPasscode",
        t.operator("alice").unwrap().oid,
        phone.managed_device_id
    );
    assert_eq!(graph(&sb, "POST", &p, &tok, b"").await.status, 404);

    // A body is not allowed.
    let r = graph(&sb, "POST", &action(&phone.managed_device_id), &tok, b"{}").await;
    assert_eq!(r.status, 400);

    // /me needs delegated auth.
    let p = format!(
        "/v1.0/me/managedDevices/{}/recoverPasscode",
        phone.managed_device_id
    );
    let r = graph(&sb, "POST", &p, &tok, b"").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "/me request is only valid with delegated authentication flow."
    );

    // Wrong method, retired root, missing version.
    assert_eq!(
        graph(&sb, "GET", &action(&phone.managed_device_id), &tok, b"")
            .await
            .status,
        405
    );
    let r = graph(
        &sb,
        "POST",
        &format!(
            "/v1.0/managedDevices/{}/recoverPasscode",
            phone.managed_device_id
        ),
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "Resource not found for the segment 'managedDevices'."
    );
    let r = graph(
        &sb,
        "POST",
        &format!(
            "/deviceManagement/managedDevices/{}/recoverPasscode",
            phone.managed_device_id
        ),
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "ResourceNotFound");
    assert_eq!(
        r.json()["error"]["message"],
        "Invalid version: devicemanagement"
    );
}

#[tokio::test]
async fn graph_authenticates_app_tokens_only() {
    let sb = start().await;
    let id = sb
        .tenant()
        .device("kiosk-phone")
        .unwrap()
        .managed_device_id
        .clone();
    let action = format!("/v1.0/deviceManagement/managedDevices/{id}/recoverPasscode");

    let r = graph(&sb, "POST", &action, "", b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(r.json()["error"]["message"], "Access token is empty.");
    assert!(r.header("www-authenticate").is_some());

    let op = sb.operator_token("alice", std::time::Duration::from_secs(600));
    let r = graph(&sb, "POST", &action, &op, b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["message"],
        "Access token validation failure."
    );

    let expired = token::test_app_token(
        &sb.shared,
        &["DeviceManagementManagedDevices.PrivilegedOperations.All"],
        -5,
    );
    let r = graph(&sb, "POST", &action, &expired, b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["message"],
        "Access token has expired or is not yet valid."
    );

    // A token without the privileged role: Intune's 403.
    sb.set_app_roles(vec!["DeviceManagementManagedDevices.Read.All".into()]);
    let weak = app_token(&sb).await;
    let r = graph(&sb, "POST", &action, &weak, b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "Forbidden");
    assert_eq!(intune_inner(&r.json())["_version"], 3);
    // ...and without Device.Read.All the directory says Authorization_RequestDenied.
    let dev = sb
        .tenant()
        .device("kiosk-phone")
        .unwrap()
        .azure_ad_device_id
        .clone();
    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/devices(deviceId='{dev}')"),
        &weak,
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "Authorization_RequestDenied");
    assert!(sb.recover_passcode_calls().iter().all(|c| c.status != 204));

    // Device.Read.All alone: memberships come back with limited info, checks are denied.
    sb.set_app_roles(vec!["Device.Read.All".into()]);
    let dev_only = app_token(&sb).await;
    let oid = sb
        .tenant()
        .device("kiosk-phone")
        .unwrap()
        .device_object_id
        .clone()
        .unwrap();
    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/devices/{oid}/memberOf/microsoft.graph.group"),
        &dev_only,
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let first = &r.json()["value"][0];
    assert!(first.get("displayName").is_none() && first["id"].is_string());
    let body = json!({"groupIds": [sb.tenant().group("Kiosk Devices").unwrap().id]}).to_string();
    let r = graph(
        &sb,
        "POST",
        &format!("/v1.0/devices/{oid}/checkMemberGroups"),
        &dev_only,
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn managed_device_get_with_select_names_fields_in_context() {
    let sb = start().await;
    let tok = app_token(&sb).await;
    let d = sb.tenant().device("kiosk-phone").unwrap().clone();
    let id = &d.managed_device_id;

    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/deviceManagement/managedDevices/{id}"),
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(ODATA_JSON));
    let b = r.json();
    assert!(b.get("value").is_none(), "entity must be top level");
    assert_eq!(
        b["@odata.context"],
        format!(
            "{}/v1.0/$metadata#deviceManagement/managedDevices/$entity",
            sb.graph_url()
        )
    );
    assert_eq!(b["operatingSystem"], "Windows Phone");
    assert_eq!(b["azureADDeviceId"], d.azure_ad_device_id.as_str());
    assert_eq!(b["userId"], d.user_id.as_str());

    let q = "$select=id,azureADDeviceId,userPrincipalName,operatingSystem";
    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/deviceManagement/managedDevices/{id}?{q}"),
        &tok,
        b"",
    )
    .await;
    let b = r.json();
    assert_eq!(
        b["@odata.context"],
        format!("{}/v1.0/$metadata#deviceManagement/managedDevices(id,azureADDeviceId,userPrincipalName,operatingSystem)/$entity", sb.graph_url())
    );
    assert_eq!(b.as_object().unwrap().len(), 5);
    assert_eq!(b["userPrincipalName"], d.user_principal_name.as_str());

    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/users/{}/managedDevices/{id}?$select=id", d.user_id),
        &tok,
        b"",
    )
    .await;
    assert_eq!(
        r.json()["@odata.context"],
        format!(
            "{}/v1.0/$metadata#users('{}')/managedDevices(id)/$entity",
            sb.graph_url(),
            d.user_id
        )
    );

    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/deviceManagement/managedDevices/{id}?$select=nope"),
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = graph(
        &sb,
        "GET",
        "/v1.0/deviceManagement/managedDevices/00000000-1111-2222-3333-444444444444",
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "ResourceNotFound");
}

#[tokio::test]
async fn directory_devices_by_alternate_key_and_filter() {
    let sb = start().await;
    let tok = app_token(&sb).await;
    let d = sb.tenant().device("kiosk-phone").unwrap().clone();
    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/devices(deviceId='{}')", d.azure_ad_device_id),
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let b = r.json();
    assert_eq!(b["id"], d.device_object_id.as_deref().unwrap());
    assert_eq!(b["deviceId"], d.azure_ad_device_id.as_str());
    assert!(b["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("$metadata#devices/$entity"));

    let r = graph(
        &sb,
        "GET",
        &format!(
            "/v1.0/devices?$filter=deviceId%20eq%20'{}'",
            d.azure_ad_device_id
        ),
        &tok,
        b"",
    )
    .await;
    let b = r.json();
    assert!(b["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("$metadata#devices"));
    assert_eq!(b["value"].as_array().unwrap().len(), 1);

    // The unregistered phone's all-zero deviceId has no directory object.
    let zero = crate::sandbox::ZERO_GUID;
    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/devices?$filter=deviceId+eq+'{zero}'"),
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.json()["value"], json!([]));
    let r = graph(
        &sb,
        "GET",
        &format!("/v1.0/devices(deviceId='{zero}')"),
        &tok,
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn check_member_groups_is_transitive_and_limited_to_20_ids() {
    let sb = start().await;
    let tok = app_token(&sb).await;
    let t = sb.tenant().clone();
    let phone = t
        .device("kiosk-phone")
        .unwrap()
        .device_object_id
        .clone()
        .unwrap();
    let kiosk = t.group("Kiosk Devices").unwrap().id.clone();
    let lobby = t.group("Kiosk Devices - Lobby").unwrap().id.clone();
    let finance = t.group("Finance Devices").unwrap().id.clone();
    let path = format!("/v1.0/devices/{phone}/checkMemberGroups");

    let body = json!({"groupIds": [finance, kiosk.to_uppercase(), lobby]}).to_string();
    let r = graph(&sb, "POST", &path, &tok, body.as_bytes()).await;
    assert_eq!(r.status, 200);
    let b = r.json();
    assert_eq!(b["value"], json!([kiosk, lobby]));
    assert!(b["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("$metadata#Collection(Edm.String)"));

    let many: Vec<String> = (0..21)
        .map(|i| format!("00000000-0000-0000-0000-{i:012}"))
        .collect();
    let r = graph(
        &sb,
        "POST",
        &path,
        &tok,
        json!({"groupIds": many}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "Request_BadRequest");

    let r = graph(
        &sb,
        "POST",
        "/v1.0/devices/00000000-1111-2222-3333-444444444444/checkMemberGroups",
        &tok,
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn transitive_member_of_pages_and_includes_admin_units() {
    let sb = start().await;
    let tok = app_token(&sb).await;
    let t = sb.tenant().clone();
    let d = t.device("kiosk-phone").unwrap();
    let path = format!(
        "/v1.0/devices(deviceId='{}')/transitiveMemberOf?$top=1",
        d.azure_ad_device_id
    );

    let mut seen = Vec::new();
    let mut url = format!("{}{path}", sb.graph_url());
    loop {
        let r = send(
            "GET",
            &url,
            &[("authorization", &format!("Bearer {tok}"))],
            vec![],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        assert!(b["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#directoryObjects"));
        let page = b["value"].as_array().unwrap();
        assert_eq!(page.len(), 1);
        seen.push((
            page[0]["@odata.type"].as_str().unwrap().to_string(),
            page[0]["id"].as_str().unwrap().to_string(),
        ));
        match b["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.contains(&(
        "#microsoft.graph.group".into(),
        t.group("Kiosk Devices").unwrap().id.clone()
    )));
    assert!(seen
        .iter()
        .any(|(ty, _)| ty == "#microsoft.graph.administrativeUnit"));

    let cast = format!(
        "/v1.0/devices/{}/transitiveMemberOf/microsoft.graph.group",
        d.device_object_id.as_deref().unwrap()
    );
    let b = graph(&sb, "GET", &cast, &tok, b"").await.json();
    assert!(b["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("$metadata#groups"));
    assert_eq!(b["value"].as_array().unwrap().len(), 2);
    assert!(b.get("@odata.nextLink").is_none());

    let r = graph(&sb, "GET", &format!("{cast}?$top=1000"), &tok, b"").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn faults_apply_to_graph_and_to_the_action_only() {
    let sb = start().await;
    let tok = app_token(&sb).await;
    let id = sb
        .tenant()
        .device("kiosk-phone")
        .unwrap()
        .managed_device_id
        .clone();
    let action = format!("/v1.0/deviceManagement/managedDevices/{id}/recoverPasscode");
    let get = format!("/v1.0/deviceManagement/managedDevices/{id}");

    sb.set_fault(Fault::GraphStatus {
        status: 429,
        retry_after: Some(7),
    });
    let r = graph(&sb, "GET", &get, &tok, b"").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["code"], "TooManyRequests");

    sb.set_fault(Fault::ActionStatus {
        status: 503,
        retry_after: None,
    });
    assert_eq!(graph(&sb, "GET", &get, &tok, b"").await.status, 200);
    let r = graph(&sb, "POST", &action, &tok, b"").await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_none());

    sb.set_fault(Fault::None);
    assert_eq!(graph(&sb, "POST", &action, &tok, b"").await.status, 204);
    let statuses: Vec<u16> = sb
        .recover_passcode_calls()
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, vec![503, 204]);
}

#[tokio::test]
async fn reliability_faults_shape_reads_and_the_action_as_documented() {
    let sb = start().await;
    let tok = app_token(&sb).await;
    let id = sb
        .tenant()
        .device("kiosk-phone")
        .unwrap()
        .managed_device_id
        .clone();
    let action = format!("/v1.0/deviceManagement/managedDevices/{id}/recoverPasscode");
    let get = format!("/v1.0/deviceManagement/managedDevices/{id}");

    sb.set_fault(Fault::MalformedReads);
    let r = graph(&sb, "GET", &get, &tok, b"").await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    assert_eq!(graph(&sb, "POST", &action, &tok, b"").await.status, 204);

    sb.set_fault(Fault::DeviceGoneForAction);
    assert_eq!(graph(&sb, "GET", &get, &tok, b"").await.status, 200);
    let r = graph(&sb, "POST", &action, &tok, b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "ResourceNotFound");

    // The delayed action is recorded on arrival, before its (late) answer.
    sb.set_fault(Fault::ActionDelay(std::time::Duration::from_secs(30)));
    let url = format!("{}{action}", sb.graph_url());
    let auth = format!("Bearer {tok}");
    let slow = tokio::spawn(async move {
        super::send("POST", &url, &[("authorization", &auth)], vec![]).await
    });
    let before = sb.recover_passcode_calls().len();
    while sb.recover_passcode_calls().len() == before {
        tokio::task::yield_now().await;
    }
    assert!(!slow.is_finished());
    slow.abort();
    sb.set_fault(Fault::None);

    sb.stop_graph().await;
    let refused = tokio::net::TcpStream::connect(sb.graph_url().trim_start_matches("http://"))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    sb.restart_graph().await.unwrap();
    assert_eq!(graph(&sb, "GET", &get, &tok, b"").await.status, 200);
}
