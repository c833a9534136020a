//! skiffd end to end: the task service inside the nested test host, driven through its HTTP API
//! by the `skiff` CLI, running real microVMs (jailed) — output and exit codes, logs and events,
//! StopTask (SIGTERM, then SIGKILL after the stop timeout), tenants apart, SIGKILL of skiffd
//! while tasks run and in the middle of a RunTask burst (nothing acknowledged lost, tasks
//! re-adopted, logs complete), SIGKILL of a task's VMM, an unreachable registry, and 30
//! concurrent RunTask against capacity for 10.

use serde_json::Value;
use skiff_tests::artefacts::{require, workspace_root, Artefact, Need};
use skiff_tests::containers::{import_test_images, CONTAINER_ARTEFACTS};
use skiff_tests::nested::case;
use skiff_tests::skiffd::{prelude, skiffd_host};

/// The first JSON value in `text` (a case's output may have lines before it).
fn json_in(text: &str) -> Value {
    let start = text
        .find(['{', '['])
        .unwrap_or_else(|| panic!("no JSON in:\n{text}"));
    let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
    stream
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("bad JSON in:\n{text}"))
}

/// A long task's output: `line-0` … `line-{n-1}`, one every 0.3 s.
fn counting(n: u32) -> String {
    format!("sh -c 'i=0; while [ $i -lt {n} ]; do echo line-$i; i=$((i+1)); sleep 0.3; done'")
}

#[test]
fn skiffd_runs_tasks_in_jailed_microvms_and_survives_its_own_death() {
    let mut needs: Vec<Need> = CONTAINER_ARTEFACTS
        .iter()
        .map(|a| Need::Artefact(*a))
        .collect();
    needs.push(Need::Artefact(Artefact::SkiffJailer));
    needs.push(Need::Artefact(Artefact::SkiffMonitor));
    needs.push(Need::Artefact(Artefact::TestImage("busybox")));
    needs.push(Need::Program("qemu-system-x86_64"));
    needs.push(Need::Program("mkfs.ext4"));
    if !require("nested_skiffd", &needs) {
        return;
    }
    let store = workspace_root().join(format!("target/nested/skiffd-{}", std::process::id()));
    import_test_images(&store, &["busybox"]).unwrap();
    let mut host = skiffd_host(&store, true, false).unwrap();
    host.memory_mib(3072)
        .timeout(std::time::Duration::from_secs(1800));
    let bb = "busybox:latest";
    let mut script = prelude();
    script.push_str("start_skiffd\n");
    let cases: Vec<(&str, String)> = vec![
        ("hello", format!("skiff run {bb} -- echo hello")),
        ("exit3", format!("skiff run --name three {bb} -- sh -c 'echo out; echo err >&2; exit 3'")),
        ("ps", "skiff --json ps -a".into()),
        (
            "restart",
            // A task runs while skiffd is killed and restarted: still RUNNING, then complete.
            format!(
                "ID=$(skiff run -d --name long {bb} -- {})\n\
                 skiff wait --timeout 300 --status RUNNING $ID > /dev/null; wait_log $ID line-2\n\
                 echo monitor-rss $(grep VmRSS /proc/$(pid_of \"skiff-monitor --task-dir /data/tasks/$ID\" | head -n 1)/status)\n\
                 kill_skiffd; start_skiffd\n\
                 skiff --json describe $ID | grep -o '\"lastStatus\": *\"[A-Z]*\"' | head -n 1\n\
                 skiff wait $ID; echo lines $(skiff logs $ID | grep -c '^line-')\n\
                 skiff --json describe $ID",
                counting(30)
            ),
        ),
        (
            "burst",
            // SIGKILL in the middle of a RunTask burst: every acknowledged task runs to its end.
            format!(
                "rm -f /tmp/ids; touch /tmp/ids\n\
                 for i in 1 2 3 4 5 6; do (skiff run -d --name burst {bb} -- echo burst >> /tmp/ids 2>/dev/null) & sleep 0.05; done\n\
                 i=0; until [ -s /tmp/ids ] || [ $i -ge 200 ]; do sleep 0.02; i=$((i+1)); done\n\
                 kill_skiffd; sleep 1; start_skiffd\n\
                 echo acknowledged $(wc -l < /tmp/ids)\n\
                 for id in $(cat /tmp/ids); do echo \"$id $(skiff wait $id) $(skiff logs $id)\"; done"
            ),
        ),
        (
            "stop-graceful",
            format!(
                "ID=$(skiff run -d --name graceful {bb} -- sh -c 'trap \"echo got-term; exit 0\" TERM; echo ready; sleep 1000 & wait')\n\
                 wait_log $ID ready; skiff stop --reason enough $ID > /dev/null; skiff wait $ID; skiff logs $ID\n\
                 skiff --json describe $ID"
            ),
        ),
        (
            "stop-timeout",
            format!(
                "ID=$(skiff run -d --name stubborn --stop-timeout 2 {bb} -- sh -c 'trap \"\" TERM; echo ready; while :; do sleep 1; done')\n\
                 wait_log $ID ready; skiff stop $ID > /dev/null; skiff wait $ID"
            ),
        ),
        (
            "tenants",
            format!(
                "ID=$(skiff run -d --name private --stop-timeout 2 {bb} -- sleep 1000); skiff wait --timeout 300 --status RUNNING $ID > /dev/null\n\
                 as_b describe $ID; echo status=$?; as_b logs $ID; echo status=$?; as_b stop $ID; echo status=$?\n\
                 as_b --json ps -a; SKIFF_TOKEN=wrong /skiff/skiff ps; echo status=$?\n\
                 skiff --json describe $ID | grep -o '\"desiredStatus\": *\"[A-Z]*\"' | head -n 1\n\
                 skiff stop $ID > /dev/null; skiff wait $ID"
            ),
        ),
        (
            "vmm-killed",
            format!(
                "ID=$(skiff run -d --name victim {bb} -- sleep 1000); skiff wait --timeout 300 --status RUNNING $ID > /dev/null\n\
                 kill -9 $(pid_of \"config /vm.json\"); skiff wait --timeout 300 $ID; skiff --json describe $ID"
            ),
        ),
        ("bad-registry", "skiff run 127.0.0.1:5999/nothing:1 -- true".into()),
        (
            "bad-input",
            "echo '{\"family\": \"x\", \"containerDefinitions\": [], \"colour\": 1}' > /tmp/bad.json\n\
             skiff taskdef register /tmp/bad.json; echo status=$?\n\
             skiff taskdef ls"
                .into(),
        ),
        (
            "capacity",
            // 30 RunTask at once against room for 10: exactly 10 admitted.
            format!(
                "rm -f /tmp/ok /tmp/refused; skiff wait $(skiff run -d --name cap {bb} -- true) > /dev/null\n\
                 for i in $(seq 1 30); do (skiff run -d --name cap --stop-timeout 2 {bb} -- sleep 60 >> /tmp/ok 2>> /tmp/refused) & done; wait\n\
                 echo admitted $(wc -l < /tmp/ok) refused $(grep -c RESOURCE:CPU /tmp/refused)\n\
                 grep -v RESOURCE:CPU /tmp/refused\n\
                 for id in $(cat /tmp/ok); do skiff stop $id > /dev/null; done\n\
                 for id in $(cat /tmp/ok); do skiff wait $id > /dev/null; done\n\
                 skiff --json capacity"
            ),
        ),
    ];
    for (name, command) in &cases {
        script.push_str(&case(name, &format!("({command})")));
    }
    script.push_str(
        "kill_skiffd TERM; echo '=== skiffd log'; cat /tmp/skiffd.log
",
    );
    let run = host.run(&script).unwrap();
    let _ = std::fs::remove_dir_all(&store);
    let console = &run.console;
    let case = |name: &str| {
        run.case(name)
            .unwrap_or_else(|| panic!("case {name} missing:\n{console}"))
    };

    assert_eq!(case("hello"), ("hello\n".into(), 0), "{console}");
    let (out, status) = case("exit3");
    assert_eq!(status, 3, "{out}");
    assert!(out.contains("out\n") && out.contains("err\n"), "{out}");

    let (out, _) = case("ps");
    let tasks = json_in(&out);
    let three = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["family"] == "three")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(three["lastStatus"], "STOPPED", "{three}");
    assert_eq!(three["stopCode"], "EssentialContainerExited", "{three}");
    assert_eq!(three["containers"][0]["exitCode"], 3, "{three}");
    for field in [
        "createdAt",
        "pullStartedAt",
        "pullStoppedAt",
        "startedAt",
        "stoppingAt",
        "stoppedAt",
    ] {
        assert!(three[field].is_string(), "{field} missing: {three}");
    }

    let (out, status) = case("restart");
    assert_eq!(status, 0, "{out}\n{console}");
    assert!(
        out.contains("\"lastStatus\": \"RUNNING\""),
        "still running after skiffd's restart:\n{out}"
    );
    assert!(out.contains("lines 30"), "the log is complete:\n{out}");
    let task = json_in(&out[out.find("lines 30").unwrap()..]);
    assert_eq!(task["stopCode"], "EssentialContainerExited", "{task}");
    assert_eq!(task["containers"][0]["exitCode"], 0, "{task}");
    let rss: u64 = out
        .split("monitor-rss VmRSS:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no monitor RSS in {out}"));
    eprintln!("nested_skiffd: monitor RSS {rss} KiB");
    assert!(rss > 0, "{out}");

    let (out, status) = case("burst");
    assert_eq!(status, 0, "{out}\n{console}");
    let acknowledged: usize = out
        .split("acknowledged ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let finished = out.lines().filter(|l| l.ends_with(" 0 burst")).count();
    assert_eq!(
        finished, acknowledged,
        "every acknowledged RunTask ran to its end:\n{out}"
    );

    let (out, status) = case("stop-graceful");
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("got-term"), "{out}");
    let task = json_in(&out);
    assert_eq!(task["stopCode"], "UserInitiated", "{task}");
    assert_eq!(task["stoppedReason"], "enough", "{task}");
    assert_eq!(
        case("stop-timeout").1,
        137,
        "SIGKILL after the stop timeout\n{console}"
    );

    // `sleep` is PID 1 of the container's PID namespace: SIGTERM without a handler is ignored
    // (as under Docker), the stop timeout ends it.
    let (out, status) = case("tenants");
    assert_eq!(status, 137, "{out}");
    assert_eq!(
        out.matches("NotFound").count(),
        3,
        "tenant b sees nothing of a's task:\n{out}"
    );
    assert_eq!(out.matches("status=125").count(), 4, "{out}");
    assert!(out.contains("Unauthorized"), "{out}");
    assert!(
        out.contains("\"desiredStatus\": \"RUNNING\""),
        "b's stop changed nothing:\n{out}"
    );

    let (out, _) = case("vmm-killed");
    let task = json_in(&out[out.find('{').unwrap()..]);
    assert_eq!(task["lastStatus"], "STOPPED", "{task}");
    let reason = task["containers"][0]["reason"]
        .as_str()
        .or(task["stoppedReason"].as_str())
        .unwrap_or("");
    assert!(!reason.is_empty(), "a killed VMM leaves a reason: {task}");

    let (out, status) = case("bad-registry");
    assert_eq!(status, 125, "{out}");
    assert!(out.contains("CannotPullContainerError"), "{out}");

    let (out, _) = case("bad-input");
    assert!(
        out.contains("status=125") && out.contains("unknown field `colour`"),
        "{out}"
    );

    let (out, status) = case("capacity");
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("admitted 10 refused 20"), "{out}\n{console}");
    let cap = json_in(&out);
    assert_eq!(cap["used"]["cpu"], 0, "capacity released: {cap}");
    assert_eq!(cap["tasks"], 0, "{cap}");
}
