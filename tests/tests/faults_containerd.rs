//! Fault injection with containerd (issue 13): the agent SIGKILLed and
//! restarted while containers run and change, and containerd SIGKILLed again
//! and again while containers churn. Both compare pidmap's answers with the
//! ground truth (`pidmap_tests::checker`: /proc and the containers made in
//! containerd) and fail on any wrong answer; the figures are printed (run
//! with `--nocapture`) and quoted in RELIABILITY.md. The containerd matrix
//! runs this file against every containerd version. Run as root with
//! `--test-threads=1`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use pidmap::api::proto;
use pidmap_tests::{
    AgentProcess, TestAgent,
    checker::{self, Checker, ContainerdKills, Run, client},
    containerd::Containerd,
    env_seconds, private_socket, proc_start_time,
};

fn seed() -> u64 {
    0x5851_f42d_4c95_7f2d ^ u64::from(std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_and_restarted_replaces_its_stale_socket_and_knows_containers_at_ready() {
    let ctrd = Containerd::start();
    let run = Run::new(seed());
    let mut next = 0;
    let mut containers: Vec<_> = (0..3)
        .map(|_| checker::start_container(&ctrd, &run, &mut next))
        .collect();
    let socket = private_socket();
    let ctrd_socket = ctrd.socket().to_string_lossy().into_owned();
    let args = [
        "--containerd-socket",
        ctrd_socket.as_str(),
        "--containerd-max-backoff-ms",
        "200",
    ];
    let mut agent = AgentProcess::start(&socket, &args);
    let mut ready_times = vec![agent.ready_after()];
    let mut execs = Vec::new();
    let mut checked_at_ready = 0;
    for round in 0..3 {
        agent.kill();
        assert!(
            socket.exists(),
            "round {round}: the killed agent's socket is gone"
        );
        // While it is down: a container starts, another gets an exec.
        containers.push(checker::start_container(&ctrd, &run, &mut next));
        let c0 = &containers[round % containers.len()];
        let exec_pid = c0.exec(
            &format!("down{round}"),
            ["/bin/sh", "-c", "while true; do /bin/sleep 1; done"],
        );
        execs.push((exec_pid, c0.id().to_owned()));
        agent = AgentProcess::start(&socket, &args);
        ready_times.push(agent.ready_after());
        // At ready, with no waiting: every container process is known.
        let mut c = client(&socket).await;
        let mut want: Vec<(u32, String)> = containers
            .iter()
            .map(|x| (x.init_pid(), x.id().to_owned()))
            .collect();
        want.extend(execs.iter().cloned());
        let answers = c
            .resolve_batch(proto::ResolveBatchRequest {
                requests: want
                    .iter()
                    .map(|(pid, _)| proto::ResolveRequest {
                        pid: (*pid).into(),
                        start_time: proc_start_time(*pid),
                    })
                    .collect(),
            })
            .await
            .expect("batch at ready")
            .into_inner()
            .records;
        for ((pid, id), r) in want.iter().zip(&answers) {
            checked_at_ready += 1;
            let right = r.state == proto::ProcessState::Running as i32
                && r.source == proto::Source::Containerd as i32
                && r.container.as_ref().is_some_and(|x| &x.id == id);
            if !right {
                run.wrong(format!(
                    "round {round}: at ready, pid {pid} of {id} answered {r:?}"
                ));
            }
        }
        if let Err(status) = Checker::new(Arc::clone(&run)).record_round(&mut c).await {
            run.wrong(format!(
                "round {round}: the checker's round failed: {status}"
            ));
        }
    }
    let ready: Vec<String> = ready_times
        .iter()
        .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
        .collect();
    run.report(&format!(
        "SIGKILL and restart, 3 times, {} containers at the end: ready after {} (first start, \
         then each restart over the stale socket); {checked_at_ready} container processes \
         checked at the moment of ready",
        containers.len(),
        ready.join(", ")
    ));
    run.assert_no_wrong_answers();
    drop(agent);
    drop(containers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_every_five_seconds_while_containers_churn() {
    // How long the containers churn.
    let total = env_seconds("PIDMAP_FAULTS_CHURN_SECS", 20);
    let ctrd = Arc::new(Containerd::start());
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    let socket = agent.socket().to_path_buf();
    let run = Run::new(seed());
    let started = Instant::now();
    let churn = {
        let (ctrd, run) = (Arc::clone(&ctrd), Arc::clone(&run));
        tokio::task::spawn_blocking(move || {
            checker::container_churn(
                &ctrd,
                &run,
                total,
                ContainerdKills::Every(Duration::from_secs(5)),
            )
        })
    };
    let checking = tokio::spawn(checker::check_rounds(socket.clone(), Arc::clone(&run)));
    let polling = tokio::spawn(checker::poll_expectations(socket, Arc::clone(&run)));
    let containers = churn.await.expect("churn");
    // The last changes get their answers checked too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.stop();
    checking.await.expect("checker");
    polling.await.expect("poller");
    let reconnects = agent.state().metrics().snapshot().containerd_reconnects;
    run.report(&format!(
        "containerd SIGKILL loop: {:.0} s of container churn, containerd killed every 5 s; \
         the agent reconnected {reconnects} times",
        started.elapsed().as_secs_f64()
    ));
    assert!(
        run.counted("containerd kills") >= 2,
        "too short to kill twice"
    );
    run.assert_no_wrong_answers();
    drop(containers);
    agent.stop().await;
}
