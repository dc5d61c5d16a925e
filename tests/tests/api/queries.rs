//! Every query method and its errors: Resolve, ResolveBatch, Status, WhoAmI, the
//! lists, concurrent clients, health and reflection.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_answers_known_unknown_and_rejects_bad_pids() {
    let agent = TestAgent::start(Config::default()).await;
    let mut c = client(&agent).await;
    let me = std::process::id();
    let r = c
        .resolve(req(me.into()))
        .await
        .expect("resolve self")
        .into_inner();
    assert_eq!(r.pid, me);
    assert_eq!(r.state, proto::ProcessState::Running as i32);
    assert_eq!(r.source, proto::Source::Host as i32);
    assert!(r.cgroup_path.is_some() && r.comm.is_some() && r.start_time.is_some());

    // A start time that is not the process's: unknown, not another process.
    let wrong = proto::ResolveRequest {
        pid: me.into(),
        start_time: Some(r.start_time.unwrap_or(0) + 1),
    };
    let r = c.resolve(wrong).await.expect("resolve").into_inner();
    assert_eq!(r.state, proto::ProcessState::Unknown as i32);

    // A valid pid nobody holds is an answer, never NOT_FOUND.
    let r = c
        .resolve(req(4_000_000))
        .await
        .expect("unknown pid")
        .into_inner();
    assert_eq!(r.state, proto::ProcessState::Unknown as i32);

    for bad in [0, -1, 5_000_000] {
        let err = c.resolve(req(bad)).await.expect_err("bad pid");
        assert_eq!(err.code(), Code::InvalidArgument, "pid {bad}: {err}");
        assert!(err.message().contains("pid"), "{}", err.message());
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_keeps_order_and_enforces_its_limit() {
    let config = Config {
        batch_limit: 100,
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    let mut c = client(&agent).await;
    let me = i64::from(std::process::id());
    let requests = vec![req(me), req(1), req(4_000_000)];
    let records = c
        .resolve_batch(proto::ResolveBatchRequest { requests })
        .await
        .expect("batch")
        .into_inner()
        .records;
    let pids: Vec<u32> = records.iter().map(|r| r.pid).collect();
    assert_eq!(pids, [me as u32, 1, 4_000_000]);
    assert_eq!(records[2].state, proto::ProcessState::Unknown as i32);

    let too_many = (0..101).map(|_| req(me)).collect();
    let err = c
        .resolve_batch(proto::ResolveBatchRequest { requests: too_many })
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit of 100"), "{}", err.message());
    agent.stop().await;
}

/// With ring polls 1 s apart, a process's events wait in the ring buffer:
/// Resolve and ResolveBatch apply them first, so a process is resolvable,
/// with its exec'd comm, as soon as it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_see_processes_whose_events_are_still_in_the_ring() {
    let agent = TestAgent::start(Config {
        ring_poll_ms: 1000,
        ring_wakeup_events: 4096,
        ..Config::default()
    })
    .await;
    let mut c = client(&agent).await;
    for round in 0..10 {
        let (child, start_time) = spawn_shell();
        let r = c
            .resolve(proto::ResolveRequest {
                pid: child.pid().into(),
                start_time: Some(start_time),
            })
            .await
            .expect("resolve")
            .into_inner();
        assert_eq!(
            r.state,
            proto::ProcessState::Running as i32,
            "round {round}: {r:?}"
        );
        assert_eq!(r.start_time, Some(start_time), "round {round}: {r:?}");
        assert_eq!(r.comm.as_deref(), Some("sh"), "round {round}: {r:?}");

        // A batch with one such process among known ones.
        let (other, _) = spawn_shell();
        let batch = c
            .resolve_batch(proto::ResolveBatchRequest {
                requests: vec![req(std::process::id().into()), req(other.pid().into())],
            })
            .await
            .expect("batch")
            .into_inner();
        assert_eq!(batch.records[1].pid, other.pid());
        assert_eq!(batch.records[1].comm.as_deref(), Some("sh"), "{batch:?}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_whoami_lists_and_not_found() {
    let agent = TestAgent::start(Config::default()).await;
    let mut c = client(&agent).await;
    let s = c
        .status(proto::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(s.ready);
    assert!(s.processes > 0, "{s:?}");
    let _ = Command::new("/bin/true").status();
    let mut received = 0;
    for _ in 0..100 {
        received = c
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .events_received;
        if received > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(received > 0, "events counted");
    assert!(
        !s.containerd_connected,
        "no containerd at the default socket here"
    );

    let me = c
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    assert_eq!(
        me.pid,
        std::process::id(),
        "the test process itself is the peer"
    );

    let list = c
        .list_containers(proto::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(list.containers.is_empty());
    let err = c
        .list_processes(proto::ListProcessesRequest {
            container_id: "nope".into(),
            runtime_namespace: None,
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .list_processes(proto::ListProcessesRequest::default())
        .await
        .expect_err("no id");
    assert_eq!(err.code(), Code::InvalidArgument);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_all_get_answers() {
    let agent = TestAgent::start(Config::default()).await;
    let me = i64::from(std::process::id());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = client(&agent).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let r = c.resolve(req(me)).await.expect("resolve").into_inner();
                assert_eq!(r.state, proto::ProcessState::Running as i32);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let agent = TestAgent::start(Config::default()).await;
    let channel = match pidmap::cli::client::channel(agent.socket()).await {
        Ok(c) => c,
        Err(f) => panic!("connect: {}", f.message),
    };
    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pidmap.v1.Pidmap".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "pidmap.v1.Pidmap"), "{names:?}");
    agent.stop().await;
}
