//! Three `corral serve sftp` instances over one bucket (moto, which
//! enforces conditional writes) behind HAProxy (TCP, `send-proxy-v2`, the
//! same host key on every instance): a client uploads 256 MiB through the
//! balancer; the instance carrying it is killed with SIGKILL; the client
//! reconnects through the balancer to another instance and `reput`
//! completes the file, sending again at most one part. Twice, at two kill
//! points; then the file is identical, nothing is pending, no lease is
//! left, and the client's own address is in the transfer logs.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral::cache::CacheConfig;
use corral::{Corral, Identity};
use corral_domain::ObjectKey;
use corral_fixtures::servers::{S3Server, free_port};
use futures::TryStreamExt;

use super::load::{kill_group, pending, wait_for};
use super::resume::{stored_parts, uploaded};
use super::{Server, openssh, pattern};

const MIB: usize = 1 << 20;

fn mappings(s: &S3Server, path: &str) -> String {
    format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"fleet","path":"{path}","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}"}}}}}}"#,
        s.endpoint, s.access_key, s.secret_key
    )
}

/// An sftp batch through the balancer from 127.0.0.9, `kbits` limited.
fn through(port: u16, server: &Server, batch: &str, cwd: &std::path::Path, kbits: u32) -> Command {
    let file = cwd.join(format!("batch-{}", batch.len()));
    std::fs::write(&file, batch).expect("batch");
    let mut c = openssh("sftp", server, "alice");
    if kbits > 0 {
        c.args(["-l", &kbits.to_string()]);
    }
    c.args(["-o", "BindAddress=127.0.0.9", "-P", &port.to_string(), "-b"])
        .arg(&file)
        .arg("alice@127.0.0.1")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[test]
fn a_killed_instance_behind_haproxy_loses_no_upload() {
    let moto = S3Server::moto();
    moto.create_bucket("fleet");
    let users = mappings(&moto, "users/%u");
    let raw = crate::common::raw_backend(&mappings(&moto, ""), "x");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // 8 MiB parts; the balancer's connections carry the client's address.
    let flags = [
        "--max-cloud-cache-upload-size",
        "16MiB",
        "--proxy-protocol-from",
        "127.0.0.1",
    ];
    let mut servers = vec![Server::start(&users, &["alice"], &flags)];
    // One host key for the fleet: the first instance's, copied.
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(servers[0].dir()).expect("dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("host_") || name.ends_with(".json") {
                std::fs::copy(entry.path(), dir.path().join(&name)).expect("copy");
            }
        }
        servers.push(Server::start_in(dir, &flags));
    }
    let port = free_port();
    let hadir = tempfile::tempdir().expect("tempdir");
    let config = hadir.path().join("haproxy.cfg");
    let backends: String = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "  server s{i} 127.0.0.1:{} send-proxy-v2 check inter 200 fall 1 rise 1 check-send-proxy\n",
                s.port
            )
        })
        .collect();
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  retries 3\n  option redispatch\nfrontend sftp\n  bind 127.0.0.1:{port}\n  default_backend corral\nbackend corral\n  balance roundrobin\n{backends}"
        ),
    )
    .expect("config");
    let _haproxy = super::HaProxy::start(&config, port);
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 256 * MIB;
    let part = 8 * MIB;
    let data = pattern(size, 77);
    std::fs::write(dir.path().join("big.bin"), &data).expect("local");
    let started = Instant::now();
    let mut alive: Vec<bool> = vec![true; 3];
    let mut report = Vec::new();
    // Two kill points: after 4 and after 14 stored parts (of 32).
    for (round, kill_at) in [(0, 4usize), (1, 14)] {
        let name = format!("/big-{round}.bin");
        let mut client = through(
            port,
            &servers[0],
            &format!("put big.bin {name}\n"),
            dir.path(),
            400_000,
        )
        .process_group(0)
        .spawn()
        .expect("sftp");
        wait_for("parts stored", Duration::from_secs(120), || {
            rt.block_on(stored_parts(&raw)) >= kill_at
        });
        // The instance carrying it: the one with the session.
        let carrier = (0..3)
            .find(|&i| alive[i] && servers[i].metrics().get("corral_sessions") == Some(&1.0))
            .expect("an instance carries the upload");
        servers[carrier].kill();
        alive[carrier] = false;
        let _ = kill_group(-(client.id() as i32));
        let _ = client.wait();
        let kept = rt.block_on(stored_parts(&raw)) * part;
        // HAProxy sees it down (checks every 200 ms).
        std::thread::sleep(Duration::from_millis(800));
        let before: f64 = (0..3)
            .filter(|&i| alive[i])
            .map(|i| uploaded(&servers[i]))
            .sum();
        let out = through(
            port,
            &servers[0],
            &format!("reput big.bin {name}\n"),
            dir.path(),
            0,
        )
        .output()
        .expect("reput");
        assert!(
            out.status.success(),
            "round {round}: reput failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after: f64 = (0..3)
            .filter(|&i| alive[i])
            .map(|i| uploaded(&servers[i]))
            .sum();
        let sent = (after - before) as usize;
        assert!(
            sent >= size - kept && sent <= size - kept + part,
            "round {round}: {sent} bytes sent for {} missing ({kept} kept)",
            size - kept
        );
        report.push(format!(
            "killed instance {carrier} at {} MiB stored; another sent {} MiB",
            kept / MIB,
            sent / MIB
        ));
    }
    let corral = Corral::from_json(&users, CacheConfig::default()).expect("corral");
    let sb = corral.sandbox(&Identity::user("alice")).expect("sandbox");
    for round in 0..2 {
        let got = rt
            .block_on(sb.read(format!("/big-{round}.bin").as_str()))
            .expect("read");
        assert!(got == data, "round {round}: the file differs");
    }
    assert_eq!(rt.block_on(pending(&raw)), 0, "an upload is left pending");
    let leases: Vec<_> = rt.block_on(async {
        raw.list(
            &ObjectKey::from_raw("users/alice/.corral/leases/"),
            Default::default(),
        )
        .try_collect::<Vec<_>>()
        .await
        .expect("list")
    });
    assert!(leases.is_empty(), "leases left: {leases:?}");
    let logs: String = servers.iter().map(Server::log).collect();
    assert!(
        logs.contains("peer=\"127.0.0.9:"),
        "the client's address is not in the transfer logs"
    );
    println!("fleet: {} in {:.1?}", report.join("; "), started.elapsed());
}
