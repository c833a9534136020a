//! Container tasks end to end: `skiff-run` inside the nested test host runs the test images
//! (built by `scripts/build-test-images.sh` from Debian's busybox-static) in real microVMs on
//! `skiff-vmm`: output and exit codes, a SIGKILLed process, env/workdir/user, the layer
//! semantics (whiteouts, opaque directories, hard links, owners), 50 MiB on stdout and stderr in
//! order, stop requests (a process that exits on SIGTERM, one that ignores it and is killed after
//! the stop timeout), a missing program, a layer with `../` entries failing the task cleanly, an
//! HTTP server in a container reached over the task's tap, and a task whose VMM runs in a jail
//! (`skiff-run --jailer`), which leaves neither jail nor task directory behind.

use skiff_tests::artefacts::{require, workspace_root, Artefact, Need};
use skiff_tests::containers::{
    container_host, import_test_images, CONTAINER_ARTEFACTS, RUN_FUNCTION,
};
use skiff_tests::nested::case;

/// Lines of `seq` per stream: about 25 MiB each, 50 MiB in all.
const SEQ_LINES: u32 = 3_200_000;

/// Starts `skiff-run ARGS` in the background writing to FILE, waits until it printed `ready`, sends
/// it SIGTERM and waits for it.
fn stop_case(file: &str, args: &str) -> String {
    format!(
        "$SKIFF_RUN {args} > {file} 2>&1 &\n\
         p=$!\n\
         i=0; while ! grep -q ready {file} && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
         kill -TERM $p; wait $p; s=$?; cat {file}; exit $s"
    )
}

#[test]
fn containers_run_from_images_in_their_own_microvms() {
    let mut needs: Vec<Need> = CONTAINER_ARTEFACTS
        .iter()
        .map(|a| Need::Artefact(*a))
        .collect();
    needs.push(Need::Artefact(Artefact::Probe));
    needs.push(Need::Artefact(Artefact::SkiffJailer));
    for image in ["busybox", "layers", "evil", "httpd", "caps"] {
        needs.push(Need::Artefact(Artefact::TestImage(image)));
    }
    needs.push(Need::Program("qemu-system-x86_64"));
    needs.push(Need::Program("mkfs.ext4"));
    if !require("nested_containers", &needs) {
        return;
    }
    let store = workspace_root().join(format!("target/nested/containers-{}", std::process::id()));
    import_test_images(&store, &["busybox", "layers", "evil", "httpd", "caps"]).unwrap();
    let mut host = container_host(&store).unwrap();
    host.file("bin/skiff-probe", &Artefact::Probe.path())
        .unwrap();
    host.binary("skiff/skiff-jailer", &Artefact::SkiffJailer.path())
        .unwrap();

    let bb = "--image busybox:latest";
    let mut script = String::from(RUN_FUNCTION);
    for (name, command) in [
        ("hello", format!("run {bb} -- echo hello")),
        ("exit3", format!("run {bb} -- sh -c 'exit 3'")),
        (
            "pid-1",
            // The container is PID 1 of its own PID namespace: guest-init is out of sight and
            // out of reach (`kill -1` finds no one else), and a signal it has no handler for
            // does not end it.
            format!(
                "run {bb} -- sh -c 'echo pid=$$; kill -9 $$; kill -9 -1; \
                 cat /proc/[0-9]*/comm 2>/dev/null | grep -cx -e init -e kthreadd; \
                 echo survived'"
            ),
        ),
        (
            "privileges",
            format!(
                "run {bb} -- sh -c 'grep -E \"^(CapBnd|CapEff|NoNewPrivs)\" /proc/self/status; \
                 ulimit -n; mknod /tmp/null c 1 3 && echo mknod-ok; \
                 ip addr add 127.0.0.9/32 dev lo 2>/dev/null || echo no-net-admin'\n\
                 run {bb} --cap-add NET_ADMIN --cap-drop MKNOD --ulimit nofile=1024:2048 \
                 --security-opt no-new-privileges=false -- \
                 sh -c 'grep -E \"^(CapBnd|NoNewPrivs)\" /proc/self/status; ulimit -n; ulimit -Hn; \
                 mknod /tmp/null c 1 3 2>/dev/null || echo no-mknod; \
                 ip addr add 127.0.0.9/32 dev lo; echo ip=$?'\n\
                 run {bb} -u 1000 -- grep -E \"^(CapEff|CapBnd)\" /proc/self/status\n\
                 run {bb} --cap-add NO_SUCH_CAP -- true; echo status=$?"
            ),
        ),
        ("missing", format!("run {bb} -- no-such-program")),
        (
            "user",
            format!(
                "run {bb} --hostname task-7 -u 1000:1000 -w /work -e FOO=bar -- \
                 sh -c 'id -u; id -g; pwd; echo $FOO; hostname; cat /etc/hostname; \
                 grep task-7 /etc/hosts; touch /tmp/x && echo tmp-ok'"
            ),
        ),
        ("named-user", format!("run {bb} -u app -- sh -c 'id -un; echo $HOME'")),
        (
            "layers",
            "run --image layers:latest -- sh -c 'pwd; echo $FOO; ls -A | busybox sort | \
             busybox tr \"\\n\" \" \"; echo; cat keep; echo; ls -A dir; \
             [ $(busybox stat -c %i hl-src) = $(busybox stat -c %i hl-dst) ] && echo same-inode; \
             busybox readlink sym; busybox stat -c \"%u:%g %a\" owned; \
             busybox stat -c \"%A %Y\" sym; \
             busybox awk \"\\$2 == \\\"/\\\" { print \\$4 }\" /proc/mounts | busybox grep -o nodev | busybox head -n 1; \
             echo tmp-mounts $(busybox awk \"\\$2 == \\\"/tmp\\\"\" /proc/mounts | busybox wc -l)'"
                .into(),
        ),
        (
            "streams",
            format!(
                "run {bb} -- sh -c 'busybox seq 1 {SEQ_LINES} >&2 & busybox seq 1 {SEQ_LINES}; wait' \
                 > /tmp/out 2> /tmp/err; s=$?\n\
                 busybox seq 1 {SEQ_LINES} > /tmp/expected\n\
                 cmp /tmp/out /tmp/expected && echo stdout-in-order\n\
                 cmp /tmp/err /tmp/expected && echo stderr-in-order\n\
                 wc -c /tmp/out /tmp/err; rm -f /tmp/out /tmp/err /tmp/expected; (exit $s)"
            ),
        ),
        (
            "stop-graceful",
            stop_case(
                "/tmp/stop1",
                &format!(
                    "{bb} -- sh -c 'trap \"echo got-term; exit 0\" TERM; echo ready; sleep 1000 & wait'"
                ),
            ),
        ),
        (
            "stop-timeout",
            stop_case(
                "/tmp/stop2",
                &format!(
                    "{bb} --stop-timeout 2 -- sh -c 'trap \"\" TERM; echo ready; while :; do sleep 1; done'"
                ),
            ),
        ),
        (
            "init",
            // Under an init process (--init) the program is PID 2: SIGTERM reaches it, orphans
            // are reaped, and the task ends as the program did.
            stop_case(
                "/tmp/stop3",
                &format!(
                    "{bb} --init -- sh -c 'echo pid=$$ $(cat /proc/1/comm); (sleep 0.2 &); sleep 1; \
                     echo zombies $(cat /proc/[0-9]*/stat 2>/dev/null | grep -c \" Z \"); \
                     echo ready; sleep 1000'"
                ),
            ),
        ),
        ("init-missing", format!("run {bb} --init -- no-such-program")),
        (
            "file-caps",
            // A file capability from the layer's xattrs (cap_net_raw+ep on a busybox copy),
            // granted to user 1000 only when no_new_privs is off.
            "run --image caps:latest -u 1000 --security-opt no-new-privileges=false -- \
             /capbin/grep CapEff /proc/self/status\n\
             run --image caps:latest -u 1000 -- /capbin/grep CapEff /proc/self/status"
                .into(),
        ),
        ("evil", "run --image evil:latest -- true".into()),
        (
            "jailed",
            format!(
                "mkdir -p /srv/jailer\n\
                 run --jailer /skiff/skiff-jailer --uid 10001 --gid 10001 {bb} -- \
                 sh -c 'echo jailed-hello; exit 4'; s=$?\n\
                 echo \"jails-left $(ls /srv/jailer/skiff-vmm | wc -l)\"\n\
                 echo \"task-dirs-left $(ls /var/lib/skiff/tasks | wc -l)\"\n\
                 (exit $s)"
            ),
        ),
        (
            "httpd",
            "ip link set lo up; skiff-probe tap-add tap0 && ip addr add 172.16.0.1/30 dev tap0 \
             && ip link set tap0 up\n\
             $SKIFF_RUN --image httpd:latest --init --hostname web --tap tap0 --ip 172.16.0.2/30 \
             --gateway 172.16.0.1 > /tmp/httpd.log 2>&1 &\n\
             p=$!; i=0\n\
             until wget -q -O /tmp/page http://172.16.0.2:8080/ 2>/dev/null || [ $i -ge 600 ]; do \
             sleep 0.2; i=$((i+1)); done\n\
             cat /tmp/page; kill -TERM $p; wait $p; s=$?; cat /tmp/httpd.log; exit $s"
                .into(),
        ),
    ] {
        script.push_str(&case(name, &format!("({command})")));
    }
    let run = host.run(&script).unwrap();
    let _ = std::fs::remove_dir_all(&store);
    let console = &run.console;
    let case = |name: &str| {
        run.case(name)
            .unwrap_or_else(|| panic!("case {name} missing:\n{console}"))
    };

    assert_eq!(case("hello"), ("hello\n".into(), 0));
    assert_eq!(case("exit3").1, 3, "{console}");
    let (out, status) = case("pid-1");
    assert_eq!(
        (out.as_str(), status),
        (
            "pid=1\nsh: can't kill pid -1: No such process\n0\nsurvived\n",
            0
        ),
        "{console}"
    );

    // Docker's default capabilities, no new privileges and 65535 open files; --cap-add,
    // --cap-drop, --ulimit and --security-opt change them; a user other than root has none.
    let (out, status) = case("privileges");
    assert_eq!(status, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..12],
        [
            "CapEff:\t00000000a80425fb",
            "CapBnd:\t00000000a80425fb",
            "NoNewPrivs:\t1",
            "65535",
            "mknod-ok",
            "no-net-admin",
            // +NET_ADMIN -MKNOD
            "CapBnd:\t00000000a00435fb",
            "NoNewPrivs:\t0",
            "1024",
            "2048",
            "no-mknod",
            "ip=0",
        ],
        "{out}"
    );
    assert_eq!(
        lines[12..14],
        ["CapEff:\t0000000000000000", "CapBnd:\t00000000a80425fb"],
        "{out}"
    );
    assert!(
        out.contains("NO_SUCH_CAP") && out.ends_with("status=125\n"),
        "{out}"
    );
    let (out, status) = case("missing");
    assert_eq!(status, 127, "{out}");
    assert!(out.contains("\"no-such-program\""), "{out}");

    let (out, status) = case("user");
    assert_eq!(status, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "1000",
            "1000",
            "/work",
            "bar",
            "task-7",
            "task-7",
            "127.0.1.1\ttask-7",
            "tmp-ok"
        ],
        "{out}"
    );
    assert_eq!(
        case("named-user"),
        ("app\n/home/app\n".into(), 0),
        "{console}"
    );

    let (out, status) = case("layers");
    assert_eq!(status, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "/data",
            "from-image",
            "dir hl-dst hl-src keep orig owned sym ",
            "v3",
            "c",
            "same-inode",
            "keep",
            "1000:1000 640",
            // Symlinks as Docker gives them (no umask, the layer's mtime); the root nodev;
            // /tmp the image's own directory, no tmpfs over it.
            "lrwxrwxrwx 1700000000",
            "nodev",
            "tmp-mounts 0",
        ],
        "{out}"
    );

    let (out, status) = case("streams");
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("stdout-in-order"), "{out}");
    assert!(out.contains("stderr-in-order"), "{out}");

    let (out, status) = case("stop-graceful");
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("got-term"), "{out}");
    let (out, status) = case("stop-timeout");
    assert_eq!(status, 128 + 9, "{out}");
    assert!(out.contains("killed with SIGKILL"), "{out}");

    // busybox httpd in the container served the page over the task's tap; under --init,
    // SIGTERM ended it (as PID 1 it would have ignored it, as under Docker).
    let (out, status) = case("httpd");
    assert!(out.starts_with("hello from skiff httpd\n"), "{out}");
    assert_eq!(status, 128 + 15, "{out}");

    let (out, status) = case("init");
    assert_eq!(status, 128 + 15, "{out}");
    assert!(
        out.starts_with("pid=2 skiff-init\nzombies 0\nready\n"),
        "{out}"
    );
    let (out, status) = case("file-caps");
    assert_eq!(status, 0, "{out}");
    assert_eq!(
        out, "CapEff:\t0000000000002000\nCapEff:\t0000000000000000\n",
        "{console}"
    );

    let (out, status) = case("init-missing");
    assert_eq!(status, 127, "{out}");
    assert!(out.contains("\"no-such-program\""), "{out}");

    // The same task with its VMM in a jail (relocated disks, vsock socket and console log; the
    // control channel reached from inside the jail), all of it removed afterwards.
    let (out, status) = case("jailed");
    assert_eq!(status, 4, "{out}");
    assert_eq!(
        out, "jailed-hello\njails-left 0\ntask-dirs-left 0\n",
        "{console}"
    );

    let (out, status) = case("evil");
    assert_eq!(status, 125, "{out}");
    assert!(out.contains("leaves the root"), "{out}");
    assert!(out.contains("../escaped"), "{out}");
}
