//! The controller's Kubernetes IO against a fake API server (tower-test): one scenario per test,
//! asserting the exact requests — status patches (server-side apply, field manager, body),
//! Events, Lease create / renew / takeover, per-replica report Leases, TokenReview. Objects are in
//! the shape the API server returns them (`tests/fixtures/*.json`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::time::Instant;
use tollgate_controller::distribute::Authenticator;
use tollgate_controller::distribute::auth::TokenReviewer;
use tollgate_controller::inputs::{Inputs, Object};
use tollgate_controller::leader::{Elector, LeaseSettings};
use tollgate_controller::metrics::ControllerMetrics;
use tollgate_controller::replicas::{ApiReport, ReplicaReport, ReportSettings, Reports};
use tollgate_controller::status::{FIELD_MANAGER, StatusWriter};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn fake_api() -> (Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn object<T: serde::de::DeserializeOwned>(value: Value) -> Object<T> {
    Object { object: serde_json::from_value(value).unwrap(), file: None }
}

fn inputs(api: Value, routes: Vec<Value>) -> Inputs {
    Inputs {
        gateway_apis: vec![object(api)],
        routes: routes.into_iter().map(object).collect(),
        ..Inputs::default()
    }
}

fn now() -> Time {
    Time("2025-06-02T10:00:00Z".parse::<Timestamp>().unwrap())
}

fn respond(send: mock::SendResponse<Response<Body>>, status: u16, body: &Value) {
    let response =
        Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap();
    send.send_response(response);
}

async fn next(handle: &mut ApiHandle) -> (http::request::Parts, Value, mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("a request within 10 s")
        .expect("the client is alive");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (parts, value, send)
}

fn status_writer(client: Client) -> StatusWriter {
    StatusWriter::new(client, None, ControllerMetrics::new().unwrap())
}

/// Every condition of a fresh object gets `now`; the patch is SSA under our field manager, forced,
/// on the status subresource, and carries nothing but identity and status.
#[tokio::test]
async fn a_new_route_gets_its_status_by_server_side_apply() {
    let (client, handle) = fake_api();
    let inputs = inputs(fixture("gatewayapi.json"), vec![fixture("route.json")]);
    let compiled = tollgate_controller::compile(&inputs);
    let route_report: Vec<_> =
        compiled.reports.iter().filter(|r| r.key.name == "get-order").cloned().collect();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::PATCH);
        assert_eq!(
            parts.uri.to_string(),
            format!(
                "/apis/tollgate.dev/v1alpha1/namespaces/shop/routes/get-order/status?&force=true&fieldManager={FIELD_MANAGER}"
            )
        );
        assert_eq!(parts.headers["content-type"], "application/apply-patch+yaml");
        let t = "2025-06-02T10:00:00Z";
        assert_eq!(
            body,
            json!({
                "apiVersion": "tollgate.dev/v1alpha1",
                "kind": "Route",
                "metadata": {"name": "get-order", "namespace": "shop"},
                "status": {
                    "observedGeneration": 2,
                    "conditions": [
                        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Accepted",
                         "observedGeneration": 2, "lastTransitionTime": t},
                        {"type": "Programmed", "status": "True", "reason": "Programmed",
                         "message": "Served by the current configuration", "observedGeneration": 2, "lastTransitionTime": t},
                        {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                         "message": "All references resolved", "observedGeneration": 2, "lastTransitionTime": t},
                    ],
                },
            })
        );
        assert!(body.get("spec").is_none(), "never touch spec");
        respond(send, 200, &fixture("route.json"));
    });
    let mut writer = status_writer(client);
    let summary = writer.write(&route_report, &inputs, &BTreeMap::new(), &now()).await;
    server.await.unwrap();
    assert_eq!((summary.written, summary.skipped, summary.failed), (1, 0, 0));

    // Written once: the same report again sends nothing (the fake server would never answer).
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        writer.write(&route_report, &inputs, &BTreeMap::new(), &now()),
    )
    .await
    .expect("no request, so no wait");
    assert_eq!((again.written, again.skipped), (0, 1));
}

/// An object whose status already says what compile says gets no patch, whatever the clock says.
#[tokio::test]
async fn an_up_to_date_status_is_not_written() {
    let (client, _handle) = fake_api();
    let mut route = fixture("route.json");
    let t = "2025-06-01T08:00:00Z";
    route["status"] = json!({
        "observedGeneration": 2,
        "conditions": [
            {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "All references resolved", "observedGeneration": 2, "lastTransitionTime": t},
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Accepted", "observedGeneration": 2, "lastTransitionTime": t},
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "Served by the current configuration", "observedGeneration": 2, "lastTransitionTime": t},
        ],
    });
    let inputs = inputs(fixture("gatewayapi.json"), vec![route]);
    let compiled = tollgate_controller::compile(&inputs);
    let reports: Vec<_> = compiled.reports.iter().filter(|r| r.key.name == "get-order").cloned().collect();
    let mut writer = status_writer(client);
    let summary = tokio::time::timeout(
        Duration::from_secs(10),
        writer.write(&reports, &inputs, &BTreeMap::new(), &now()),
    )
    .await
    .expect("no request was made");
    assert_eq!((summary.written, summary.skipped), (0, 1));
}

/// A flip keeps the unchanged conditions' times and stamps the flipped one; a rejection also
/// publishes one Warning Event (events.k8s.io/v1) naming the reason and the field.
#[tokio::test]
async fn a_rejection_moves_only_the_flipped_condition_and_raises_an_event() {
    let (client, handle) = fake_api();
    let mut route = fixture("route-bad.json");
    let old = "2025-06-01T08:00:00Z";
    route["status"] = json!({
        "observedGeneration": 1,
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Accepted", "observedGeneration": 1, "lastTransitionTime": old},
            {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "All references resolved", "observedGeneration": 1, "lastTransitionTime": old},
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "Served by the current configuration", "observedGeneration": 1, "lastTransitionTime": old},
        ],
    });
    let inputs = inputs(fixture("gatewayapi.json"), vec![route]);
    let compiled = tollgate_controller::compile(&inputs);
    let reports: Vec<_> = compiled.reports.iter().filter(|r| r.key.name == "bad-path").cloned().collect();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::PATCH);
        let conditions = body["status"]["conditions"].as_array().unwrap().clone();
        let by_type: BTreeMap<String, Value> =
            conditions.into_iter().map(|c| (c["type"].as_str().unwrap().to_string(), c)).collect();
        assert_eq!(by_type["Accepted"]["status"], "False");
        assert_eq!(by_type["Accepted"]["reason"], "Invalid");
        assert!(by_type["Accepted"]["message"].as_str().unwrap().contains("spec.match.path"), "{body}");
        assert_eq!(by_type["Accepted"]["lastTransitionTime"], "2025-06-02T10:00:00Z");
        assert_eq!(by_type["ResolvedRefs"]["lastTransitionTime"], old, "unchanged status keeps its time");
        assert_eq!(by_type["Programmed"]["status"], "False");
        assert_eq!(by_type["Programmed"]["lastTransitionTime"], "2025-06-02T10:00:00Z");
        respond(send, 200, &fixture("route-bad.json"));

        let (parts, event, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri.path(), "/apis/events.k8s.io/v1/namespaces/shop/events");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "Invalid");
        assert_eq!(event["action"], "Compile");
        assert_eq!(event["reportingController"], "tollgate-controller");
        assert_eq!(event["regarding"]["kind"], "Route");
        assert_eq!(event["regarding"]["name"], "bad-path");
        assert_eq!(event["regarding"]["uid"], "c2d8e1f0-7a6b-4c3d-9e8f-1a2b3c4d5e6f");
        assert!(event["note"].as_str().unwrap().contains("spec.match.path"));
        respond(send, 201, &event);
    });
    let reporter =
        kube::runtime::events::Reporter { controller: "tollgate-controller".into(), instance: None };
    let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
    let mut writer = StatusWriter::new(client, Some(recorder), ControllerMetrics::new().unwrap());
    let summary = writer.write(&reports, &inputs, &BTreeMap::new(), &now()).await;
    server.await.unwrap();
    assert_eq!(summary.written, 1);
}

/// GatewayAPI status carries how many proxies of its fleet serve its latest generation;
/// `Programmed` is true only when all connected proxies do.
#[tokio::test]
async fn gateway_api_status_counts_the_proxies_of_its_fleet() {
    use tollgate_controller::distribute::sessions::ApiProxies;
    use tollgate_controller::status::FleetProgress;
    let (client, handle) = fake_api();
    let inputs = inputs(fixture("gatewayapi.json"), vec![fixture("route.json")]);
    let compiled = tollgate_controller::compile(&inputs);
    let reports: Vec<_> = compiled.reports.iter().filter(|r| r.key.name == "shop").cloned().collect();
    let progress = BTreeMap::from([(
        tollgate_ir::ObjectKey::new("shop", "shop"),
        FleetProgress { fleet: "default".into(), proxies: ApiProxies { connected: 3, up_to_date: 2 } },
    )]);
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.uri.path(), "/apis/tollgate.dev/v1alpha1/namespaces/shop/gatewayapis/shop/status");
        assert_eq!(body["kind"], "GatewayAPI");
        assert_eq!(body["status"]["proxies"], json!({"connected": 3, "upToDate": 2}));
        let programmed = body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Programmed")
            .unwrap()
            .clone();
        assert_eq!(programmed["status"], "False");
        assert_eq!(programmed["reason"], "Pending");
        assert_eq!(programmed["message"], "2 of 3 proxies of fleet default serve generation 3");
        respond(send, 200, &fixture("gatewayapi.json"));
    });
    let mut writer = status_writer(client);
    writer.write(&reports, &inputs, &progress, &now()).await;
    server.await.unwrap();
}

fn lease_settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: "tollgate-system".into(),
        name: "tollgate-controller".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    }
}

/// The API server's answer for a Lease that does not exist.
fn lease_not_found(send: mock::SendResponse<Response<Body>>, name: &str) {
    let message = format!("leases.coordination.k8s.io \"{name}\" not found");
    respond(
        send,
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                "message": message}),
    );
}

fn wall() -> Timestamp {
    "2025-06-02T10:00:00Z".parse().unwrap()
}

#[tokio::test]
async fn a_missing_lease_is_created_with_this_replica_as_holder() {
    let (client, handle) = fake_api();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (parts, _, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::GET);
        assert_eq!(
            parts.uri.path(),
            "/apis/coordination.k8s.io/v1/namespaces/tollgate-system/leases/tollgate-controller"
        );
        lease_not_found(send, "tollgate-controller");
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri.path(), "/apis/coordination.k8s.io/v1/namespaces/tollgate-system/leases");
        assert_eq!(
            body,
            json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "tollgate-controller", "namespace": "tollgate-system"},
                "spec": {
                    "holderIdentity": "me",
                    "leaseDurationSeconds": 15,
                    "acquireTime": "2025-06-02T10:00:00.000000Z",
                    "renewTime": "2025-06-02T10:00:00.000000Z",
                    "leaseTransitions": 0,
                },
            })
        );
        respond(send, 201, &body);
    });
    let mut elector = Elector::new(client, lease_settings("me"));
    let now = tokio::time::Instant::now();
    assert!(elector.step(now, wall()).await.unwrap());
    assert!(elector.is_leader(now));
    server.await.unwrap();
}

#[tokio::test]
async fn the_holder_renews_with_the_resource_version_it_read() {
    let (client, handle) = fake_api();
    let holder = "tollgate-controller-7d9f8-abc_1a2b3c4d";
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (_, _, send) = next(&mut handle).await;
        respond(send, 200, &fixture("lease.json"));
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::PUT);
        assert_eq!(
            parts.uri.path(),
            "/apis/coordination.k8s.io/v1/namespaces/tollgate-system/leases/tollgate-controller"
        );
        assert_eq!(body["metadata"]["resourceVersion"], "47001", "optimistic concurrency");
        assert_eq!(body["spec"]["holderIdentity"], "tollgate-controller-7d9f8-abc_1a2b3c4d");
        assert_eq!(body["spec"]["renewTime"], "2025-06-02T10:00:00.000000Z");
        assert_eq!(body["spec"]["acquireTime"], "2025-06-02T09:00:00.000000Z", "acquireTime stays");
        assert_eq!(body["spec"]["leaseTransitions"], 2, "a renewal is not a transition");
        respond(send, 200, &body);
    });
    let mut elector = Elector::new(client, lease_settings(holder));
    assert!(elector.step(tokio::time::Instant::now(), wall()).await.unwrap());
    server.await.unwrap();
}

/// Another holder's Lease is taken over only after its record stood still for a whole lease
/// duration on this replica's clock; the takeover bumps leaseTransitions.
#[tokio::test(start_paused = true)]
async fn a_lease_that_stopped_being_renewed_is_taken_over() {
    let (client, handle) = fake_api();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        // First look: someone else holds it; no write.
        let (parts, _, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::GET);
        respond(send, 200, &fixture("lease.json"));
        // 16 s later, unchanged: take it over.
        let (parts, _, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::GET);
        respond(send, 200, &fixture("lease.json"));
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::PUT);
        assert_eq!(body["metadata"]["resourceVersion"], "47001");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        assert_eq!(body["spec"]["acquireTime"], "2025-06-02T10:00:00.000000Z");
        assert_eq!(body["spec"]["renewTime"], "2025-06-02T10:00:00.000000Z");
        respond(send, 200, &body);
    });
    let mut elector = Elector::new(client, lease_settings("me"));
    let start = tokio::time::Instant::now();
    assert!(!elector.step(start, wall()).await.unwrap(), "held by another replica");
    assert!(!elector.is_leader(start));
    let later = start + Duration::from_secs(16);
    assert!(elector.step(later, wall()).await.unwrap(), "expired: taken over");
    assert!(elector.is_leader(later));
    assert!(!elector.is_leader(later + Duration::from_secs(15)), "a leader that cannot renew steps down");
    server.await.unwrap();
}

/// Two replicas race for an expired Lease: the loser's PUT gets 409 Conflict and it stays a
/// follower.
#[tokio::test]
async fn losing_the_race_for_the_lease_leaves_a_follower() {
    let (client, handle) = fake_api();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let mut released = fixture("lease.json");
        released["spec"]["holderIdentity"] = Value::Null;
        let (_, _, send) = next(&mut handle).await;
        respond(send, 200, &released);
        let (parts, _, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::PUT);
        respond(
            send,
            409,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
            "message": "Operation cannot be fulfilled on leases.coordination.k8s.io \"tollgate-controller\": the object has been modified"}),
        );
    });
    let mut elector = Elector::new(client, lease_settings("me"));
    let now = tokio::time::Instant::now();
    assert!(!elector.step(now, wall()).await.unwrap());
    assert!(!elector.is_leader(now));
    server.await.unwrap();
}

/// A proxy's projected token is checked with a TokenReview bound to the controller's audience;
/// only the listed ServiceAccount is let in, and the verdict is cached.
#[tokio::test]
async fn token_review_admits_only_the_listed_service_account() {
    let (client, handle) = fake_api();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri.path(), "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(
            body,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
                   "spec": {"token": "eyJhbGciOiJSUzI1NiJ9.proxy.sig", "audiences": ["tollgate-controller"]}})
        );
        respond(send, 201, &fixture("tokenreview-allowed.json"));
        let (_, body, send) = next(&mut handle).await;
        assert_eq!(body["spec"]["token"], "another.token.sig");
        let mut other = fixture("tokenreview-allowed.json");
        other["status"]["user"]["username"] = json!("system:serviceaccount:default:default");
        respond(send, 201, &other);
    });
    let allowed = BTreeSet::from(["system:serviceaccount:tollgate-system:tollgate-proxy".to_string()]);
    let auth = Authenticator::new(
        None,
        Some(TokenReviewer::new(client, vec!["tollgate-controller".into()], allowed)),
    );
    let bearer = |t: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        h
    };
    let who = auth.authenticate(&bearer("eyJhbGciOiJSUzI1NiJ9.proxy.sig")).await.unwrap();
    assert_eq!(who.0, "system:serviceaccount:tollgate-system:tollgate-proxy");
    // Cached: no second review for the same token.
    assert!(auth.authenticate(&bearer("eyJhbGciOiJSUzI1NiJ9.proxy.sig")).await.is_ok());
    let denied = auth.authenticate(&bearer("another.token.sig")).await.unwrap_err();
    assert!(denied.to_string().contains("system:serviceaccount:default:default"), "{denied}");
    assert!(auth.authenticate(&http::HeaderMap::new()).await.is_err());
    server.await.unwrap();
}

/// The canary analysis (leader): a new canary's state is written to `status.stages` under its own
/// field manager; counts reported by proxies are judged when the interval ends (injected clock),
/// and a failing canary's rollback is written with its reason and announced by a Warning Event.
#[tokio::test]
async fn canary_analysis_writes_its_steps_to_status_stages_with_an_event_per_step() {
    use std::sync::Arc;

    use tollgate_controller::canary::{ManualClock, leader};
    use tollgate_controller::distribute::Sessions;
    use tollgate_controller::load::Loaded;
    use tollgate_controller::reconcile::Report;
    use tollgate_ir::canary::{Track, TrackCounts, TrackReport};

    let (client, handle) = fake_api();
    let mut api = fixture("gatewayapi.json");
    api["spec"]["stages"] = json!([{"name": "prod", "canary": {"weight": 10,
        "analysis": {"interval": "1m", "minRequests": 10, "maxErrorRate": 1}}}]);
    let loaded = Loaded { inputs: inputs(api, vec![]), ..Loaded::default() };
    let compiled = tollgate_controller::compile(&loaded.inputs);
    let revision = compiled.snapshot.apis[0].stages[0].canary.as_ref().unwrap().revision.clone();
    let (_reports_tx, reports) =
        tokio::sync::watch::channel(Some(Arc::new(Report { loaded: Arc::new(loaded), compiled })));
    let (_leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let sessions = Sessions::new(ControllerMetrics::new().unwrap());
    let session = sessions.open("default", "token", "proxy-a");
    let clock = ManualClock::new(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000));
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter { controller: "tollgate-controller".into(), instance: None },
    );
    let writer = leader::CanaryWriter { client, recorder: Some(recorder) };
    let setup = leader::AnalysisLoop {
        clock: clock.clone(),
        writer,
        sessions: Arc::clone(&sessions),
        reports,
        leader: leader_rx,
        tick: Duration::from_millis(20),
        peers: None,
        metrics: ControllerMetrics::new().unwrap(),
    };
    let task = tokio::spawn(leader::run(setup, shutdown));
    let mut handle = pin!(handle);
    let path = format!(
        "/apis/tollgate.dev/v1alpha1/namespaces/shop/gatewayapis/shop/status?&force=true&fieldManager={}",
        leader::FIELD_MANAGER
    );
    // 1. The analysis starts at the spec's weight.
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!((parts.method.as_str(), parts.uri.to_string()), ("PATCH", path.clone()));
    assert!(body.get("spec").is_none(), "never touch spec");
    let canary = &body["status"]["stages"][0]["canary"];
    assert_eq!(body["status"]["stages"][0]["name"], "prod");
    assert_eq!(
        (canary["phase"].as_str(), canary["effectiveWeight"].as_f64()),
        (Some("Progressing"), Some(10.0))
    );
    assert_eq!(canary["revision"].as_str(), Some(revision.as_str()));
    respond(send, 200, &fixture("gatewayapi.json"));

    // 2. Two proxies report; one of five canary requests failed: rolled back at the interval's end.
    let mut canary_counts = TrackCounts::default();
    for i in 0..50 {
        canary_counts.observe(if i % 5 == 0 { 503 } else { 200 }, 4.0);
    }
    let report = |track, counts: &TrackCounts| TrackReport {
        api: tollgate_ir::ObjectKey::new("shop", "shop"),
        stage: "prod".into(),
        track,
        revision: revision.clone(),
        counts: counts.clone(),
    };
    assert!(sessions.record_stats(&session.id, vec![report(Track::Canary, &canary_counts)]));
    assert!(sessions.record_stats(&session.id, vec![report(Track::Canary, &canary_counts)]));
    assert!(!sessions.record_stats("unknown-session", vec![]), "reports need a live session");
    clock.advance(Duration::from_secs(60));
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(parts.method, http::Method::POST, "an Event first");
    assert!(parts.uri.to_string().contains("/events"), "{}", parts.uri);
    assert_eq!((body["type"].as_str(), body["reason"].as_str()), (Some("Warning"), Some("CanaryRolledBack")));
    assert!(body["note"].as_str().unwrap().contains("canary error rate 20.00 % (20 of 100"), "{body}");
    respond(send, 201, &body);
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(parts.uri.to_string(), path);
    let canary = &body["status"]["stages"][0]["canary"];
    assert_eq!(
        (canary["phase"].as_str(), canary["effectiveWeight"].as_f64()),
        (Some("RolledBack"), Some(0.0))
    );
    assert!(canary["lastDecision"].as_str().unwrap().starts_with("rolled back from 10 % to 0 %"), "{canary}");
    assert_eq!(canary["history"].as_array().unwrap().len(), 1);
    respond(send, 200, &fixture("gatewayapi.json"));
    let _ = stop.send(true);
    task.await.unwrap();
}

/// Canary counts across replicas: this replica's totals go into its own Lease (SSA, label and
/// annotation); the leader lists the others' and gets only what grew since its last read (the
/// first sight of a peer is a baseline, this replica's own Lease is skipped).
#[tokio::test]
async fn canary_counts_travel_between_replicas_in_leases() {
    use tollgate_controller::canary::peers::{PEER_ANNOTATION, PEER_LABEL, PeerSettings, Peers, Totals};
    use tollgate_ir::canary::{Track, TrackCounts, TrackReport};

    let report = |requests: u64| {
        let mut counts = TrackCounts::default();
        for _ in 0..requests {
            counts.observe(200, 2.0);
        }
        TrackReport {
            api: tollgate_ir::ObjectKey::new("shop", "shop"),
            stage: "prod".into(),
            track: Track::Canary,
            revision: "r1".into(),
            counts,
        }
    };
    let lease = move |name: &str, requests: u64| {
        json!({"metadata": {"name": name, "namespace": "tollgate-system", "labels": {PEER_LABEL: "true"},
               "annotations": {PEER_ANNOTATION: serde_json::to_string(&vec![report(requests)]).unwrap()}},
               "spec": {"holderIdentity": name}})
    };
    let (client, handle) = fake_api();
    let settings = PeerSettings {
        namespace: "tollgate-system".into(),
        prefix: "tollgate-controller".into(),
        identity: "a".into(),
    };
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::PATCH);
        assert_eq!(
            parts.uri.to_string(),
            "/apis/coordination.k8s.io/v1/namespaces/tollgate-system/leases/tollgate-controller-canary-a?&force=true&fieldManager=tollgate-canary"
        );
        assert_eq!(body["metadata"]["labels"][PEER_LABEL], "true");
        let published: Vec<TrackReport> =
            serde_json::from_str(body["metadata"]["annotations"][PEER_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(published[0].counts.requests, 7);
        respond(send, 200, &body);
        for peer_requests in [100, 130] {
            let (parts, _, send) = next(&mut handle).await;
            assert_eq!(parts.method, http::Method::GET);
            assert!(
                parts.uri.to_string().contains("labelSelector=tollgate.dev%2Fcanary-report%3Dtrue"),
                "{}",
                parts.uri
            );
            let list = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList", "metadata": {},
                              "items": [lease("tollgate-controller-canary-a", 7), lease("tollgate-controller-canary-b", peer_requests)]});
            respond(send, 200, &list);
        }
    });
    let mut peers = Peers::new(client, settings);
    let mut totals = Totals::default();
    totals.add(&[report(7)]);
    peers.publish(&totals, Timestamp::now()).await.unwrap();
    assert!(peers.growth().await.unwrap().is_empty(), "the first sight of a peer is its baseline");
    let growth = peers.growth().await.unwrap();
    server.await.unwrap();
    assert_eq!(growth.len(), 1);
    assert_eq!(growth[0].counts.requests, 30);
}

// Proxy counts shared between controller replicas (`replicas`): the exact Lease requests each
// replica makes, and how the leader reads the others' reports.

fn report_settings() -> ReportSettings {
    ReportSettings {
        namespace: "tollgate-system".into(),
        prefix: "tollgate-controller".into(),
        identity: "controller-0_1a2b".into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    }
}

fn report_lease(name: &str, renew: &str, report: Option<&str>) -> Value {
    let mut annotations = json!({});
    if let Some(report) = report {
        annotations = json!({"tollgate.dev/proxies": report});
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "tollgate-system", "resourceVersion": "7",
                     "labels": {"tollgate.dev/proxy-report": "true"}, "annotations": annotations},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 15, "renewTime": renew},
    })
}

fn lease_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList", "metadata": {"resourceVersion": "9"},
           "items": items})
}

/// A replica writes its report into its own Lease by server-side apply: identity, labels, the
/// report annotation and the renew time, nothing else.
#[tokio::test]
async fn a_replica_applies_its_report_lease() {
    let (client, handle) = fake_api();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::PATCH);
        assert_eq!(
            parts.uri.to_string(),
            format!(
                "/apis/coordination.k8s.io/v1/namespaces/tollgate-system/leases/\
                 tollgate-controller-proxies-controller-0-1a2b?&force=true&fieldManager={FIELD_MANAGER}"
            )
        );
        assert_eq!(parts.headers["content-type"], "application/apply-patch+yaml");
        assert_eq!(
            body,
            json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": "tollgate-controller-proxies-controller-0-1a2b",
                    "namespace": "tollgate-system",
                    "labels": {"tollgate.dev/proxy-report": "true"},
                    "annotations": {"tollgate.dev/proxies":
                        r#"{"shop/shop":{"generation":3,"connected":2,"upToDate":1}}"#},
                },
                "spec": {
                    "holderIdentity": "controller-0_1a2b",
                    "leaseDurationSeconds": 15,
                    "renewTime": "2025-06-02T10:00:00.000000Z",
                },
            })
        );
        respond(send, 200, &body);
    });
    let reports = Reports::new(client, report_settings());
    let report = ReplicaReport::from([(
        "shop/shop".to_string(),
        ApiReport { generation: 3, connected: 2, up_to_date: 1 },
    )]);
    reports.publish(&report, "2025-06-02T10:00:00Z".parse::<Timestamp>().unwrap()).await.unwrap();
    server.await.unwrap();
}

/// The leader lists report Leases by label, skips its own, skips unreadable ones, and drops a
/// peer whose renew time stayed the same for a whole lease duration (a replica that died).
#[tokio::test]
async fn the_leader_reads_live_peer_reports_and_drops_stale_ones() {
    let (client, handle) = fake_api();
    let own = "tollgate-controller-proxies-controller-0-1a2b";
    let alive = r#"{"shop/shop":{"generation":3,"connected":4,"upToDate":4}}"#;
    let dead = r#"{"shop/shop":{"generation":2,"connected":1,"upToDate":0}}"#;
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        // First look: both readable peers count (a new leader cannot know yet that one is dead).
        for alive_renew in ["2025-06-02T10:00:00.000000Z", "2025-06-02T10:00:20.000000Z"] {
            let (parts, _, send) = next(&mut handle).await;
            assert_eq!(parts.method, http::Method::GET);
            assert_eq!(
                parts.uri.to_string(),
                "/apis/coordination.k8s.io/v1/namespaces/tollgate-system/leases?&labelSelector=tollgate.dev%2Fproxy-report%3Dtrue"
            );
            respond(
                send,
                200,
                &lease_list(vec![
                    report_lease(own, "2025-06-02T10:00:00.000000Z", Some("{}")),
                    report_lease("tollgate-controller-proxies-controller-1-aaaa", alive_renew, Some(alive)),
                    report_lease(
                        "tollgate-controller-proxies-controller-2-bbbb",
                        "2025-06-02T09:59:59.000000Z",
                        Some(dead),
                    ),
                    report_lease("tollgate-controller-proxies-garbled", alive_renew, Some("not json")),
                ]),
            );
        }
    });
    let mut reports = Reports::new(client, report_settings());
    let start = Instant::now();
    let first = reports.peers(start).await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    // 20 s later: the first peer renewed, the second did not (15 s lease).
    let later = reports.peers(start + Duration::from_secs(20)).await.unwrap();
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0]["shop/shop"], ApiReport { generation: 3, connected: 4, up_to_date: 4 });
    server.await.unwrap();
}

/// A replica that stops deletes its report; one that is already gone is not an error.
#[tokio::test]
async fn a_stopping_replica_deletes_its_report() {
    let (client, handle) = fake_api();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (parts, _, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::DELETE);
        assert_eq!(
            parts.uri.path(),
            "/apis/coordination.k8s.io/v1/namespaces/tollgate-system/leases/tollgate-controller-proxies-controller-0-1a2b"
        );
        lease_not_found(send, "tollgate-controller-proxies-controller-0-1a2b");
    });
    Reports::new(client, report_settings()).withdraw().await.unwrap();
    server.await.unwrap();
}
