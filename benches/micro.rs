//! Microbenchmarks of passgate's per-request building blocks: route parse, operator-token checks
//! (decode/header/claims and the RS256 signature, with the key already cached), the policy
//! decision as the configured population grows, and durable audit appends under group commit.
//! Bench-only code: it mints its own RSA key and never touches the network.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
use openidconnect::JsonWebKey;
use passgate::audit::{AuditLog, Decision, DecisionRecord, OperatorRecord, TargetRecord};
use passgate::auth::token::{check_claims, check_header, decode, ClaimRules};
use passgate::auth::{Operator, OperatorKind, TokenVersion};
use passgate::policy::DeviceFacts;
use passgate::policy::{FactsOutcome, Limit, LimitScope, PolicySet, PolicySettings, RequestFacts};
use passgate::routes;
use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

const TENANT: &str = "cdd6998a-1fe9-48f6-915d-b7a5b7552116";
const API: &str = "885b1e7c-7b41-41f0-9e73-a7816b0c3fbc";
const DEVICE: &str = "8e3884bd-146c-4300-9ddd-59928bce1112";
const ISSUER: &str = "https://login.microsoftonline.com/cdd6998a-1fe9-48f6-915d-b7a5b7552116/v2.0";

fn route_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_parse");
    let forms = [
        (
            "device_management",
            format!("/v1.0/deviceManagement/managedDevices/{DEVICE}/recoverPasscode"),
        ),
        (
            "user",
            format!("/beta/users/72aca123-ad72-4c7b-84b5-6d536a354d63/managedDevices/{DEVICE}/recoverPasscode"),
        ),
        ("unknown", "/v1.0/me/messages?$top=1".to_string()),
    ];
    for (name, path) in &forms {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let _ = black_box(routes::parse(&http::Method::POST, black_box(path)));
            })
        });
    }
    g.finish();
}

fn b64u(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh RS256 key, its JWK (as Entra publishes it), the raw (n, e) and a v2 token for "alice".
fn mint() -> (CoreJsonWebKey, (Vec<u8>, Vec<u8>), String) {
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa keygen");
    let (n, e) = (key.n().to_bytes_be(), key.e().to_bytes_be());
    let jwk: CoreJsonWebKey = serde_json::from_value(serde_json::json!({
        "kty": "RSA", "use": "sig", "kid": "bench", "n": b64u(&n), "e": b64u(&e),
    }))
    .expect("jwk");
    let now = chrono::Utc::now().timestamp();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "bench"});
    let claims = serde_json::json!({
        "aud": API, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 86_400, "ver": "2.0",
        "tid": TENANT, "oid": "72aca123-ad72-4c7b-84b5-6d536a354d63", "sub": "bench",
        "azp": "9791d56b-8586-4c2f-8fd8-25ab3e7d7230", "scp": "RecoverPasscode.Request",
        "groups": ["f3d0263f-adae-4f31-84f1-5b45713ed0b7"],
        "preferred_username": "alice@contoso.onmicrosoft.com", "name": "Alice Helpdesk",
    });
    let input = format!(
        "{}.{}",
        b64u(header.to_string().as_bytes()),
        b64u(claims.to_string().as_bytes())
    );
    let sig = SigningKey::<sha2::Sha256>::new(key).sign(input.as_bytes());
    (jwk, (n, e), format!("{input}.{}", b64u(&sig.to_bytes())))
}

fn token_verify(c: &mut Criterion) {
    let (jwk, (n, e), token) = mint();
    let rules = ClaimRules {
        tenant_id: TENANT.into(),
        audiences: vec![API.into(), "api://passgate".into()],
        accept_v1: true,
        accept_v2: true,
        v1_issuer: format!("https://sts.windows.net/{TENANT}/"),
        v2_issuer: ISSUER.into(),
        leeway: Duration::from_secs(60),
        required_scope: Some("RecoverPasscode.Request".into()),
    };
    let algs = vec!["RS256".to_string()];
    let typs = vec!["JWT".to_string(), "at+jwt".to_string()];
    let now = chrono::Utc::now().timestamp();
    // Sanity: the path under test accepts the token.
    let t = decode(&token).expect("decodes");
    jwk.verify_signature(
        &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        t.signing_input,
        &t.signature,
    )
    .expect("signature verifies");
    check_claims(&t.claims, &rules, now).expect("claims pass");

    let mut g = c.benchmark_group("token");
    g.bench_function("decode_header_claims", |b| {
        b.iter(|| {
            let t = decode(black_box(&token)).expect("decodes");
            check_header(&t.header, &algs, &typs).expect("header");
            black_box(check_claims(&t.claims, &rules, now).expect("claims"))
        })
    });
    g.bench_function("signature_rs256_cached_key", |b| {
        b.iter(|| {
            jwk.verify_signature(
                &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                black_box(t.signing_input),
                black_box(&t.signature),
            )
            .expect("verifies")
        })
    });
    // passgate's path since performance round 2: ring (the provider rustls already links), with the
    // key's components decoded once at fetch. The openidconnect/rsa-crate check above is kept for
    // comparison (it is what passgate paid before).
    let ring_key = passgate::auth::keys::RsaComponents {
        n: n.clone(),
        e: e.clone(),
    };
    assert!(ring_key.verify("RS256", t.signing_input, &t.signature));
    g.bench_function("signature_rs256_passgate_ring", |b| {
        b.iter(|| {
            assert!(ring_key.verify("RS256", black_box(t.signing_input), black_box(&t.signature)))
        })
    });
    g.finish();
}

fn guid(prefix: u32, i: u64) -> String {
    format!(
        "{prefix:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (i >> 32) & 0xffff,
        (i >> 20) & 0xfff,
        (i >> 8) & 0xfff,
        i
    )
}

/// One policy naming `users` operators and `groups` operator groups. The calling operator is not
/// listed by oid but is in the last group, so both the user lookup and the group intersection
/// run; the device check passes, so the full decision is made.
fn policy_fixture(users: u64, groups: u64) -> (PolicySet, Operator, FactsOutcome) {
    let kiosk = "e6867e18-cfe7-4693-bec9-262eb70c4b84".to_string();
    let policy = PolicySettings {
        name: "bench".into(),
        description: None,
        users: (0..users).map(|i| guid(0x0a, i)).collect(),
        groups: (0..groups).map(|i| guid(0x0b, i)).collect(),
        app_roles: BTreeSet::new(),
        device_groups: [kiosk.clone()].into_iter().collect(),
        any_device: false,
        platforms: Some(vec!["Windows Phone".into()]),
        limits: vec![Limit {
            scope: LimitScope::PerOperator,
            count: 20,
            window: Duration::from_secs(3600),
        }],
        justification: None,
        allow_own_device: false,
        break_glass: None,
    };
    // Nine more policies the operator is not in, as a real config would have.
    let mut all: Vec<PolicySettings> = (0..9)
        .map(|p| PolicySettings {
            name: format!("other-{p}"),
            users: (0..10).map(|i| guid(0x0c + p, i)).collect(),
            groups: (0..10).map(|i| guid(0x1c + p, i)).collect(),
            ..policy.clone()
        })
        .collect();
    all.push(policy);
    let mut op_groups: Vec<String> = (0..19).map(|i| guid(0x0f, i)).collect();
    op_groups.push(guid(0x0b, groups - 1));
    let op = Operator {
        oid: guid(0x0e, 7),
        tid: TENANT.into(),
        kind: OperatorKind::User,
        upn: Some("op@contoso.com".into()),
        client_app_id: None,
        groups: op_groups,
        groups_overage: false,
        roles: vec![],
        scopes: vec!["RecoverPasscode.Request".into()],
        token_version: TokenVersion::V2,
    };
    let facts = FactsOutcome::Found(DeviceFacts {
        managed_device_id: DEVICE.into(),
        azure_ad_device_id: Some("adda61ab-c44b-47bb-89eb-6cc454650a5c".into()),
        device_object_id: Some("14a59c06-2aa5-463c-b25a-30a422042956".into()),
        operating_system: "Windows Phone".into(),
        user_principal_name: None,
        user_id: None,
        member_of: [kiosk].into_iter().collect(),
    });
    (PolicySet::new(all), op, facts)
}

fn policy_decision(c: &mut Criterion) {
    let action = routes::parse(
        &http::Method::POST,
        &format!("/v1.0/deviceManagement/managedDevices/{DEVICE}/recoverPasscode"),
    )
    .expect("route");
    let mut g = c.benchmark_group("policy_decision");
    for users in [10u64, 1_000, 100_000] {
        for groups in [10u64, 10_000] {
            let (set, op, facts) = policy_fixture(users, groups);
            let request = RequestFacts::at(chrono::Utc::now());
            let id = BenchmarkId::from_parameter(format!("{users}ops/{groups}groups"));
            g.bench_function(id, |b| {
                b.iter(|| {
                    let screen = set.operator_screen(black_box(&op));
                    let to_check = set.groups_to_check(&screen);
                    black_box(to_check);
                    black_box(
                        set.decide(&screen, &action, &op, &facts, &request)
                            .expect("allowed"),
                    )
                })
            });
        }
    }
    g.finish();
}

fn decision_record(i: u64) -> DecisionRecord {
    DecisionRecord {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id: None,
        client_ip: "127.0.0.1".into(),
        client_cert_subject: None,
        method: "POST".into(),
        path: format!("/v1.0/deviceManagement/managedDevices/{DEVICE}/recoverPasscode"),
        action: Some("recoverPasscode".into()),
        api_version: Some("v1.0".into()),
        operator: Some(OperatorRecord {
            oid: guid(0x0e, i % 100),
            tid: TENANT.into(),
            upn: Some("alice@contoso.onmicrosoft.com".into()),
            kind: "user".into(),
            client_app_id: None,
        }),
        target: Some(TargetRecord {
            managed_device_id: DEVICE.into(),
            route_form: "deviceManagement".into(),
            user_id: None,
            detected_app_id: None,
        }),
        device: None,
        decision: Decision::Allow,
        reason: "allowed".into(),
        policy: Some("bench".into()),
        status: None,
        message: None,
        abandoned: None,
        approval_id: None,
        report: Vec::new(),
        justification: None,
        break_glass: false,
        inputs: None,
    }
}

fn audit_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // /tmp may be tmpfs on some machines, where fsync is free: use a directory on the build disk.
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let mut g = c.benchmark_group("audit_append_fsync");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    for appenders in [1u64, 16, 64, 256, 1024] {
        let log = AuditLog::open(&dir.path().join(format!("audit-{appenders}.jsonl")))
            .expect("open audit log");
        g.bench_function(
            BenchmarkId::from_parameter(format!("{appenders}_appenders")),
            |b| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(appenders);
                    rt.block_on(async {
                        let started = Instant::now();
                        let tasks: Vec<_> = (0..appenders)
                            .map(|a| {
                                let log = log.clone();
                                tokio::spawn(async move {
                                    for i in 0..per {
                                        log.record_decision(decision_record(a * per + i))
                                            .await
                                            .expect("durable");
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.expect("appender");
                        }
                        // Scale to the requested count (per * appenders >= iters).
                        started
                            .elapsed()
                            .mul_f64(iters as f64 / (per * appenders) as f64)
                    })
                })
            },
        );
        log.close();
    }
    g.finish();
}

criterion_group!(
    benches,
    route_parse,
    token_verify,
    policy_decision,
    audit_append
);
criterion_main!(benches);
