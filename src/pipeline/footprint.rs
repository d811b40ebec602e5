//! How much memory one request in flight holds: the size of the future the listener spawns for
//! it. At 1,000 connections hundreds of these are alive at once, so this guards the memory
//! figure in docs/performance.md. Tests only; nothing here runs in the gateway.

use crate::dev::{self, DevOptions};
use crate::lifecycle::ConnInfo;
use bytes::Bytes;

/// Bytes of one in-flight request's pipeline future (`Gateway::handle`, as a test build lays it
/// out), for an action request on the sandbox: 10,776 before the stages were boxed, 4,024 after.
/// Raise it only with a figure from `bench/run.sh` (`passgate-c1000`).
const REQUEST_FUTURE_BUDGET: usize = 5 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_stays_within_its_memory_budget() {
    let env = dev::start(DevOptions {
        listen: "127.0.0.1:0".into(),
        admin_listen: None,
        console_listen: None,
        ..DevOptions::default()
    })
    .await
    .expect("sandbox gateway");
    let gw = env.gateway();
    let req = http::Request::post(
        "/v1.0/deviceManagement/managedDevices/00000000-0000-0000-0000-000000000001/recoverPasscode",
    )
    .body(http_body_util::Empty::<Bytes>::new())
    .expect("request");
    let fut = gw.handle(req, ConnInfo::from(std::net::IpAddr::from([127, 0, 0, 1])));
    let size = std::mem::size_of_val(&fut);
    drop(fut);
    eprintln!("Gateway::handle future: {size} bytes");
    assert!(
        size <= REQUEST_FUTURE_BUDGET,
        "one request in flight holds a {size}-byte future, over its {REQUEST_FUTURE_BUDGET}-byte budget"
    );
    env.stop().await;
}
