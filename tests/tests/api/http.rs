//! HTTP/1.1 + JSON on the same socket: every endpoint, and the same peer
//! restrictions and readiness as gRPC.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_answers_every_endpoint_on_the_same_socket() {
    let agent = TestAgent::start(Config {
        batch_limit: 3,
        max_request_bytes: 1024,
        metrics_addr: Some("127.0.0.1:0".parse().expect("address")),
        ..Config::default()
    })
    .await;
    let socket = agent.socket();
    let me = std::process::id();
    let (status, r) = http(socket, &[], &format!("/v1/processes/{me}"));
    assert_eq!(status, 200);
    assert_eq!(
        (r["pid"].as_u64(), &r["state"], &r["source"]),
        (Some(me.into()), &"running".into(), &"host".into())
    );
    let start = r["start_time"].as_u64().expect("start time");
    // The record has exactly the CLI's JSON keys (one shape for both).
    let cli = Command::new(pidmap_bin())
        .args(["resolve", "-o", "json", &me.to_string()])
        .env("PIDMAP_SOCKET", socket)
        .env("RUST_LOG", "off")
        .output()
        .expect("pidmap resolve");
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("CLI JSON");
    let keys = |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&r), keys(&cli));

    let (_, r) = http(
        socket,
        &[],
        &format!("/v1/processes/{me}?start_time={}", start + 1),
    );
    assert_eq!(r["state"], "unknown", "another start time");
    let (_, r) = http(
        socket,
        &[],
        &format!("/v1/processes?pid=1&pid={me}:{start}&pid=4000000"),
    );
    let states: Vec<&str> = r
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["running", "running", "unknown"]);
    let (_, r) = http(socket, &[], &format!("/v1/processes/{me}?format=otel"));
    assert_eq!(r["process.pid"].as_u64(), Some(me.into()));
    assert!(r.get("container.id").is_none(), "{r}");
    let (status, r) = http(
        socket,
        &[],
        "/v1/containers?all=true&namespace=no-such-namespace",
    );
    assert_eq!((status, r), (200, serde_json::json!([])));
    let (_, r) = http(socket, &[], "/v1/whoami");
    assert_eq!(r["comm"], "curl", "the caller, from the peer credentials");
    let (_, r) = http(socket, &[], "/v1/status");
    assert_eq!(r["ready"], true);

    // Errors: JSON, with the status matching the gRPC code.
    for (path, want, code) in [
        ("/v1/processes/0", 400, "InvalidArgument"),
        ("/v1/processes/5000000", 400, "InvalidArgument"),
        ("/v1/processes/abc", 400, "InvalidArgument"),
        ("/v1/processes/1?startime=5", 400, "InvalidArgument"),
        ("/v1/processes", 400, "InvalidArgument"),
        (
            "/v1/processes?pid=1&pid=2&pid=3&pid=4",
            413,
            "InvalidArgument",
        ),
        ("/v1/containers/nope/processes", 404, "NotFound"),
        ("/v1/nope", 404, "NotFound"),
        ("/", 404, "NotFound"),
    ] {
        let (status, body) = http(socket, &[], path);
        assert_eq!((status, error_code(&body)), (want, code), "{path}: {body}");
    }
    let long = format!("/v1/processes/1?{}", "x".repeat(2000));
    let (status, body) = http(socket, &[], &long);
    assert_eq!(status, 413, "{body}");
    let (status, body) = http(socket, &["-X", "POST"], "/v1/status");
    assert_eq!((status, error_code(&body)), (405, "Unimplemented"));

    // Keep-alive: two requests, one connection.
    let out = Command::new("curl")
        .args(["-sv", "-o", "/dev/null", "-o", "/dev/null", "--unix-socket"])
        .arg(socket)
        .args([
            "http://localhost/v1/status",
            "http://localhost/v1/processes/1",
        ])
        .output()
        .expect("curl");
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(
        verbose.contains("Re-using existing connection"),
        "{verbose}"
    );

    // Requests over HTTP count in the same metrics as gRPC's.
    let addr = agent.agent().metrics_addr().expect("metrics on");
    let scrape = Command::new("curl")
        .args(["-s", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl metrics");
    let scrape = String::from_utf8_lossy(&scrape.stdout);
    let count = |method: &str, code: &str| {
        let series = format!("pidmap_api_requests_total{{method=\"{method}\",code=\"{code}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("Resolve", "OK") >= 4, "{scrape}");
    assert!(count("ResolveBatch", "InvalidArgument") >= 2, "{scrape}");
    assert!(count("WhoAmI", "OK") >= 1, "{scrape}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_keeps_the_same_peer_restrictions_and_readiness() {
    use pidmap::faults::{Fault, Faults};
    let faults = Faults::default();
    let config = Config {
        restrict_peers: true,
        socket_mode: "0666".into(),
        ..Config::default()
    };
    let agent = TestAgent::start_with_faults(config, faults.clone()).await;
    open_to_all(&agent);
    let as_nobody = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(agent.socket())
            .arg(format!("http://localhost{path}"))
            .uid(65534)
            .gid(65534)
            .output()
            .expect("curl as nobody");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text
            .rsplit_once('\n')
            .map(|(b, s)| (b.to_owned(), s.to_owned()))
            .expect("status");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (status.parse::<u16>().expect("status"), body)
    };
    let (status, body) = as_nobody("/v1/processes/1");
    assert_eq!(
        (status, error_code(&body)),
        (403, "PermissionDenied"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("restrict_peers"))
    );
    let (status, body) = as_nobody("/v1/whoami");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["comm"], "curl");
    assert_eq!(as_nobody("/v1/status").0, 200);
    assert_eq!(
        http(agent.socket(), &[], "/v1/processes/1").0,
        200,
        "root may"
    );

    // A hung tracker: not ready, 503, and Status still answers.
    faults.tracker.trigger(Fault::Hang);
    let state = agent.state();
    assert!(
        pidmap_tests::wait_until(
            pidmap::testing::state::STALL_LIMIT + Duration::from_secs(5),
            || { !state.is_ready() }
        )
        .await
    );
    let (status, body) = http(agent.socket(), &[], "/v1/processes/1");
    assert_eq!((status, error_code(&body)), (503, "Unavailable"), "{body}");
    let (status, body) = http(agent.socket(), &[], "/v1/status");
    assert_eq!(
        (status, &body["ready"]),
        (200, &serde_json::Value::Bool(false))
    );
    agent.stop().await;
}
