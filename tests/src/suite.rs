//! The cases, their selection by capability, and the report.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use corral_domain::key::{HiddenCount, KeyClass};
use corral_domain::listing::DirectoryListing;
use corral_domain::port::{ByteRange, ContentChecksum, ListItem, ListOptions, ObjectMeta, PutMode};
use corral_domain::template::{Identity, PathTemplate};
use corral_domain::{
    Capabilities, Error, ErrorKind, ObjectKey, ObjectStorage, SandboxRoot, VirtualPath,
};
use futures::{StreamExt, TryStreamExt};

/// What a case checks, for grouping in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Area {
    /// Whole-object reads and writes.
    Objects,
    /// Listings: delimiter, pagination, odd keys.
    Listing,
    /// Multipart uploads.
    Multipart,
    /// Conditional requests.
    Conditional,
    /// Sandbox rules applied through the port: confinement, hidden keys,
    /// isolation of users, directory emulation, rename.
    Sandbox,
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Objects => "objects",
            Self::Listing => "listing",
            Self::Multipart => "multipart",
            Self::Conditional => "conditional",
            Self::Sandbox => "sandbox",
        })
    }
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Pass,
    /// It did not; what happened, with the server's answer.
    Fail(String),
    /// The target declares it cannot; why.
    Unsupported(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pass => f.write_str("pass"),
            Self::Fail(why) => write!(f, "FAIL: {why}"),
            Self::Unsupported(why) => write!(f, "unsupported: {why}"),
        }
    }
}

/// One case's report.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The area.
    pub area: Area,
    /// The case's name.
    pub name: &'static str,
    /// What happened.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// One entry per case, in suite order.
    pub cases: Vec<CaseReport>,
    /// A failure while removing what the run created, if any.
    pub cleanup: Option<String>,
}

impl Report {
    /// The cases that failed, plus a failed cleanup.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
            .map(|c| format!("{}: {}", c.name, c.outcome))
            .collect();
        if let Some(c) = &self.cleanup {
            out.push(format!("cleanup: {c}"));
        }
        out
    }

    /// The outcome of case `name`.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.cases
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.outcome)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance of {}:", self.target)?;
        for c in &self.cases {
            writeln!(
                f,
                "  {:<12} {:<28} {} ({} ms)",
                c.area,
                c.name,
                c.outcome,
                c.elapsed.as_millis()
            )?;
        }
        if let Some(c) = &self.cleanup {
            writeln!(f, "  cleanup FAILED: {c}")?;
        }
        Ok(())
    }
}

/// What a run is pointed at.
#[derive(Debug, Clone)]
pub struct Target {
    /// A name for the report.
    pub name: String,
    /// The backend.
    pub storage: Arc<dyn ObjectStorage>,
    /// Where the run may write: `""` or ending in `/`. A random directory is made below it.
    pub base: String,
    /// The capabilities that select cases (the backend's unless overridden).
    pub capabilities: Capabilities,
    /// Cases known to fail on this target, with why and how: reported as
    /// unsupported, with the server's answer, instead of failed, when they
    /// fail as declared.
    pub known_failures: Vec<KnownFailure>,
}

/// A case declared to fail on a target (a server quirk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFailure {
    /// The case's name.
    pub case: String,
    /// Why it fails there, for the report.
    pub reason: String,
    /// What its failure says: fragments of the failure's text (the step
    /// that failed, the server's answer or the error kind). A failure
    /// that does not hold them all is another failure, and fails the run.
    pub expected: Vec<String>,
}

impl KnownFailure {
    /// Whether `failure` is the declared one.
    fn matches(&self, failure: &str) -> bool {
        self.expected.iter().all(|f| failure.contains(f.as_str()))
    }
}

impl Target {
    /// A target with the backend's declared capabilities, writing at its root.
    pub fn new(name: impl Into<String>, storage: Arc<dyn ObjectStorage>) -> Self {
        let capabilities = storage.capabilities().clone();
        Self {
            name: name.into(),
            storage,
            base: String::new(),
            capabilities,
            known_failures: Vec::new(),
        }
    }

    /// Declares that `case` fails on this target, why (a server quirk),
    /// and with what: `expected` are fragments of the failure's text (e.g.
    /// the step and the server's error code); a failure without them all
    /// is reported failed.
    #[must_use]
    pub fn with_known_failure(mut self, case: &str, reason: &str, expected: &[&str]) -> Self {
        self.known_failures.push(KnownFailure {
            case: case.to_owned(),
            reason: reason.to_owned(),
            expected: expected.iter().map(|f| (*f).to_owned()).collect(),
        });
        self
    }

    /// Writes below `base` (`""` or ending in `/`).
    #[must_use]
    pub fn with_base(mut self, base: impl Into<String>) -> Self {
        self.base = base.into();
        self
    }

    /// Overrides the capabilities that select cases (a server's quirks).
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }
}

type CaseResult = Result<(), String>;
type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// A case's context: the target and its own directory.
#[derive(Clone)]
struct Ctx {
    storage: Arc<dyn ObjectStorage>,
    caps: Capabilities,
    dir: String,
}

impl Ctx {
    fn key(&self, rest: &str) -> ObjectKey {
        ObjectKey::from_raw(format!("{}{rest}", self.dir))
    }
}

struct Case {
    area: Area,
    name: &'static str,
    /// `Some(reason)` when the capabilities rule the case out.
    unsupported: fn(&Capabilities) -> Option<&'static str>,
    run: fn(Ctx) -> CaseFuture,
}

macro_rules! case {
    ($area:expr, $name:literal, $needs:expr, $f:ident) => {
        Case {
            area: $area,
            name: $name,
            unsupported: $needs,
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

fn always(_: &Capabilities) -> Option<&'static str> {
    None
}

fn cases() -> Vec<Case> {
    vec![
        case!(Area::Objects, "put_head_get", always, put_head_get),
        case!(Area::Objects, "ranged_get", always, ranged_get),
        case!(Area::Objects, "missing_key", always, missing_key),
        case!(Area::Objects, "copy", always, copy),
        case!(Area::Objects, "directory_marker", always, directory_marker),
        case!(Area::Objects, "batch_delete", always, batch_delete),
        case!(Area::Listing, "list_delimiter", always, list_delimiter),
        case!(Area::Listing, "list_pagination", always, list_pagination),
        case!(Area::Listing, "odd_keys", always, odd_keys),
        case!(Area::Listing, "longest_key", always, longest_key),
        case!(
            Area::Multipart,
            "multipart_complete",
            |c| (!c.multipart).then_some("no multipart uploads"),
            multipart_complete
        ),
        case!(
            Area::Multipart,
            "multipart_abort",
            |c| (!c.multipart).then_some("no multipart uploads"),
            multipart_abort
        ),
        case!(
            Area::Multipart,
            "list_pending_uploads",
            |c| (!c.list_pending_uploads).then_some("cannot list pending multipart uploads"),
            list_pending_uploads
        ),
        case!(
            Area::Multipart,
            "continue_upload",
            |c| (!c.list_pending_uploads).then_some("cannot list pending multipart uploads"),
            continue_upload
        ),
        case!(Area::Sandbox, "confinement", always, confinement),
        case!(
            Area::Sandbox,
            "dot_segments_hidden",
            always,
            dot_segments_hidden
        ),
        case!(Area::Sandbox, "users_isolated", always, users_isolated),
        case!(
            Area::Sandbox,
            "directory_emulation",
            always,
            directory_emulation
        ),
        case!(Area::Sandbox, "rename", always, rename),
        case!(
            Area::Conditional,
            "conditional_create",
            |c| (!c.conditional_create).then_some("create-if-absent is not enforced"),
            conditional_create
        ),
    ]
}

/// The names of every case, in suite order.
pub fn case_names() -> Vec<&'static str> {
    cases().iter().map(|c| c.name).collect()
}

/// Runs every case, then removes what the run created.
pub async fn run(target: &Target) -> Report {
    run_cases(target, &case_names()).await
}

/// Runs the named cases, then removes what the run created.
pub async fn run_cases(target: &Target, names: &[&str]) -> Report {
    let run_dir = format!("{}corral-conformance-{}/", target.base, random_suffix());
    let mut reports = Vec::new();
    for case in cases().into_iter().filter(|c| names.contains(&c.name)) {
        let started = Instant::now();
        let outcome = match (case.unsupported)(&target.capabilities) {
            Some(why) => Outcome::Unsupported(why.to_owned()),
            None => {
                let ctx = Ctx {
                    storage: Arc::clone(&target.storage),
                    caps: target.capabilities.clone(),
                    dir: format!("{run_dir}{}/", case.name),
                };
                let known = target.known_failures.iter().find(|k| k.case == case.name);
                match ((case.run)(ctx).await, known) {
                    (Ok(()), _) => Outcome::Pass,
                    (Err(why), Some(k)) if k.matches(&why) => {
                        Outcome::Unsupported(format!("{} (the server answered: {why})", k.reason))
                    }
                    // Declared to fail, but not this way: a failure of its own.
                    (Err(why), Some(k)) => Outcome::Fail(format!(
                        "{why} (declared to fail with {:?} only: {})",
                        k.expected, k.reason
                    )),
                    (Err(why), None) => Outcome::Fail(why),
                }
            }
        };
        reports.push(CaseReport {
            area: case.area,
            name: case.name,
            outcome,
            elapsed: started.elapsed(),
        });
    }
    let cleanup = clean(target, &run_dir).await.err();
    Report {
        target: target.name.clone(),
        cases: reports,
        cleanup,
    }
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Deletes every key under `dir` (children before their directories) and
/// aborts the pending uploads there.
async fn clean(target: &Target, dir: &str) -> Result<(), String> {
    let prefix = ObjectKey::from_raw(dir);
    let mut keys: Vec<ObjectKey> = target
        .storage
        .list(&prefix, ListOptions::default())
        .map_ok(|item| item.key().clone())
        .try_collect()
        .await
        .map_err(|e| describe(&e))?;
    keys.push(prefix.clone());
    // Longer keys first: a directory's children go before the directory.
    keys.sort_by_key(|k| std::cmp::Reverse(k.as_str().len()));
    let failed = target
        .storage
        .delete_many(keys)
        .await
        .map_err(|e| describe(&e))?;
    let failed: Vec<_> = failed
        .into_iter()
        .filter(|(_, e)| e.kind() != ErrorKind::NotFound)
        .collect();
    if target.capabilities.list_pending_uploads {
        for u in target
            .storage
            .list_pending_uploads(&prefix)
            .await
            .map_err(|e| describe(&e))?
        {
            target
                .storage
                .abort_multipart(&u.key, &u.upload_id)
                .await
                .map_err(|e| describe(&e))?;
        }
    }
    match failed.first() {
        None => Ok(()),
        Some((k, e)) => Err(format!(
            "{} keys not deleted, first {k}: {}",
            failed.len(),
            describe(e)
        )),
    }
}

/// The error, its middle cut when long: a quoted 1,024-byte key must not
/// hide the server's answer, which comes last.
fn describe(e: &Error) -> String {
    let s = format!("{e} [{}]", e.kind());
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 400 {
        return s;
    }
    let head: String = chars[..150].iter().collect();
    let tail: String = chars[chars.len() - 250..].iter().collect();
    format!("{head} … {tail}")
}

/// `s` cut to `n` characters, for messages that may quote a 1,024-byte key.
fn short(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Names for a sentence: `"a", "b" and "c"`, or `nothing`.
fn names_text<I, S>(names: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let quoted: Vec<String> = names
        .into_iter()
        .map(|n| format!("{:?}", short(n.as_ref(), 120)))
        .collect();
    match quoted.as_slice() {
        [] => "nothing".to_owned(),
        [one] => one.clone(),
        [rest @ .., last] if rest.len() < 8 => format!("{} and {last}", rest.join(", ")),
        _ => format!("{} and {} more", quoted[..8].join(", "), quoted.len() - 8),
    }
}

/// A listing's keys for a sentence (common prefixes and special entries marked).
fn items_text(items: &[ListItem]) -> String {
    names_text(items.iter().map(|i| match i {
        ListItem::Object(m) => m.key.as_str().to_owned(),
        ListItem::Prefix(p) => format!("{p} (a common prefix)"),
        ListItem::Special(k, kind) => format!("{k} ({kind})"),
    }))
}

/// What a HEAD says, for a sentence.
fn meta_text(m: &ObjectMeta) -> String {
    format!("an object of {} bytes", m.size)
}

/// A HEAD's answer, for a sentence.
fn result_text(r: &corral_domain::Result<ObjectMeta>) -> String {
    match r {
        Ok(m) => meta_text(m),
        Err(e) => describe(e),
    }
}

/// Pending uploads, for a sentence.
fn uploads_text(pending: &[corral_domain::port::PendingUpload]) -> String {
    names_text(
        pending
            .iter()
            .map(|u| format!("{} (upload {})", u.key, u.upload_id)),
    )
}

/// A byte range, for a sentence.
fn range_text(r: &ByteRange) -> String {
    match r {
        ByteRange::Bounded(r) => format!("bytes {}..{}", r.start, r.end),
        ByteRange::From(o) => format!("bytes from {o}"),
        ByteRange::Suffix(n) => format!("the last {n} bytes"),
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

trait Check<T> {
    fn check(self, what: &str) -> Result<T, String>;
}

impl<T> Check<T> for corral_domain::Result<T> {
    fn check(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {}", describe(&e)))
    }
}

/// Deterministic bytes, different for every `seed`.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

async fn read_all(
    ctx: &Ctx,
    key: &ObjectKey,
    range: Option<ByteRange>,
) -> Result<(std::ops::Range<u64>, Vec<u8>), String> {
    let r = ctx.storage.get(key, range).await.check("get")?;
    let range = r.range.clone();
    let chunks: Vec<Bytes> = r.body.try_collect().await.check("reading the body")?;
    Ok((range, chunks.concat()))
}

async fn list_keys(ctx: &Ctx, prefix: &str, delimiter: bool) -> Result<Vec<ListItem>, String> {
    ctx.storage
        .list(
            &ObjectKey::from_raw(prefix),
            ListOptions {
                delimiter,
                start_after: None,
            },
        )
        .try_collect()
        .await
        .check("list")
}

/// The checksum of the whole object a HEAD vouches for, if any, is that of
/// `data`: corral checks every whole download against it, so a wrong one
/// would fail them all.
fn vouched_checksum_is_right(meta: &ObjectMeta, data: &[u8]) -> CaseResult {
    use md5::Digest;
    let Some(vouched) = meta.checksum else {
        return Ok(());
    };
    let actual = match vouched {
        ContentChecksum::Crc64Nvme(_) => {
            ContentChecksum::Crc64Nvme(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data))
        }
        ContentChecksum::Md5(_) => ContentChecksum::Md5(md5::Md5::digest(data).into()),
    };
    let hint = match vouched {
        ContentChecksum::Md5(_) => " (a server whose ETags are not MD5s needs `etagIsMd5: false`)",
        ContentChecksum::Crc64Nvme(_) => "",
    };
    ensure!(
        vouched == actual,
        "the HEAD vouches for {vouched}, the bytes have {actual}{hint}"
    );
    Ok(())
}

async fn put_head_get(ctx: Ctx) -> CaseResult {
    let key = ctx.key("object.bin");
    let data = pattern(100_000, 1);
    ctx.storage
        .put(&key, data.clone(), PutMode::Overwrite)
        .await
        .check("put")?;
    let meta = ctx.storage.head(&key).await.check("head")?;
    ensure!(
        meta.size == 100_000,
        "head says {} bytes, 100000 were put",
        meta.size
    );
    vouched_checksum_is_right(&meta, &data)?;
    let (_, body) = read_all(&ctx, &key, None).await?;
    ensure!(body == data, "the body read back differs from what was put");
    let smaller = pattern(10, 2);
    ctx.storage
        .put(&key, smaller.clone(), PutMode::Overwrite)
        .await
        .check("overwrite")?;
    let (_, body) = read_all(&ctx, &key, None).await?;
    ensure!(body == smaller, "an overwrite did not replace the object");
    vouched_checksum_is_right(&ctx.storage.head(&key).await.check("head")?, &smaller)?;
    let empty = ctx.key("empty");
    ctx.storage
        .put(&empty, Bytes::new(), PutMode::Overwrite)
        .await
        .check("put empty")?;
    let meta = ctx.storage.head(&empty).await.check("head empty")?;
    ensure!(meta.size == 0, "empty object is not empty");
    vouched_checksum_is_right(&meta, &[])?;
    Ok(())
}

async fn ranged_get(ctx: Ctx) -> CaseResult {
    let key = ctx.key("ranged.bin");
    let data = pattern(10_000, 3);
    ctx.storage
        .put(&key, data.clone(), PutMode::Overwrite)
        .await
        .check("put")?;
    for (range, expected) in [
        (ByteRange::Bounded(100..200), 100..200),
        (ByteRange::From(9_000), 9_000..10_000),
        (ByteRange::Suffix(500), 9_500..10_000),
        (ByteRange::Bounded(9_990..20_000), 9_990..10_000),
    ] {
        let (got_range, body) = read_all(&ctx, &key, Some(range.clone())).await?;
        ensure!(
            got_range == expected,
            "{}: the server returned bytes {}..{}, expected {}..{}",
            range_text(&range),
            got_range.start,
            got_range.end,
            expected.start,
            expected.end
        );
        ensure!(
            body == data[expected.start as usize..expected.end as usize],
            "{}: the bytes returned are not those of the range",
            range_text(&range)
        );
    }
    Ok(())
}

async fn missing_key(ctx: Ctx) -> CaseResult {
    let key = ctx.key("never-written");
    match ctx.storage.head(&key).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "head of a missing key: expected not found, got {}",
                describe(&e)
            ));
        }
        Ok(m) => {
            return Err(format!(
                "the HEAD of a missing key succeeded ({})",
                meta_text(&m)
            ));
        }
    }
    match ctx.storage.get(&key, None).await {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "get of a missing key: expected not found, got {}",
            describe(&e)
        )),
        Ok(_) => Err("get of a missing key succeeded".to_owned()),
    }
}

async fn copy(ctx: Ctx) -> CaseResult {
    let (src, dst) = (ctx.key("src"), ctx.key("sub/dst"));
    let data = pattern(5_000, 4);
    ctx.storage
        .put(&src, data.clone(), PutMode::Overwrite)
        .await
        .check("put")?;
    ctx.storage.copy(&src, &dst).await.check("copy")?;
    let (_, body) = read_all(&ctx, &dst, None).await?;
    ensure!(body == data, "the copy differs from its source");
    ctx.storage
        .head(&src)
        .await
        .check("head of the source after copy")?;
    Ok(())
}

async fn directory_marker(ctx: Ctx) -> CaseResult {
    let marker = ctx.key("dir/");
    ctx.storage
        .put(&marker, Bytes::new(), PutMode::Overwrite)
        .await
        .check("put marker")?;
    let meta = ctx.storage.head(&marker).await.check("head marker")?;
    ensure!(meta.size == 0, "a marker has {} bytes", meta.size);
    let items = list_keys(&ctx, &ctx.dir, true).await?;
    let found = items.iter().any(|i| i.key() == &marker);
    ensure!(
        found,
        "the delimited listing of the parent does not show {marker}; it shows {}",
        items_text(&items)
    );
    let all = list_keys(&ctx, &ctx.dir, false).await?;
    let found = all.iter().any(|i| i.key() == &marker);
    ensure!(
        found,
        "the recursive listing does not show {marker}; it shows {}",
        items_text(&all)
    );
    // The marker is not the file `dir`.
    match ctx.storage.head(&ctx.key("dir")).await {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => Err(format!(
            "`dir` (no slash) should not exist beside the marker `dir/`, but its HEAD gave {}",
            result_text(&other)
        )),
    }
}

async fn put_many(ctx: &Ctx, keys: &[ObjectKey]) -> Result<(), String> {
    futures::stream::iter(keys.iter().cloned())
        .map(|k| {
            let s = Arc::clone(&ctx.storage);
            async move {
                s.put(&k, Bytes::from_static(b"x"), PutMode::Overwrite)
                    .await
                    .check("put")
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .map(|_| ())
}

const MANY: usize = 1_005;

/// The files below the case's directory (no markers), by key.
async fn files_below(ctx: &Ctx) -> Result<Vec<String>, String> {
    Ok(list_keys(ctx, &ctx.dir, false)
        .await?
        .iter()
        .map(|i| i.key().as_str().to_owned())
        .filter(|k| !k.ends_with('/'))
        .collect())
}

async fn batch_delete(ctx: Ctx) -> CaseResult {
    let keys: Vec<ObjectKey> = (0..MANY).map(|i| ctx.key(&format!("k{i:05}"))).collect();
    put_many(&ctx, &keys).await?;
    let survivor = ctx.key("survivor");
    ctx.storage
        .put(&survivor, Bytes::from_static(b"s"), PutMode::Overwrite)
        .await
        .check("put")?;
    let failed = ctx.storage.delete_many(keys).await.check("delete_many")?;
    ensure!(
        failed.is_empty(),
        "{} keys not deleted; the first, {}: {}",
        failed.len(),
        failed
            .first()
            .map(|(k, _)| short(k.as_str(), 120))
            .unwrap_or_default(),
        failed.first().map(|(_, e)| describe(e)).unwrap_or_default()
    );
    // A cluster may list a deleted key for a moment: look again before
    // calling it a failure, and say whether a second delete removes it.
    let mut left = files_below(&ctx).await?;
    for _ in 0..3 {
        if left == [survivor.as_str()] {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        left = files_below(&ctx).await?;
    }
    if left != [survivor.as_str()] {
        let again: Vec<ObjectKey> = left
            .iter()
            .filter(|k| *k != survivor.as_str())
            .map(|k| ObjectKey::from_raw(k.clone()))
            .collect();
        let second = ctx
            .storage
            .delete_many(again)
            .await
            .check("second delete")?;
        let after = files_below(&ctx).await?;
        return Err(format!(
            "after deleting {MANY} keys, {} were still listed 3 s later (such as {}); a second delete {} ({} failed)",
            left.len() - 1,
            left.iter()
                .find(|k| *k != survivor.as_str())
                .map(|k| short(k, 120))
                .unwrap_or_default(),
            if after == [survivor.as_str()] {
                "removed them"
            } else {
                "did not remove them"
            },
            second.len()
        ));
    }
    // Deleting what is not there is not an error.
    let again = ctx
        .storage
        .delete_many(vec![ctx.key("k00000")])
        .await
        .check("delete of a missing key")?;
    ensure!(
        again.is_empty(),
        "deleting a missing key failed: {}",
        again.first().map(|(_, e)| describe(e)).unwrap_or_default()
    );
    Ok(())
}

async fn list_delimiter(ctx: Ctx) -> CaseResult {
    for k in ["a", "b/c", "b/d", "b/e/f", "m/n"] {
        ctx.storage
            .put(&ctx.key(k), Bytes::from_static(b"1"), PutMode::Overwrite)
            .await
            .check("put")?;
    }
    let items = list_keys(&ctx, &ctx.dir, true).await?;
    let objects: BTreeSet<String> = items
        .iter()
        .filter_map(|i| match i {
            ListItem::Object(m) => Some(m.key.as_str().to_owned()),
            _ => None,
        })
        .collect();
    let prefixes: BTreeSet<String> = items
        .iter()
        .filter_map(|i| match i {
            ListItem::Prefix(p) => Some(p.as_str().to_owned()),
            _ => None,
        })
        .collect();
    let want_objects: BTreeSet<String> = [ctx.key("a").into_string()].into();
    let want_prefixes: BTreeSet<String> =
        [ctx.key("b/").into_string(), ctx.key("m/").into_string()].into();
    ensure!(
        objects == want_objects,
        "the delimited listing shows the objects {}, expected {}",
        names_text(&objects),
        names_text(&want_objects)
    );
    ensure!(
        prefixes == want_prefixes,
        "the delimited listing shows the common prefixes {}, expected {}",
        names_text(&prefixes),
        names_text(&want_prefixes)
    );
    let below = list_keys(&ctx, &format!("{}b/", ctx.dir), true).await?;
    let below: BTreeSet<String> = below.iter().map(|i| i.key().as_str().to_owned()).collect();
    let want: BTreeSet<String> = [ctx.key("b/c"), ctx.key("b/d"), ctx.key("b/e/")]
        .map(ObjectKey::into_string)
        .into();
    ensure!(
        below == want,
        "the listing of b/ shows {}, expected {}",
        names_text(&below),
        names_text(&want)
    );
    let all = list_keys(&ctx, &ctx.dir, false).await?;
    let files: BTreeSet<String> = all
        .iter()
        .map(|i| i.key().as_str().to_owned())
        .filter(|k| !k.ends_with('/'))
        .collect();
    let want_files: BTreeSet<String> = ["a", "b/c", "b/d", "b/e/f", "m/n"]
        .map(|k| ctx.key(k).into_string())
        .into();
    ensure!(
        files == want_files,
        "the recursive listing shows {}, expected {}",
        names_text(&files),
        names_text(&want_files)
    );
    Ok(())
}

async fn list_pagination(ctx: Ctx) -> CaseResult {
    let keys: Vec<ObjectKey> = (0..MANY).map(|i| ctx.key(&format!("p{i:05}"))).collect();
    put_many(&ctx, &keys).await?;
    for delimiter in [false, true] {
        let items = list_keys(&ctx, &ctx.dir, delimiter).await?;
        let got: Vec<&str> = items.iter().map(|i| i.key().as_str()).collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        ensure!(
            got.len() == MANY,
            "delimiter={delimiter}: listed {} keys, {MANY} were put",
            got.len()
        );
        ensure!(
            sorted.len() == MANY,
            "delimiter={delimiter}: the listing repeats keys"
        );
        ensure!(
            got == sorted,
            "delimiter={delimiter}: the listing is not in key order"
        );
    }
    let after = ctx.key("p00999");
    let rest: Vec<ListItem> = ctx
        .storage
        .list(
            &ObjectKey::from_raw(ctx.dir.clone()),
            ListOptions {
                delimiter: false,
                start_after: Some(after),
            },
        )
        .try_collect()
        .await
        .check("list with start_after")?;
    ensure!(
        rest.len() == MANY - 1000,
        "start_after p00999 listed {} keys, expected {}",
        rest.len(),
        MANY - 1000
    );
    Ok(())
}

/// Names S3 allows and clients get wrong: spaces, `+`, `%`, unicode, reserved URL characters.
const ODD_NAMES: [&str; 7] = [
    "with space",
    "plus+sign",
    "per%cent%2e%2e",
    "uni-\u{65e5}\u{672c}-\u{1F600}",
    "query?&=;",
    "back\\slash",
    "tilde~(paren)",
];

async fn odd_keys(ctx: Ctx) -> CaseResult {
    let keys: Vec<ObjectKey> = ODD_NAMES.iter().map(|n| ctx.key(n)).collect();
    round_trip(&ctx, &keys).await
}

/// A key of exactly 1,024 bytes (S3's limit), in segments of at most 200.
async fn longest_key(ctx: Ctx) -> CaseResult {
    let room = 1024 - ctx.dir.len();
    let mut rest = String::new();
    while rest.len() < room {
        if !rest.is_empty() {
            rest.push('/');
        }
        let n = (room - rest.len()).min(200);
        rest.push_str(&"L".repeat(n));
    }
    let key = ctx.key(&rest);
    ensure!(
        key.as_str().len() == 1024,
        "test bug: the key is {} bytes",
        key.as_str().len()
    );
    round_trip(&ctx, &[key]).await
}

/// Puts, reads back and lists `keys`, which must be exactly what is listed.
async fn round_trip(ctx: &Ctx, keys: &[ObjectKey]) -> CaseResult {
    for (i, k) in keys.iter().enumerate() {
        let name = short(k.as_str(), 120);
        let data = pattern(64 + i, i as u8);
        ctx.storage
            .put(k, data.clone(), PutMode::Overwrite)
            .await
            .check(&format!("put {name:?}"))?;
        let (_, body) = read_all(ctx, k, None)
            .await
            .map_err(|e| format!("{name:?}: {e}"))?;
        ensure!(body == data, "{name:?}: the bytes read back differ");
        let meta = ctx.storage.head(k).await.check(&format!("head {name:?}"))?;
        ensure!(
            meta.size == data.len() as u64,
            "{name:?}: head says {} bytes, {} were put",
            meta.size,
            data.len()
        );
        vouched_checksum_is_right(&meta, &data).map_err(|e| format!("{name:?}: {e}"))?;
    }
    let listed: BTreeSet<String> = list_keys(ctx, &ctx.dir, false)
        .await?
        .iter()
        .map(|i| i.key().as_str().to_owned())
        .filter(|k| !k.ends_with('/'))
        .collect();
    let want: BTreeSet<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
    let missing: Vec<_> = want.difference(&listed).map(|k| short(k, 120)).collect();
    let extra: Vec<_> = listed.difference(&want).map(|k| short(k, 120)).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "the listing lacks {} and shows {} too",
        names_text(&missing),
        names_text(&extra)
    );
    Ok(())
}

const PART: usize = 5 << 20;

async fn multipart_complete(ctx: Ctx) -> CaseResult {
    let key = ctx.key("multipart.bin");
    let upload = ctx
        .storage
        .create_multipart(&key)
        .await
        .check("create multipart")?;
    let mut parts = Vec::new();
    let mut whole = Vec::with_capacity(3 * PART);
    // Uploaded out of order, as a transfer protocol may deliver them.
    for n in [2u32, 1, 3] {
        let data = pattern(PART, n as u8);
        parts.push(
            ctx.storage
                .upload_part(&key, &upload, n, data)
                .await
                .check(&format!("upload part {n}"))?,
        );
    }
    for n in 1..=3u8 {
        whole.extend_from_slice(&pattern(PART, n));
    }
    ctx.storage
        .complete_multipart(&key, &upload, parts)
        .await
        .check("complete")?;
    let meta = ctx.storage.head(&key).await.check("head")?;
    ensure!(
        meta.size == 3 * PART as u64,
        "completed object has {} bytes, expected {}",
        meta.size,
        3 * PART
    );
    let (range, body) = read_all(
        &ctx,
        &key,
        Some(ByteRange::Bounded(PART as u64 - 10..PART as u64 + 10)),
    )
    .await?;
    ensure!(
        body == whole[PART - 10..PART + 10],
        "the bytes across the part boundary differ (bytes {}..{})",
        range.start,
        range.end
    );
    let (_, body) = read_all(&ctx, &key, None).await?;
    ensure!(body == whole, "the completed object differs from its parts");
    vouched_checksum_is_right(&meta, &whole)?;
    Ok(())
}

async fn multipart_abort(ctx: Ctx) -> CaseResult {
    let key = ctx.key("aborted.bin");
    let upload = ctx
        .storage
        .create_multipart(&key)
        .await
        .check("create multipart")?;
    let part = ctx
        .storage
        .upload_part(&key, &upload, 1, pattern(PART, 9))
        .await
        .check("upload part")?;
    ctx.storage
        .abort_multipart(&key, &upload)
        .await
        .check("abort")?;
    if ctx
        .storage
        .complete_multipart(&key, &upload, vec![part])
        .await
        .is_ok()
    {
        return Err("completing an aborted upload succeeded".to_owned());
    }
    match ctx.storage.head(&key).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => {
            return Err(format!(
                "an aborted upload left an object: its HEAD gave {}",
                result_text(&other)
            ));
        }
    }
    let listed = list_keys(&ctx, &ctx.dir, false).await?;
    ensure!(
        listed.is_empty(),
        "an aborted upload left entries in the listing: {}",
        items_text(&listed)
    );
    if ctx.caps.list_pending_uploads {
        let pending = ctx
            .storage
            .list_pending_uploads(&ObjectKey::from_raw(ctx.dir.clone()))
            .await
            .check("list pending")?;
        ensure!(
            pending.is_empty(),
            "the aborted upload is still pending: {}",
            uploads_text(&pending)
        );
    }
    Ok(())
}

async fn list_pending_uploads(ctx: Ctx) -> CaseResult {
    let key = ctx.key("pending.bin");
    let dir = ObjectKey::from_raw(ctx.dir.clone());
    let upload = ctx
        .storage
        .create_multipart(&key)
        .await
        .check("create multipart")?;
    let pending = ctx
        .storage
        .list_pending_uploads(&dir)
        .await
        .check("list pending")?;
    let found = pending
        .iter()
        .any(|u| u.key == key && u.upload_id == upload);
    let outside = pending
        .iter()
        .any(|u| !u.key.as_str().starts_with(&ctx.dir));
    ctx.storage
        .abort_multipart(&key, &upload)
        .await
        .check("abort")?;
    ensure!(
        found,
        "the new upload {upload} is not listed; the server lists {}",
        uploads_text(&pending)
    );
    ensure!(
        !outside,
        "uploads outside the prefix were listed: {}",
        uploads_text(&pending)
    );
    let after = ctx
        .storage
        .list_pending_uploads(&dir)
        .await
        .check("list pending after abort")?;
    ensure!(
        after.is_empty(),
        "still pending after abort: {}",
        uploads_text(&after)
    );
    Ok(())
}

/// What a resumed upload relies on: another process finds the upload,
/// learns which parts are stored and how big, and completes it from that
/// list alone, adding the part that was missing.
async fn continue_upload(ctx: Ctx) -> CaseResult {
    let key = ctx.key("continued.bin");
    let dir = ObjectKey::from_raw(ctx.dir.clone());
    let upload = ctx
        .storage
        .create_multipart(&key)
        .await
        .check("create multipart")?;
    for n in 1..=2u32 {
        ctx.storage
            .upload_part(&key, &upload, n, pattern(PART, n as u8))
            .await
            .check("upload part")?;
    }
    let result = async {
        let pending = ctx
            .storage
            .list_pending_uploads(&dir)
            .await
            .check("list pending")?;
        let found = pending
            .iter()
            .find(|u| u.key == key)
            .ok_or_else(|| format!("the upload is not listed: {}", uploads_text(&pending)))?;
        let stored = ctx
            .storage
            .list_parts(&key, &found.upload_id)
            .await
            .check("list parts")?;
        let seen: Vec<(u32, u64)> = stored.iter().map(|p| (p.number, p.size)).collect();
        ensure!(
            seen == vec![(1, PART as u64), (2, PART as u64)],
            "the stored parts are listed as {seen:?}, not parts 1 and 2 of {PART} bytes"
        );
        let last = ctx
            .storage
            .upload_part(&key, &found.upload_id, 3, Bytes::from_static(b"tail"))
            .await
            .check("upload the missing part")?;
        let mut parts: Vec<_> = stored.iter().map(|p| p.completed()).collect();
        parts.push(last);
        ctx.storage
            .complete_multipart(&key, &found.upload_id, parts)
            .await
            .check("complete from the listed parts")?;
        let meta = ctx.storage.head(&key).await.check("head")?;
        ensure!(
            meta.size == 2 * PART as u64 + 4,
            "the continued object has {} bytes, not {}",
            meta.size,
            2 * PART + 4
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = ctx.storage.abort_multipart(&key, &upload).await;
    }
    result
}

async fn conditional_create(ctx: Ctx) -> CaseResult {
    let key = ctx.key("once");
    ctx.storage
        .put(&key, Bytes::from_static(b"first"), PutMode::Create)
        .await
        .check("first create")?;
    match ctx
        .storage
        .put(&key, Bytes::from_static(b"second"), PutMode::Create)
        .await
    {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "second create: expected already exists, got {}",
                describe(&e)
            ));
        }
        Ok(_) => {
            return Err("a second create-if-absent succeeded (If-None-Match ignored)".to_owned());
        }
    }
    let (_, body) = read_all(&ctx, &key, None).await?;
    ensure!(body == b"first", "the refused create changed the object");
    Ok(())
}

/// Everything the sandbox rooted at `root` would show, and what it hid.
async fn visible(
    ctx: &Ctx,
    root: &SandboxRoot,
) -> Result<(Vec<VirtualPath>, HiddenCount, Vec<String>), String> {
    let items = list_keys(ctx, root.prefix(), false).await?;
    let mut hidden = HiddenCount::default();
    let mut shown = Vec::new();
    let mut outside = Vec::new();
    for i in &items {
        let key = i.key().as_str();
        if !key.starts_with(root.prefix()) {
            outside.push(short(key, 120));
        }
        match hidden.classify(root, key) {
            KeyClass::File(p) | KeyClass::Directory(p) => shown.push(p),
            KeyClass::RootMarker | KeyClass::Hidden(_) => {}
        }
    }
    Ok((shown, hidden, outside))
}

fn root_at(ctx: &Ctx, rest: &str) -> Result<SandboxRoot, String> {
    SandboxRoot::new(&format!("{}{rest}", ctx.dir)).map_err(|e| format!("test bug: {e}"))
}

/// Nothing outside a sandbox's prefix is listed, and deleting everything a
/// sandbox shows leaves objects planted beside it untouched.
async fn confinement(ctx: Ctx) -> CaseResult {
    let root = root_at(&ctx, "users/alice")?;
    for k in ["mine", "sub/deeper"] {
        let key = root
            .key_for(&VirtualPath::parse(k).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        ctx.storage
            .put(&key, Bytes::from_static(b"own"), PutMode::Overwrite)
            .await
            .check("put")?;
    }
    let mut beside = vec![
        "users/alice-evil/x",
        "users/bob/x",
        "users/alicex",
        "outside",
    ];
    for k in beside.clone() {
        ctx.storage
            .put(
                &ctx.key(k),
                Bytes::from_static(b"planted"),
                PutMode::Overwrite,
            )
            .await
            .check(&format!("plant {k}"))?;
    }
    // A file named like the sandbox's prefix: only object stores can hold it beside the directory.
    if ctx
        .storage
        .put(
            &ctx.key("users/alice"),
            Bytes::from_static(b"planted"),
            PutMode::Overwrite,
        )
        .await
        .is_ok()
    {
        beside.push("users/alice");
    }
    let (shown, hidden, outside) = visible(&ctx, &root).await?;
    ensure!(
        outside.is_empty(),
        "the server listed keys outside the requested prefix: {}",
        names_text(&outside)
    );
    ensure!(
        hidden.outside_prefix == 0,
        "keys outside the prefix reached the sandbox"
    );
    let mut names: Vec<String> = shown.iter().map(|p| p.as_str().to_owned()).collect();
    names.sort();
    // A backend with real directories also lists `sub` itself.
    names.retain(|n| n != "sub");
    ensure!(
        names == ["mine", "sub/deeper"],
        "the sandbox shows {}",
        names_text(&names)
    );
    // Remove what the sandbox shows, as a recursive remove does: the listed keys, deepest first.
    let mut keys: Vec<ObjectKey> = list_keys(&ctx, root.prefix(), false)
        .await?
        .into_iter()
        .map(|i| i.key().clone())
        .filter(|k| root.entry_for(k.as_str()).is_some())
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.as_str().len()));
    ctx.storage.delete_many(keys).await.check("delete")?;
    for k in &beside {
        ctx.storage
            .head(&ctx.key(k))
            .await
            .check(&format!("{k} planted beside the sandbox must survive"))?;
    }
    Ok(())
}

/// Objects named `.` or `..` (or with empty segments), planted by another
/// client, are never shown.
async fn dot_segments_hidden(ctx: Ctx) -> CaseResult {
    let root = root_at(&ctx, "sandbox")?;
    let mut planted = 0;
    for k in [
        "sandbox/a/../b",
        "sandbox/./c",
        "sandbox/..",
        "sandbox/d//e",
    ] {
        match ctx
            .storage
            .put(&ctx.key(k), Bytes::from_static(b"odd"), PutMode::Overwrite)
            .await
        {
            Ok(_) => planted += 1,
            Err(e) if e.kind() == ErrorKind::InvalidInput => {}
            Err(e) => return Err(format!("plant {k}: {}", describe(&e))),
        }
    }
    ctx.storage
        .put(
            &ctx.key("sandbox/ok"),
            Bytes::from_static(b"ok"),
            PutMode::Overwrite,
        )
        .await
        .check("put")?;
    let (shown, hidden, _) = visible(&ctx, &root).await?;
    let names: Vec<&str> = shown.iter().map(VirtualPath::as_str).collect();
    ensure!(names == ["ok"], "the sandbox shows {}", names_text(&names));
    ensure!(
        hidden.total == planted,
        "{planted} odd keys stored, {} hidden",
        hidden.total
    );
    if planted == 0 {
        // The backend refuses such names: nothing can be planted, nothing to hide.
        ctx.storage
            .delete_many(vec![ctx.key("sandbox/ok")])
            .await
            .check("delete")?;
    }
    Ok(())
}

/// Two users' `%u` prefixes see only their own files.
async fn users_isolated(ctx: Ctx) -> CaseResult {
    let template =
        PathTemplate::parse("path", &format!("{}users/%u", ctx.dir)).map_err(|e| e.to_string())?;
    let root_of = |user: &str| -> Result<SandboxRoot, String> {
        let expanded = template
            .expand(&Identity::user(user))
            .map_err(|e| e.to_string())?;
        SandboxRoot::new(&expanded).map_err(|e| e.to_string())
    };
    let (alice, al) = (root_of("alice")?, root_of("al")?);
    let path = VirtualPath::parse("/report.csv").map_err(|e| e.to_string())?;
    ctx.storage
        .put(
            &alice.key_for(&path).map_err(|e| e.to_string())?,
            Bytes::from_static(b"alice"),
            PutMode::Overwrite,
        )
        .await
        .check("put")?;
    let (shown, _, _) = visible(&ctx, &al).await?;
    ensure!(
        shown.is_empty(),
        "user `al` sees {} of user `alice`",
        names_text(shown.iter().map(VirtualPath::to_string))
    );
    match ctx
        .storage
        .head(&al.key_for(&path).map_err(|e| e.to_string())?)
        .await
    {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => Err(format!(
            "user `al` reaches alice's file: its HEAD gave {}",
            result_text(&other)
        )),
    }
}

/// A directory exists through its marker or a key below it, and a file of
/// the same name is shown once, as the directory.
async fn directory_emulation(ctx: Ctx) -> CaseResult {
    let root = root_at(&ctx, "home")?;
    let key = |p: &str| ctx.key(&format!("home/{p}"));
    ctx.storage
        .put(&key("empty/"), Bytes::new(), PutMode::Overwrite)
        .await
        .check("marker")?;
    ctx.storage
        .put(
            &key("full/file"),
            Bytes::from_static(b"1"),
            PutMode::Overwrite,
        )
        .await
        .check("put")?;
    // Only object stores can hold a file and a directory of one name.
    if ctx.caps.directory_markers {
        ctx.storage
            .put(&key("dup"), Bytes::from_static(b"f"), PutMode::Overwrite)
            .await
            .check("put")?;
        ctx.storage
            .put(
                &key("dup/inside"),
                Bytes::from_static(b"d"),
                PutMode::Overwrite,
            )
            .await
            .check("put")?;
    }
    // The rule the sandbox service lists with, fed this backend's listing.
    let items = list_keys(&ctx, root.prefix(), true).await?;
    let mut rule = DirectoryListing::new(root, VirtualPath::ROOT, Vec::new());
    let mut merged = Vec::new();
    for i in &items {
        merged.extend(rule.push(i));
    }
    merged.extend(rule.finish());
    merged.sort_by(|a, b| a.name.cmp(&b.name));
    let shown: Vec<String> = merged
        .iter()
        .map(|e| format!("{}{}", e.name, if e.is_dir() { "/" } else { "" }))
        .collect();
    let want = if ctx.caps.directory_markers {
        vec!["dup/", "empty/", "full/"]
    } else {
        vec!["empty/", "full/"]
    };
    ensure!(
        shown == want,
        "the home directory shows {}, expected {}",
        names_text(&shown),
        names_text(&want)
    );
    Ok(())
}

/// A rename moves the bytes and removes the source.
async fn rename(ctx: Ctx) -> CaseResult {
    let (a, b) = (ctx.key("a.bin"), ctx.key("moved/b.bin"));
    let data = pattern(70_000, 5);
    ctx.storage
        .put(&a, data.clone(), PutMode::Overwrite)
        .await
        .check("put")?;
    ctx.storage.rename(&a, &b).await.check("rename")?;
    let (_, body) = read_all(&ctx, &b, None).await?;
    ensure!(body == data, "the renamed object differs");
    match ctx.storage.head(&a).await {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => Err(format!(
            "the source is still there after rename: its HEAD gave {}",
            result_text(&other)
        )),
    }
}
