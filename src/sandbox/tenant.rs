//! The fixed sample tenant ("Contoso") the emulator serves: ids are hard-coded so that
//! `config/dev.yaml` and tests can name them. Pure data; it must never depend on the network
//! or on randomness.

/// Whether a sample operator signs in as a person or calls as an application (app-only token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorKind {
    User,
    App,
}

/// A caller of passgate's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleOperator {
    pub name: String,
    /// Empty for app-only callers (they have no UPN).
    pub upn: String,
    /// Object id of the user, or of the service principal for app callers (the token's `oid`).
    pub oid: String,
    /// Direct group ids (emitted in the token's `groups` claim for users).
    pub groups: Vec<String>,
    /// App roles of passgate's API assigned to the caller (the token's `roles`).
    pub roles: Vec<String>,
    pub kind: OperatorKind,
    /// The client application the token was issued to (`azp`/`appid`): the operators' CLI
    /// for users, the automation's own app registration for app callers.
    pub client_app_id: String,
    pub display_name: String,
}

/// A directory group. `members` holds the ids of groups nested directly inside this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleGroup {
    pub name: String,
    pub id: String,
    pub members: Vec<String>,
}

/// An administrative unit: `transitiveMemberOf` returns these alongside groups, which is a
/// trap a gateway must filter out (graph-notes §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleAdminUnit {
    pub name: String,
    pub id: String,
}

/// An Intune managed device and (when registered) its Entra device object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleDevice {
    pub name: String,
    pub managed_device_id: String,
    /// Entra `deviceId` (alternate key); all zeros for an unregistered device.
    pub azure_ad_device_id: String,
    /// Entra directory object id; `None` when the device has no Entra device object.
    pub device_object_id: Option<String>,
    pub user_id: String,
    pub user_principal_name: String,
    pub operating_system: String,
    pub os_version: String,
    pub device_name: String,
    /// Direct group ids.
    pub groups: Vec<String>,
    /// Direct administrative unit ids.
    pub admin_units: Vec<String>,
}

/// The whole sample tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleTenant {
    pub tenant_id: String,
    pub domain: String,
    pub display_name: String,
    /// passgate's API app registration: the audience of operator tokens.
    pub api_client_id: String,
    pub api_app_id_uri: String,
    /// passgate's privileged Graph app: authenticates at the token endpoint.
    pub gateway_app_client_id: String,
    /// Service principal object id of the privileged app (the app token's `oid`).
    pub gateway_app_sp_object_id: String,
    /// The web console's app registration (a confidential Web client): the `aud` of the ID
    /// tokens the authorization-code flow issues.
    pub console_client_id: String,
    pub groups: Vec<SampleGroup>,
    pub admin_units: Vec<SampleAdminUnit>,
    pub operators: Vec<SampleOperator>,
    pub devices: Vec<SampleDevice>,
}

/// The scope users' tokens carry for passgate's API.
pub const OPERATOR_SCOPE: &str = "RecoverPasscode.Request";
/// The app role app-only callers carry for passgate's API.
pub const OPERATOR_APP_ROLE: &str = "PassGate.RecoverPasscode";
/// Entra `deviceId` shown for devices that never registered.
pub const ZERO_GUID: &str = "00000000-0000-0000-0000-000000000000";

const GROUP_HELPDESK: &str = "f3d0263f-adae-4f31-84f1-5b45713ed0b7";
const GROUP_KIOSK: &str = "e6867e18-cfe7-4693-bec9-262eb70c4b84";
const GROUP_KIOSK_LOBBY: &str = "32be6dbf-a502-41c5-9356-4b224cceef65";
const GROUP_FINANCE: &str = "67389342-3cee-4f7f-aa31-3945cebaa52c";
const GROUP_EXECUTIVE: &str = "c1a7e2d4-5b8f-4e39-9a0c-2f6d8b4e1a73";
/// The app role of the sandbox's approver (carol) for the executive-phones policy.
pub const APPROVER_APP_ROLE: &str = "Passcode.Approve";
const GROUP_WAREHOUSE: &str = "0d4f6a0e-5b1c-4f7e-9a53-2c8e1b7d4a90";
const GROUP_HELPDESK_LEADS: &str = "b7e2c1d4-8a3f-4e6b-9c0d-1f2a3b4c5d6e";
const GROUP_SECURITY_AUDITORS: &str = "4c1e9f27-3d8b-4a65-b0e2-7f9a6c3d2e18";
/// The console's app role auditors may carry instead of the group (the ID token's `roles`).
pub const CONSOLE_AUDITOR_ROLE: &str = "PassGate.Auditor";
const AU_LOBBY: &str = "39d5adfb-223d-4843-aa1e-76ce72e6de42";
const OPERATOR_CLI_APP: &str = "9791d56b-8586-4c2f-8fd8-25ab3e7d7230";

fn s(v: &str) -> String {
    v.to_string()
}

impl SampleTenant {
    pub fn contoso() -> SampleTenant {
        let groups = vec![
            group("Helpdesk Tier 2", GROUP_HELPDESK, &[]),
            group("Kiosk Devices", GROUP_KIOSK, &[GROUP_KIOSK_LOBBY]),
            group("Kiosk Devices - Lobby", GROUP_KIOSK_LOBBY, &[]),
            group("Finance Devices", GROUP_FINANCE, &[]),
            group("Executive Devices", GROUP_EXECUTIVE, &[]),
            group("Warehouse Devices", GROUP_WAREHOUSE, &[]),
            group("Helpdesk Leads", GROUP_HELPDESK_LEADS, &[]),
            group("Security Auditors", GROUP_SECURITY_AUDITORS, &[]),
        ];
        let operators = vec![
            SampleOperator {
                name: s("alice"),
                upn: s("alice@contoso.onmicrosoft.com"),
                oid: s("72aca123-ad72-4c7b-84b5-6d536a354d63"),
                groups: vec![s(GROUP_HELPDESK)],
                roles: vec![],
                kind: OperatorKind::User,
                client_app_id: s(OPERATOR_CLI_APP),
                display_name: s("Alice Helpdesk"),
            },
            SampleOperator {
                name: s("bob"),
                upn: s("bob@contoso.onmicrosoft.com"),
                oid: s("6fa0d1b5-9855-4c8d-be2b-8a6660fbe126"),
                groups: vec![],
                roles: vec![],
                kind: OperatorKind::User,
                client_app_id: s(OPERATOR_CLI_APP),
                display_name: s("Bob Visitor"),
            },
            SampleOperator {
                name: s("carol"),
                upn: s("carol@contoso.onmicrosoft.com"),
                oid: s("75c6f9a5-d85b-412a-a1aa-40234b127067"),
                groups: vec![],
                roles: vec![s(APPROVER_APP_ROLE)],
                kind: OperatorKind::User,
                client_app_id: s(OPERATOR_CLI_APP),
                display_name: s("Carol Approver"),
            },
            SampleOperator {
                name: s("automation"),
                upn: String::new(),
                oid: s("f874d405-51cf-42ca-9eee-070b2b6f9646"),
                groups: vec![],
                roles: vec![s(OPERATOR_APP_ROLE)],
                kind: OperatorKind::App,
                client_app_id: s("65c4377f-8cc5-446e-972c-f0a4e874edd5"),
                display_name: s("Kiosk Automation"),
            },
            // Approves helpdesk recoveries that need a second person (config/dev.yaml).
            SampleOperator {
                name: s("dana"),
                upn: s("dana@contoso.onmicrosoft.com"),
                oid: s("2e9b7c41-5d3a-4f86-a1c2-8b7e6d5f4a39"),
                groups: vec![s(GROUP_HELPDESK_LEADS)],
                roles: vec![],
                kind: OperatorKind::User,
                client_app_id: s(OPERATOR_CLI_APP),
                display_name: s("Dana Lead"),
            },
            // Reads the audit trail in the console (group and app role both name her).
            SampleOperator {
                name: s("erin"),
                upn: s("erin@contoso.onmicrosoft.com"),
                oid: s("9a3c5e71-2b4d-4c8f-8e6a-0d1f3b5c7e92"),
                groups: vec![s(GROUP_SECURITY_AUDITORS)],
                roles: vec![s(CONSOLE_AUDITOR_ROLE)],
                kind: OperatorKind::User,
                client_app_id: s(OPERATOR_CLI_APP),
                display_name: s("Erin Auditor"),
            },
        ];
        let devices = vec![
            SampleDevice {
                name: s("kiosk-phone"),
                managed_device_id: s("8e3884bd-146c-4300-9ddd-59928bce1112"),
                azure_ad_device_id: s("adda61ab-c44b-47bb-89eb-6cc454650a5c"),
                device_object_id: Some(s("14a59c06-2aa5-463c-b25a-30a422042956")),
                user_id: s("259da132-76cd-43c5-acf9-fb20fd5447b1"),
                user_principal_name: s("kiosk.lobby@contoso.onmicrosoft.com"),
                operating_system: s("Windows Phone"),
                os_version: s("10.0.15254.603"),
                device_name: s("KIOSK-LOBBY-01"),
                groups: vec![s(GROUP_KIOSK_LOBBY)],
                admin_units: vec![s(AU_LOBBY)],
            },
            SampleDevice {
                name: s("finance-laptop"),
                managed_device_id: s("eea9f01e-ba31-4c8e-ab2b-28b3b934fea2"),
                azure_ad_device_id: s("89eebb63-ab59-4bd4-9dc6-49ce085ba1ab"),
                device_object_id: Some(s("b361a16a-c9c6-4b3e-acb6-82391805edd6")),
                user_id: s("75c6f9a5-d85b-412a-a1aa-40234b127067"),
                user_principal_name: s("carol@contoso.onmicrosoft.com"),
                operating_system: s("Windows"),
                os_version: s("10.0.22631.4460"),
                device_name: s("FIN-LT-0042"),
                groups: vec![s(GROUP_FINANCE)],
                admin_units: vec![],
            },
            SampleDevice {
                name: s("lobby-ipad"),
                managed_device_id: s("a8d603b6-1c9e-492c-93e7-f8a9ea527b4b"),
                azure_ad_device_id: s("ec52dc45-d90e-4b87-8581-fce1efcf022b"),
                device_object_id: Some(s("976f209a-fa56-49da-8517-22efe46d0477")),
                user_id: s("259da132-76cd-43c5-acf9-fb20fd5447b1"),
                user_principal_name: s("kiosk.lobby@contoso.onmicrosoft.com"),
                operating_system: s("iOS"),
                os_version: s("17.5.1"),
                device_name: s("Lobby iPad"),
                groups: vec![s(GROUP_KIOSK)],
                admin_units: vec![],
            },
            SampleDevice {
                name: s("exec-phone"),
                managed_device_id: s("d3f1b6a2-7c4e-4b9a-8e21-5a6c0f9d3b18"),
                azure_ad_device_id: s("5e2a9c7b-1d4f-4a8e-b3c6-9f0e2d7a4b51"),
                device_object_id: Some(s("8b4d1f6e-3a2c-4e7b-9d05-1c8f6a2e3b94")),
                user_id: s("0f6c3e8a-2b7d-4f19-a5e4-7d3b9c1a6e02"),
                user_principal_name: s("ceo.office@contoso.onmicrosoft.com"),
                operating_system: s("Windows Phone"),
                os_version: s("10.0.15254.603"),
                device_name: s("EXEC-WP-01"),
                groups: vec![s(GROUP_EXECUTIVE)],
                admin_units: vec![],
            },
            SampleDevice {
                name: s("unregistered-phone"),
                managed_device_id: s("4b05d2d4-e762-46f1-ab84-cba10c3ac4f6"),
                azure_ad_device_id: s(ZERO_GUID),
                device_object_id: None,
                user_id: s("e10498b7-a97d-47b1-9844-3ea27cd823b0"),
                user_principal_name: s("dave@contoso.onmicrosoft.com"),
                operating_system: s("Windows Phone"),
                os_version: s("10.0.14393.2551"),
                device_name: s("WP-DAVE"),
                groups: vec![],
                admin_units: vec![],
            },
            // Recoverable by helpdesk only with a second person's approval (config/dev.yaml).
            SampleDevice {
                name: s("warehouse-phone"),
                managed_device_id: s("c3a8e5f1-7b2d-4e9a-8c6f-1d0b3a5e7f24"),
                azure_ad_device_id: s("5e7a9c1b-3d5f-4a8c-9e2b-6f1d3c5a7e90"),
                device_object_id: Some(s("d1f3b5c7-9e2a-4c6e-8a0b-2d4f6a8c0e13")),
                user_id: s("7b9d1f3a-5c7e-4a2b-9d4f-6a8c0e2b4d61"),
                user_principal_name: s("warehouse.scanner@contoso.onmicrosoft.com"),
                operating_system: s("Windows Phone"),
                os_version: s("10.0.15254.603"),
                device_name: s("WH-SCAN-07"),
                groups: vec![s(GROUP_WAREHOUSE)],
                admin_units: vec![],
            },
        ];
        SampleTenant {
            tenant_id: s("cdd6998a-1fe9-48f6-915d-b7a5b7552116"),
            domain: s("contoso.onmicrosoft.com"),
            display_name: s("Contoso"),
            api_client_id: s("885b1e7c-7b41-41f0-9e73-a7816b0c3fbc"),
            api_app_id_uri: s("api://passgate"),
            gateway_app_client_id: s("67028afe-0440-48e7-b043-4048e31efe88"),
            gateway_app_sp_object_id: s("9f32362a-9d1b-4673-ab64-77ebcbe9b6c2"),
            console_client_id: s("3f6b8d0e-2a4c-4e6a-8b1d-5c7e9f1a3b50"),
            groups,
            admin_units: vec![SampleAdminUnit {
                name: s("Lobby"),
                id: s(AU_LOBBY),
            }],
            operators,
            devices,
        }
    }

    pub fn operator(&self, name: &str) -> Option<&SampleOperator> {
        self.operators.iter().find(|o| o.name == name)
    }

    pub fn device(&self, name: &str) -> Option<&SampleDevice> {
        self.devices.iter().find(|d| d.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&SampleGroup> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Managed device by Intune id (case-insensitive, as Graph compares GUIDs).
    pub(crate) fn managed_device(&self, id: &str) -> Option<&SampleDevice> {
        self.devices
            .iter()
            .find(|d| d.managed_device_id.eq_ignore_ascii_case(id))
    }

    /// Entra device object by directory object id.
    pub(crate) fn device_by_object_id(&self, id: &str) -> Option<&SampleDevice> {
        self.devices.iter().find(|d| {
            d.device_object_id
                .as_deref()
                .is_some_and(|o| o.eq_ignore_ascii_case(id))
        })
    }

    /// Entra device object by `deviceId` alternate key. Unregistered devices have none.
    pub(crate) fn device_by_device_id(&self, device_id: &str) -> Option<&SampleDevice> {
        self.devices.iter().find(|d| {
            d.device_object_id.is_some() && d.azure_ad_device_id.eq_ignore_ascii_case(device_id)
        })
    }

    /// Whether `id` names the tenant (GUID or verified domain), as the token endpoint accepts.
    pub(crate) fn is_tenant(&self, id: &str) -> bool {
        id.eq_ignore_ascii_case(&self.tenant_id) || id.eq_ignore_ascii_case(&self.domain)
    }

    /// Group ids a device belongs to, nested memberships included (fixed point over parents).
    pub(crate) fn transitive_groups(&self, device: &SampleDevice) -> Vec<String> {
        let mut found: Vec<String> = device.groups.clone();
        let mut i = 0;
        while i < found.len() {
            let child = found[i].clone();
            for g in &self.groups {
                if g.members.iter().any(|m| m == &child) && !found.contains(&g.id) {
                    found.push(g.id.clone());
                }
            }
            i += 1;
        }
        found
    }
}

fn group(name: &str, id: &str, members: &[&str]) -> SampleGroup {
    SampleGroup {
        name: s(name),
        id: s(id),
        members: members.iter().map(|m| s(m)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kiosk_phone_is_only_transitively_in_kiosk_devices() {
        let t = SampleTenant::contoso();
        let phone = t.device("kiosk-phone").unwrap();
        let kiosk = &t.group("Kiosk Devices").unwrap().id;
        assert!(!phone.groups.contains(kiosk));
        assert!(t.transitive_groups(phone).contains(kiosk));
        let laptop = t.device("finance-laptop").unwrap();
        assert!(!t.transitive_groups(laptop).contains(kiosk));
    }

    #[test]
    fn unregistered_phone_has_no_directory_object() {
        let t = SampleTenant::contoso();
        let d = t.device("unregistered-phone").unwrap();
        assert_eq!(d.azure_ad_device_id, ZERO_GUID);
        assert!(t.device_by_device_id(ZERO_GUID).is_none());
    }
}
