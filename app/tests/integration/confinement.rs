//! File sandboxes against someone who can write into their directory.
//!
//! Each attack plants something inside alice's sandbox (links to outside
//! files and directories in every position, links to `.` and `..`, chains,
//! dangling links, FIFOs, sockets, hard links, planted staging names), then
//! runs a battery of operations on the paths it touches, through the
//! library and through the `corral` binary. After each battery, a snapshot
//! of everything outside the sandbox (content hash, inode, mode, mtime,
//! link target) must be what it was, nothing from outside may appear in any
//! output or download, and no output may name the host's directory. A
//! flipper swaps a directory and a link to outside (RENAME_EXCHANGE) at
//! least 1,000 times over at least 20 rounds (within 120 s) while uploads,
//! downloads, listings, `rm -r` and `mv` run through the swapping name; it
//! counts the flips that land while an operation is in flight, and the
//! outside is compared after every round. A property test runs random
//! operations, on paths holding `..`, `.`, empty segments and link names,
//! on random trees with random links, and compares every listing with a
//! model of what the user may see (entries, empty, or refused).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corral::cache::CacheConfig;
use corral::{Corral, UserSandbox};
use corral_domain::{ErrorKind, Identity};
use futures::TryStreamExt;

/// What a battery may take at most: a hang is a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(20);

struct World {
    _base: tempfile::TempDir,
    base: PathBuf,
    alice: PathBuf,
    outside: PathBuf,
    work: tempfile::TempDir,
    config: PathBuf,
    marker: String,
    corral: Corral,
}

/// One entry as `lstat` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    ino: u64,
    mode: u32,
    mtime: (i64, i64),
    size: u64,
    hash: u64,
    target: Option<PathBuf>,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Everything below `dir` except `skip`, without following links.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p == skip {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let t = m.file_type();
            let kind = if t.is_symlink() {
                "link"
            } else if t.is_dir() {
                "dir"
            } else if t.is_file() {
                "file"
            } else {
                "special"
            };
            let hash = if t.is_file() {
                hash(&std::fs::read(&p).expect("read"))
            } else {
                0
            };
            out.insert(
                p.clone(),
                Node {
                    kind,
                    ino: m.ino(),
                    mode: m.mode(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    size: if t.is_dir() { 0 } else { m.len() },
                    hash,
                    target: t
                        .is_symlink()
                        .then(|| std::fs::read_link(&p).expect("readlink")),
                },
            );
            if t.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical");
        let marker = format!(
            "OUTSIDE-SECRET-{:x}",
            hash(base.to_string_lossy().as_bytes())
        );
        let outside = base.join("outside");
        std::fs::create_dir_all(outside.join("sub")).expect("mkdir");
        std::fs::write(outside.join("secret.txt"), format!("{marker} top\n")).expect("write");
        std::fs::write(outside.join("victim"), format!("{marker} victim\n")).expect("write");
        std::fs::write(outside.join("sub/deep.txt"), format!("{marker} deep\n")).expect("write");
        let bob = base.join("users/bob");
        std::fs::create_dir_all(&bob).expect("mkdir");
        std::fs::write(bob.join("bobfile"), format!("{marker} bob\n")).expect("write");
        let alice = base.join("users/alice");
        std::fs::create_dir_all(alice.join("docs")).expect("mkdir");
        std::fs::write(alice.join("own.txt"), b"alice's own\n").expect("write");
        std::fs::write(alice.join("docs/a.txt"), b"doc a\n").expect("write");
        let mappings = format!(
            r#"{{"": {{"": {}}}}}"#,
            serde_json::to_string(&format!("{}/users/%u", base.display())).expect("json")
        );
        let config = base.join("corral.json");
        std::fs::write(&config, format!(r#"{{"mappings": {mappings}}}"#)).expect("write");
        let cache = CacheConfig {
            total: 64 << 20,
            upload: 8 << 20,
            download: 8 << 20,
            ..CacheConfig::default()
        };
        let corral = Corral::from_json(&mappings, cache).expect("corral");
        let work = tempfile::tempdir().expect("tempdir");
        std::fs::write(work.path().join("upload.txt"), b"uploaded by alice\n").expect("write");
        Self {
            _base: tmp,
            base,
            alice,
            outside,
            work,
            config,
            marker,
            corral,
        }
    }

    fn sandbox(&self) -> UserSandbox {
        self.corral
            .sandbox(&Identity::user("alice"))
            .expect("sandbox")
    }

    fn outside_now(&self) -> BTreeMap<PathBuf, Node> {
        snapshot(&self.base, &self.alice)
    }

    /// Runs the binary as alice; a run that does not end in time fails the test.
    fn bin(&self, args: &[&str]) -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
            .arg("--config")
            .arg(&self.config)
            .args(["--user", "alice"])
            .args(args)
            .current_dir(self.work.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corral");
        let started = Instant::now();
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if started.elapsed() > OP_TIMEOUT {
                let _ = child.kill();
                panic!("corral {args:?} hung for {OP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output().expect("output");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Nothing from outside in `text`, and not the host's directory.
    #[track_caller]
    fn clean(&self, what: &str, text: &str) {
        assert!(
            !text.contains(&self.marker),
            "{what}: outside content leaked:\n{text}"
        );
        assert!(
            !text.contains(&self.base.to_string_lossy().to_string()),
            "{what}: the host directory is named:\n{text}"
        );
    }

    /// No downloaded file holds outside content.
    fn downloads_clean(&self) {
        for (path, _) in snapshot(self.work.path(), Path::new("/nonexistent")) {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                let bytes = std::fs::read(&path).expect("read");
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&self.marker),
                    "download {} holds outside content",
                    path.display()
                );
            }
        }
    }
}

/// The operations run on each probe path, through the library.
async fn library_battery(w: &World, sb: &UserSandbox, p: &str) -> u64 {
    let dl = w.work.path().join("lib-download");
    let mut log = String::new();
    macro_rules! op {
        ($e:expr) => {{
            let r = tokio::time::timeout(OP_TIMEOUT, $e)
                .await
                .unwrap_or_else(|_| panic!("{} on {p} hung", stringify!($e)));
            log.push_str(&format!("{:?}\n", r));
        }};
    }
    op!(sb.stat(p));
    op!(sb.read(p));
    op!(async { sb.list(p).try_collect::<Vec<_>>().await });
    op!(sb.write(&format!("{p}/child.txt"), b"child", None));
    op!(sb.mkdir(&format!("{p}/a/b"), corral::MkdirOptions { parents: true }));
    op!(sb.copy(p, "/copied", corral::TreeCopyOptions { recursive: true }));
    op!(sb.download_to_file(p, &dl, |_| {}));
    op!(sb.write(p, b"overwritten by alice", None));
    op!(sb.copy("/own.txt", p, corral::TreeCopyOptions { recursive: false }));
    op!(sb.rename(p, "/renamed", corral::RenameOptions { replace: true }));
    op!(sb.remove(p, corral::RemoveOptions::default()));
    op!(sb.remove(
        p,
        corral::RemoveOptions {
            recursive: true,
            only: None
        }
    ));
    op!(async { sb.list("/").try_collect::<Vec<_>>().await });
    w.clean(&format!("library on {p}"), &log);
    13
}

/// The same through the binary.
fn binary_battery(w: &World, p: &str) -> u64 {
    let c = |s: &str| format!("corral:{s}");
    let (pc, child, deep) = (c(p), c(&format!("{p}/child.txt")), c(&format!("{p}/a/b")));
    let dl = w.work.path().join("bin-download");
    let dltree = w.work.path().join("bin-tree");
    let (dl, dltree) = (dl.to_str().expect("utf-8"), dltree.to_str().expect("utf-8"));
    let runs: Vec<Vec<&str>> = vec![
        vec!["stat", &pc],
        vec!["cat", &pc],
        vec!["ls", "-l", &pc],
        vec!["cp", "upload.txt", &child],
        vec!["mkdir", "-p", &deep],
        vec!["cp", "-r", &pc, "corral:/copied2"],
        vec!["cp", &pc, dl],
        vec!["cp", "-r", &pc, dltree],
        vec!["cp", "upload.txt", &pc],
        vec!["cp", "corral:/own.txt", &pc],
        vec!["mv", &pc, "corral:/renamed2"],
        vec!["rm", &pc],
        vec!["rm", "-r", &pc],
        vec!["ls", "corral:/"],
    ];
    let n = runs.len() as u64;
    for args in runs {
        let out = w.bin(&args);
        w.clean(&format!("corral {args:?}"), &out);
    }
    n
}

type Plant = fn(&World);

fn symlink(target: impl AsRef<Path>, at: impl AsRef<Path>) {
    let at = at.as_ref();
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(target, at).expect("symlink");
}

fn mkfifo(at: &Path) {
    let _ = std::fs::remove_file(at);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        at,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
}

/// The attacks: a name, what is planted, and the paths to probe.
fn attacks() -> Vec<(&'static str, Plant, &'static [&'static str])> {
    vec![
        (
            "link to an outside file as the target",
            |w| symlink(w.outside.join("secret.txt"), w.alice.join("f")),
            &["/f"],
        ),
        (
            "link to an outside directory as the parent",
            |w| symlink(&w.outside, w.alice.join("out")),
            &["/out", "/out/secret.txt", "/out/sub/deep.txt"],
        ),
        (
            "link to an outside directory as a deeper parent",
            |w| symlink(w.outside.join("sub"), w.alice.join("d/e")),
            &["/d", "/d/e", "/d/e/deep.txt"],
        ),
        (
            "link to ..",
            |w| symlink("..", w.alice.join("up")),
            &["/up", "/up/bob", "/up/bob/bobfile"],
        ),
        (
            "links to . and ..",
            |w| {
                symlink(".", w.alice.join("l1"));
                symlink(".", w.alice.join("l2"));
                symlink("..", w.alice.join("docs/l3"));
            },
            &["/l1", "/l1/l2/own.txt", "/docs", "/"],
        ),
        (
            "a chain of links",
            |w| {
                symlink("c2", w.alice.join("c1"));
                symlink("c3", w.alice.join("c2"));
                symlink("../../outside/secret.txt", w.alice.join("c3"));
            },
            &["/c1", "/c2", "/c3"],
        ),
        (
            "link into another user's sandbox",
            |w| symlink(w.base.join("users/bob"), w.alice.join("bob")),
            &["/bob", "/bob/bobfile"],
        ),
        (
            "dangling link to a file outside",
            |w| symlink(w.outside.join("created-through-a-link"), w.alice.join("dl")),
            &["/dl"],
        ),
        (
            "links inside a directory that is removed, copied and moved",
            |w| {
                std::fs::create_dir_all(w.alice.join("tree/sub")).expect("mkdir");
                std::fs::write(w.alice.join("tree/a.txt"), b"tree a").expect("write");
                symlink(&w.outside, w.alice.join("tree/link"));
                symlink(w.outside.join("victim"), w.alice.join("tree/sub/link2"));
            },
            &["/tree", "/tree/sub"],
        ),
        ("a FIFO", |w| mkfifo(&w.alice.join("fifo")), &["/fifo"]),
        (
            "a socket",
            |w| {
                let at = w.alice.join("sock");
                let _ = std::fs::remove_file(&at);
                // The listener is closed at once; the socket file stays.
                drop(std::os::unix::net::UnixListener::bind(&at).expect("bind"));
            },
            &["/sock"],
        ),
        (
            "a hard link to an outside file",
            |w| {
                let at = w.alice.join("hl");
                let _ = std::fs::remove_file(&at);
                std::fs::hard_link(w.outside.join("secret.txt"), &at).expect("hard link");
            },
            &["/hl"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_change_nothing_outside() {
    let w = World::new();
    let before = w.outside_now();
    let mut attacks_run = 0;
    let mut operations = 0;
    for (name, plant, probes) in attacks() {
        for p in probes {
            plant(&w);
            operations += library_battery(&w, &w.sandbox(), p).await;
            assert_eq!(w.outside_now(), before, "{name}: library on {p}");
            plant(&w);
            let w2 = &w;
            operations += tokio::task::block_in_place(|| binary_battery(w2, p));
            assert_eq!(w.outside_now(), before, "{name}: binary on {p}");
            w.downloads_clean();
        }
        attacks_run += 1;
    }
    // Links and special files are hidden, yet alice's own files are there.
    plant_all(&w);
    let listing = w.bin(&["ls", "corral:/"]);
    assert!(listing.contains("own.txt"), "{listing}");
    for hidden in ["fifo", "sock", "hl", "l1", "up", "c1"] {
        assert!(
            !listing.lines().any(|l| l.trim_end_matches('/') == hidden),
            "{hidden} listed:\n{listing}"
        );
    }
    // Refusals say so, as permission denied (exit 4), naming the user's path.
    for p in ["/f", "/fifo", "/hl", "/out/secret.txt"] {
        let e = w.sandbox().read(p).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{p}: {e}");
        assert!(e.to_string().contains(p), "{p}: {e}");
    }
    // rm of a link removes the link and nothing else.
    w.sandbox()
        .remove("/f", corral::RemoveOptions::default())
        .await
        .expect("rm link");
    assert!(std::fs::symlink_metadata(w.alice.join("f")).is_err());
    assert_eq!(w.outside_now(), before);
    println!("confinement: {attacks_run} attacks, {operations} operations, 0 effects outside");
}

fn plant_all(w: &World) {
    for (_, plant, _) in attacks() {
        plant(w);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_staging_names_are_never_written() {
    let w = World::new();
    // Where the former backend put its parts, and names of corral's shape.
    for i in 0..6 {
        symlink(
            w.outside.join("victim"),
            w.alice.join(format!("big.bin#{:020}{:05}", 1, i)),
        );
    }
    symlink(
        w.outside.join("victim"),
        w.alice.join(".corral-00000000000000000000000000000000.tmp"),
    );
    mkfifo(&w.alice.join(".corral-11111111111111111111111111111111.tmp"));
    let before = w.outside_now();
    // 20 MiB through an 8 MiB per-upload cache: a multipart upload.
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let sb = w.sandbox();
    sb.write("/big.bin", &big, None).await.expect("upload");
    assert!(sb.read("/big.bin").await.expect("read") == big);
    std::fs::write(w.work.path().join("big.bin"), &big).expect("write");
    let out = tokio::task::block_in_place(|| w.bin(&["cp", "big.bin", "corral:/big2.bin"]));
    w.clean("cp big", &out);
    assert!(std::fs::read(w.alice.join("big2.bin")).expect("read") == big);
    assert_eq!(w.outside_now(), before);
    // No staging file is left beside the result.
    let names: Vec<String> = std::fs::read_dir(&w.alice)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".corral-") || n.contains(".corral-part"))
        .collect();
    assert_eq!(names.len(), 2, "only the planted ones: {names:?}");
}

/// A flipper thread swaps `/flip` between a directory and a link to
/// outside while operations run through it. The flips that land while an
/// operation is in flight are counted (the flipper samples a flag the
/// operations raise), and the outside is compared after every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_swapped_while_operations_run_leads_nowhere() {
    const FLIPS: u64 = 1_000;
    const ROUNDS: u64 = 20;
    let w = World::new();
    let flip = w.alice.join("flip");
    let parked = w.alice.join("flip-parked");
    let fill = |dir: &Path| {
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("x.txt"), b"inside x").expect("write");
        std::fs::write(dir.join("sub/y.txt"), b"inside y").expect("write");
    };
    fill(&flip);
    symlink(&w.outside, &parked);
    let before = w.outside_now();
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let overlapping = Arc::new(AtomicU64::new(0));
    let flipper = {
        let (stop, in_flight, flips, overlapping, flip, parked) = (
            Arc::clone(&stop),
            Arc::clone(&in_flight),
            Arc::clone(&flips),
            Arc::clone(&overlapping),
            flip.clone(),
            parked.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // Sampled before and after: the flip lands inside an operation.
                let during = in_flight.load(Ordering::SeqCst);
                // One atomic swap of the directory and the link to outside.
                match rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &flip,
                    rustix::fs::CWD,
                    &parked,
                    rustix::fs::RenameFlags::EXCHANGE,
                ) {
                    Ok(()) => {
                        flips.fetch_add(1, Ordering::SeqCst);
                        if during && in_flight.load(Ordering::SeqCst) {
                            overlapping.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // An `rm -r` took the directory: make it again.
                    Err(_) => {
                        for p in [&flip, &parked] {
                            if std::fs::symlink_metadata(p).is_err() {
                                fill(p);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let sb = w.sandbox();
    // Raises the flag while an operation runs; its result goes to the log.
    macro_rules! op {
        ($log:ident, $e:expr) => {{
            in_flight.store(true, Ordering::SeqCst);
            let r = $e.await;
            in_flight.store(false, Ordering::SeqCst);
            $log += &format!("{r:?}");
        }};
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rounds = 0u64;
    while (flips.load(Ordering::SeqCst) < FLIPS || rounds < ROUNDS) && Instant::now() < deadline {
        let mut log = String::new();
        op!(log, sb.write("/flip/up.txt", b"up", None));
        op!(log, sb.read("/flip/x.txt"));
        op!(log, sb.list("/flip").try_collect::<Vec<_>>());
        op!(
            log,
            sb.rename(
                "/flip/x.txt",
                "/flip/x2.txt",
                corral::RenameOptions { replace: true }
            )
        );
        op!(
            log,
            sb.rename(
                "/flip/sub",
                "/flip/sub2",
                corral::RenameOptions { replace: true }
            )
        );
        op!(
            log,
            sb.download_to_file("/flip/sub/y.txt", &w.work.path().join("y"), |_| {})
        );
        op!(
            log,
            sb.remove(
                "/flip/sub2",
                corral::RemoveOptions {
                    recursive: true,
                    only: None
                }
            )
        );
        op!(
            log,
            sb.mkdir("/flip/new/dir", corral::MkdirOptions { parents: true })
        );
        w.clean("library through a swapped link", &log);
        if rounds.is_multiple_of(4) {
            let w2 = &w;
            let in_flight = &in_flight;
            tokio::task::block_in_place(|| {
                for args in [
                    &["cp", "upload.txt", "corral:/flip/up2.txt"][..],
                    &["cat", "corral:/flip/x.txt"],
                    &["rm", "-r", "corral:/flip/sub"],
                    &["mv", "corral:/flip/x2.txt", "corral:/flip/x3.txt"],
                    &[
                        "cp",
                        "-r",
                        "corral:/flip",
                        w2.work.path().join("tree").to_str().expect("utf-8"),
                    ],
                ] {
                    in_flight.store(true, Ordering::SeqCst);
                    let out = w2.bin(args);
                    in_flight.store(false, Ordering::SeqCst);
                    w2.clean(&format!("corral {args:?}"), &out);
                }
            });
        }
        rounds += 1;
        assert_eq!(
            w.outside_now(),
            before,
            "after round {rounds}, {} flips",
            flips.load(Ordering::SeqCst)
        );
    }
    stop.store(true, Ordering::SeqCst);
    flipper.join().expect("flipper");
    let n = flips.load(Ordering::SeqCst);
    let overlapping = overlapping.load(Ordering::SeqCst);
    w.downloads_clean();
    println!(
        "confinement: {n} link flips over {rounds} rounds of operations, {overlapping} of them while an operation ran, 0 effects outside"
    );
    assert!(n >= FLIPS, "only {n} flips within 120 s");
    assert!(rounds >= ROUNDS, "only {rounds} rounds within 120 s");
    // Measured 1,033 of 1,045: operations run back to back.
    assert!(
        overlapping >= FLIPS / 2,
        "only {overlapping} flips landed while an operation ran"
    );
}

mod model {
    //! Random trees with random links, random operations on paths that
    //! hold `..`, `.`, empty segments and link names, and after each a
    //! comparison with a model of what alice may see: the entries reachable
    //! from her root through real directories only, that are directories
    //! or regular files with one link.
    use super::*;
    use crate::common::counted;
    use proptest::prelude::*;
    use std::cell::RefCell;

    #[derive(Debug, Clone)]
    enum Plant {
        File(u8),
        Dir,
        LinkOutsideFile,
        LinkOutsideDir,
        LinkDot,
        LinkDotDot,
        LinkInside(u8),
        Dangling,
        Fifo,
        HardLinkOutside,
    }

    /// A path as the user types it: indexes into [`SEGMENTS`].
    #[derive(Debug, Clone)]
    struct P(Vec<u8>);

    #[derive(Debug, Clone)]
    enum Op {
        Write(P),
        Read(P),
        Remove(P, bool),
        Mkdir(P),
        Rename(P, P),
        Copy(P, P),
        List(P),
    }

    /// Names of the random trees.
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    /// Links planted at the root of every tree: to the outside directory,
    /// and to `..`.
    const LINKS: [&str; 2] = ["out", "up"];
    /// What an operation's path is made of.
    const SEGMENTS: [&str; 9] = ["a", "b", "c", "d", "out", "up", "..", ".", ""];

    /// A path of the tree (names only).
    fn path(p: &[u8]) -> String {
        let names: Vec<&str> = p.iter().map(|i| NAMES[*i as usize % 4]).collect();
        format!("/{}", names.join("/"))
    }

    impl P {
        fn text(&self) -> String {
            let segs: Vec<&str> = self.0.iter().map(|i| SEGMENTS[*i as usize]).collect();
            format!("/{}", segs.join("/"))
        }

        /// What the path names once `.`, `..` and empty segments are taken
        /// (lexically, as the library does); `None` if it leaves the sandbox.
        fn resolved(&self) -> Option<String> {
            let mut stack = Vec::new();
            for i in &self.0 {
                match SEGMENTS[*i as usize] {
                    "" | "." => {}
                    ".." => {
                        stack.pop()?;
                    }
                    s => stack.push(s),
                }
            }
            Some(format!("/{}", stack.join("/")))
        }

        /// The kinds of odd segments it holds, to count.
        fn odd(&self) -> Vec<&'static str> {
            let mut out = Vec::new();
            for i in &self.0 {
                let kind = match SEGMENTS[*i as usize] {
                    ".." => "a `..`",
                    "." => "a `.`",
                    "" => "an empty segment",
                    "out" | "up" => "a link name",
                    _ => continue,
                };
                if !out.contains(&kind) {
                    out.push(kind);
                }
            }
            out
        }
    }

    fn rel() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..4, 1..=3)
    }

    /// Mostly names, one segment in four a link name, `..`, `.` or empty.
    fn op_path() -> impl Strategy<Value = P> {
        proptest::collection::vec(prop_oneof![6 => 0u8..4, 1 => 4u8..6, 1 => 6u8..9], 1..=4)
            .prop_map(P)
    }

    fn plant() -> impl Strategy<Value = Plant> {
        prop_oneof![
            3 => any::<u8>().prop_map(Plant::File),
            3 => Just(Plant::Dir),
            1 => Just(Plant::LinkOutsideFile),
            1 => Just(Plant::LinkOutsideDir),
            1 => Just(Plant::LinkDot),
            1 => Just(Plant::LinkDotDot),
            1 => any::<u8>().prop_map(Plant::LinkInside),
            1 => Just(Plant::Dangling),
            1 => Just(Plant::Fifo),
            1 => Just(Plant::HardLinkOutside),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            op_path().prop_map(Op::Write),
            op_path().prop_map(Op::Read),
            (op_path(), any::<bool>()).prop_map(|(p, r)| Op::Remove(p, r)),
            op_path().prop_map(Op::Mkdir),
            (op_path(), op_path()).prop_map(|(a, b)| Op::Rename(a, b)),
            (op_path(), op_path()).prop_map(|(a, b)| Op::Copy(a, b)),
            op_path().prop_map(Op::List),
        ]
    }

    fn build(w: &World, tree: &[(Vec<u8>, Plant)]) {
        symlink(&w.outside, w.alice.join(LINKS[0]));
        symlink("..", w.alice.join(LINKS[1]));
        for (p, plant) in tree {
            let at = w.alice.join(path(p).trim_start_matches('/'));
            // Only where the parent is a real directory of the sandbox.
            let Some(parent) = at.parent() else { continue };
            if !real_dir(&w.alice, parent) || std::fs::symlink_metadata(&at).is_ok() {
                continue;
            }
            match plant {
                Plant::File(n) => std::fs::write(&at, format!("inside {n}")).expect("write"),
                Plant::Dir => std::fs::create_dir(&at).expect("mkdir"),
                Plant::LinkOutsideFile => symlink(w.outside.join("secret.txt"), &at),
                Plant::LinkOutsideDir => symlink(&w.outside, &at),
                Plant::LinkDot => symlink(".", &at),
                Plant::LinkDotDot => symlink("..", &at),
                Plant::LinkInside(n) => symlink(NAMES[*n as usize % 4], &at),
                Plant::Dangling => symlink(w.outside.join("made-through-a-link"), &at),
                Plant::Fifo => mkfifo(&at),
                Plant::HardLinkOutside => {
                    std::fs::hard_link(w.outside.join("victim"), &at).expect("link")
                }
            }
        }
    }

    /// Whether `dir` is reached from `root` through real directories only.
    fn real_dir(root: &Path, dir: &Path) -> bool {
        let Ok(rel) = dir.strip_prefix(root) else {
            return false;
        };
        let mut cur = root.to_path_buf();
        for c in rel.components() {
            cur.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_dir() => {}
                _ => return false,
            }
        }
        true
    }

    /// What alice may see in directory `p` (names, and whether a directory).
    fn visible(root: &Path, p: &str) -> Option<BTreeMap<String, bool>> {
        let dir = root.join(p.trim_start_matches('/'));
        if !real_dir(root, &dir) {
            return None;
        }
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            if m.file_type().is_dir() {
                out.insert(name, true);
            } else if m.file_type().is_file() && m.nlink() == 1 {
                out.insert(name, false);
            }
        }
        Some(out)
    }

    /// Why a path is not a directory alice may list.
    fn not_a_dir(root: &Path, p: &str) -> &'static str {
        let mut cur = root.to_path_buf();
        for name in p.split('/').filter(|s| !s.is_empty()) {
            cur.push(name);
            match std::fs::symlink_metadata(&cur) {
                Err(_) => return "missing",
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_file() && m.nlink() == 1 => return "a file",
                Ok(_) => return "a link or special file",
            }
        }
        "a directory"
    }

    /// Counts by what was reached, over all cases.
    #[derive(Default)]
    struct Tally(RefCell<BTreeMap<String, u64>>);

    impl Tally {
        fn add(&self, what: impl Into<String>) {
            *self.0.borrow_mut().entry(what.into()).or_default() += 1;
        }

        fn get(&self, what: &str) -> u64 {
            self.0.borrow().get(what).copied().unwrap_or(0)
        }
    }

    /// The error kind of a result, and its text for the leak check.
    fn outcome<T: std::fmt::Debug>(r: Result<T, corral::Error>) -> (Option<ErrorKind>, String) {
        let kind = r.as_ref().err().map(corral::Error::kind);
        (kind, format!("{r:?}"))
    }

    async fn run(w: &World, ops: &[Op], tally: &Tally) -> Result<&'static str, TestCaseError> {
        let before = w.outside_now();
        let sb = w.sandbox();
        let mut reached = counted::SKIPPED;
        for op in ops {
            let paths: Vec<&P> = match op {
                Op::Write(p) | Op::Read(p) | Op::Remove(p, _) | Op::Mkdir(p) | Op::List(p) => {
                    vec![p]
                }
                Op::Rename(a, b) | Op::Copy(a, b) => vec![a, b],
            };
            let (kind, text) = tokio::time::timeout(OP_TIMEOUT, async {
                match op {
                    Op::Write(p) => outcome(sb.write(&p.text(), b"written", None).await),
                    Op::Read(p) => {
                        let r = sb.read(&p.text()).await;
                        // What is read is the file the model shows, byte for byte.
                        if let (Ok(bytes), Some(resolved)) = (&r, p.resolved()) {
                            let at = w.alice.join(resolved.trim_start_matches('/'));
                            let parent_real = at.parent().is_some_and(|d| real_dir(&w.alice, d));
                            let m = std::fs::symlink_metadata(&at);
                            assert!(
                                parent_real && m.is_ok_and(|m| m.is_file() && m.nlink() == 1),
                                "read {} although it is not a visible file",
                                p.text()
                            );
                            assert_eq!(&bytes[..], &std::fs::read(&at).expect("read")[..]);
                        }
                        outcome(r)
                    }
                    Op::Remove(p, r) => outcome(
                        sb.remove(
                            &p.text(),
                            corral::RemoveOptions {
                                recursive: *r,
                                only: None,
                            },
                        )
                        .await,
                    ),
                    Op::Mkdir(p) => outcome(
                        sb.mkdir(&p.text(), corral::MkdirOptions { parents: true })
                            .await,
                    ),
                    Op::Rename(a, b) => outcome(
                        sb.rename(
                            &a.text(),
                            &b.text(),
                            corral::RenameOptions { replace: true },
                        )
                        .await,
                    ),
                    Op::Copy(a, b) => outcome(
                        sb.copy(
                            &a.text(),
                            &b.text(),
                            corral::TreeCopyOptions { recursive: true },
                        )
                        .await,
                    ),
                    Op::List(p) => outcome(sb.list(p.text()).try_collect::<Vec<_>>().await),
                }
            })
            .await
            .map_err(|_| TestCaseError::fail(format!("{op:?} hung")))?;
            prop_assert!(!text.contains(&w.marker), "{op:?} leaked: {text}");
            prop_assert!(
                w.outside_now() == before,
                "{op:?} changed something outside"
            );
            // A path leaving the sandbox is refused as such.
            if paths.iter().any(|p| p.resolved().is_none()) {
                prop_assert_eq!(kind, Some(ErrorKind::EscapesSandbox), "{:?}: {}", op, text);
                tally.add("op leaving the sandbox, refused");
            }
            for p in &paths {
                for odd in p.odd() {
                    tally.add(format!("op on a path with {odd}"));
                }
            }
            if kind.is_none() && paths.iter().any(|p| !p.odd().is_empty()) {
                tally.add("op on an odd path, done");
            }
            // Every directory's listing is the model's.
            for dir in [
                "/", "/a", "/b", "/a/a", "/a/b", "/b/a", "/c", "/d", "/out", "/up", "/a/out",
            ] {
                let listed = sb.list(dir).try_collect::<Vec<_>>().await;
                let why = not_a_dir(&w.alice, dir);
                match (listed, visible(&w.alice, dir)) {
                    (Ok(l), Some(m)) => {
                        let l: BTreeMap<String, bool> = l
                            .into_iter()
                            .map(|e| (e.name.clone(), e.is_dir()))
                            .collect();
                        prop_assert_eq!(&l, &m, "{} after {:?}", dir, op);
                        if !m.is_empty() && dir != "/" {
                            tally.add("listing with entries compared");
                            reached = "listing with entries compared";
                        }
                    }
                    // A missing path and a file list empty, as on S3.
                    (Ok(l), None) if why == "missing" || why == "a file" => {
                        prop_assert!(l.is_empty(), "{dir} listed {l:?} after {op:?}");
                        tally.add(format!("listing of {why}: empty"));
                    }
                    // A link or special file on the way is refused.
                    (Err(e), None) if why == "a link or special file" => {
                        prop_assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{}: {}", dir, e);
                        tally.add(format!("listing of {why}: refused"));
                    }
                    (r, m) => prop_assert!(
                        false,
                        "{} after {:?}: {:?}, where the model has {:?} ({})",
                        dir,
                        op,
                        r.map(|v| v.len()),
                        m,
                        why
                    ),
                }
            }
        }
        Ok(reached)
    }

    #[test]
    fn random_trees_and_operations_stay_inside() {
        const CASES: u32 = 256;
        let tally = Tally::default();
        counted::run(
            "random_trees_and_operations_stay_inside",
            CASES,
            (
                proptest::collection::vec((rel(), plant()), 0..16),
                proptest::collection::vec(op(), 1..10),
            ),
            // Measured about 100 of 256 (the rest list only the root
            // with entries).
            &[("listing with entries compared", 50)],
            |(tree, ops)| {
                let w = World::new();
                build(&w, &tree);
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(run(&w, &ops, &tally))
            },
        );
        println!(
            "random_trees_and_operations_stay_inside: {:?}",
            tally.0.borrow()
        );
        // Measured (256 cases): about 170 each for `..`, `.` and empty
        // segments, 450 for link names, 65 paths leaving the sandbox, 550
        // listings with entries below the root, 5,000 listings refused.
        for (what, floor) in [
            ("op on a path with a `..`", 100),
            ("op on a path with a `.`", 100),
            ("op on a path with an empty segment", 100),
            ("op on a path with a link name", 250),
            ("op on an odd path, done", 50),
            ("op leaving the sandbox, refused", 30),
            ("listing with entries compared", 300),
            ("listing of a link or special file: refused", 2_000),
            ("listing of missing: empty", 2_000),
            ("listing of a file: empty", 300),
        ] {
            let n = tally.get(what);
            assert!(n >= floor, "{what}: {n}, fewer than {floor}");
        }
    }
}
