//! The decision's inputs about the target device. Policy owns these types; `graph::facts` fills
//! them from Graph. Plain data: nothing here may do I/O or know where the facts came from.

use serde::Serialize;
use std::collections::BTreeSet;

/// What Graph told us about the target device. Ids are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceFacts {
    pub managed_device_id: String,
    /// Intune `azureADDeviceId` (the Entra *deviceId*, not the directory object id). `None` when
    /// the device is not Entra-registered (absent or all-zero GUID).
    pub azure_ad_device_id: Option<String>,
    /// Directory object id of the Entra device, when it could be resolved.
    pub device_object_id: Option<String>,
    /// Intune `operatingSystem`, as Graph spelled it.
    pub operating_system: String,
    pub user_principal_name: Option<String>,
    pub user_id: Option<String>,
    /// Which of the group ids passgate asked about the device is a (transitive) member of.
    pub member_of: BTreeSet<String>,
}

/// What the facts lookup produced for the target device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactsOutcome {
    Found(DeviceFacts),
    /// Graph answered that the managed device does not exist.
    NotFound,
    /// Graph could not be asked (timeout, 5xx, throttled): fail closed.
    Unavailable,
}
