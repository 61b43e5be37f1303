//! The oracle's prekeys (docs/PROTOCOL.md §13): the private halves in the key holder's store,
//! the signed public halves on the server, and opening the outer layer of a call's `v2`
//! envelope with the prekey it names.
//!
//! The store is a directory (0700) with one file (0600, created exclusively) per prekey:
//! `<id hex>.one-time` or `<id hex>.last-resort`, holding the 32-byte X25519 secret. Several
//! agent processes of one host may share it: a one-time prekey is taken by renaming its file
//! (atomic, so exactly one process gets it), and destroyed — overwritten, synced and removed —
//! as soon as its layer opened. If the layer does not open, the file is put back.
//!
//! Opening the outer layer yields the inner `v1` envelope, still sealed to the oracle's
//! long-term key: the store alone opens no call, and the long-term key alone opens no call
//! whose prekey was destroyed (docs/SECURITY.md, "forward secrecy").
//!
//! While a call sealed to a one-time prekey runs, the store keeps its inner envelope in
//! `<id hex>.live` (0600: the outer envelope's text, a newline, the inner one's), so that an
//! agent dispatched again after the first one died can rejoin the call: the same outer
//! envelope gets the same inner one. The agent that served the call removes the file
//! (overwritten, synced) when its job ends; a file left by an agent that died is removed
//! once older than [`LIVE_MAX_AGE`]. Forward secrecy then holds from the call's end on.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use oracle_calls_crypto::{
    CallContext, Did, KeyEnvelope, Prekey, PrekeyId, PrekeySecret, PrekeySigningKey, Recipient,
    SignedPrekey,
};
use oracle_calls_proto::PrekeyStock;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::ServerApi;
use crate::api::ApiError;

/// The file suffix of a one-time prekey.
const ONE_TIME: &str = "one-time";
/// The file suffix of a last-resort prekey.
const LAST_RESORT: &str = "last-resort";
/// The file suffix of a running call's inner envelope.
const LIVE: &str = "live";
/// How long a running call's inner envelope is kept at most (longer than the server serves
/// a call's key: `validation.max_call_age_secs`, one hour by default).
pub const LIVE_MAX_AGE: Duration = Duration::from_secs(2 * 3600);

/// Why the key holder could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrekeyError {
    /// The store could not be read or written.
    #[error("prekey store {path}: {reason}")]
    Store {
        /// The file or directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The envelope names a prekey this store does not hold (never made here, or already
    /// used and destroyed).
    #[error(
        "the call key is sealed to prekey {0}, which this key holder does not hold (used already, or made elsewhere)"
    )]
    Unknown(String),
    /// The envelope is not sealed to a prekey.
    #[error("the envelope is not sealed to a prekey")]
    NotPrekeyEnvelope,
    /// The prekey layer did not open (tampered, another call, or a malformed envelope).
    #[error("the prekey layer did not open: {0}")]
    Open(String),
    /// Publishing to the server failed.
    #[error("publishing prekeys: {0}")]
    Publish(#[from] ApiError),
}

/// The key holder's store of prekey private halves (see the module docs).
#[derive(Debug)]
pub struct PrekeyStore {
    dir: PathBuf,
}

impl PrekeyStore {
    /// Opens (creating, mode 0700) the store at `dir`.
    ///
    /// # Errors
    /// [`PrekeyError::Store`].
    pub fn open(dir: &Path) -> Result<Self, PrekeyError> {
        std::fs::create_dir_all(dir).map_err(|e| store_err(dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| store_err(dir, e))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &PrekeyId, kind: &str) -> PathBuf {
        self.dir.join(format!("{}.{kind}", id.to_hex()))
    }

    /// Makes `count` new prekeys (one-time, or last-resort), stores their private halves and
    /// answers their signed public halves, ready to publish.
    ///
    /// # Errors
    /// [`PrekeyError::Store`]; prekeys stored before the failure are removed again.
    pub fn generate(
        &self,
        count: usize,
        last_resort: bool,
        signer: &PrekeySigningKey,
        oracle: &Did,
    ) -> Result<Vec<SignedPrekey>, PrekeyError> {
        let mut rng = rand::rng();
        let mut made = Vec::with_capacity(count);
        for _ in 0..count {
            let prekey = Prekey::generate(last_resort, &mut rng);
            let path = self.path(&prekey.id, kind(last_resort));
            if let Err(e) = write_secret(&path, prekey.secret.to_bytes().as_slice()) {
                self.forget(&made);
                return Err(store_err(&path, e));
            }
            made.push(prekey.sign(signer, oracle));
        }
        Ok(made)
    }

    /// Removes the private halves of prekeys that were made but could not be published.
    pub fn forget(&self, prekeys: &[SignedPrekey]) {
        for p in prekeys {
            if let Ok(id) = PrekeyId::parse(&p.prekey_id) {
                destroy(&self.path(&id, kind(p.last_resort)));
            }
        }
    }

    /// Whether the store holds the prekey `id` (one-time or last-resort).
    pub fn holds(&self, id: &PrekeyId) -> bool {
        self.path(id, ONE_TIME).exists()
            || self.path(id, LAST_RESORT).exists()
            || self.path(id, LIVE).exists()
    }

    /// The inner envelope kept for the running call of `envelope` (see the module docs):
    /// only for that very outer envelope, only while younger than [`LIVE_MAX_AGE`].
    fn live_inner(&self, id: &PrekeyId, envelope: &KeyEnvelope) -> Option<KeyEnvelope> {
        let path = self.path(id, LIVE);
        let age = SystemTime::now()
            .duration_since(std::fs::metadata(&path).ok()?.modified().ok()?)
            .unwrap_or_default();
        if age > LIVE_MAX_AGE {
            return None;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let (outer, inner) = text.split_once('\n')?;
        (outer == envelope.as_str())
            .then(|| KeyEnvelope::parse(inner).ok())
            .flatten()
    }

    /// The call of `envelope` is over here: its kept inner envelope, if any, is destroyed.
    pub fn call_over(&self, envelope: &KeyEnvelope) {
        if let Ok(id) = prekey_of(envelope) {
            let path = self.path(&id, LIVE);
            if self.live_inner(&id, envelope).is_some() {
                destroy(&path);
                info!(prekey = %id, "the call is over: its kept inner envelope is destroyed");
            }
        }
    }

    /// Destroys kept inner envelopes older than [`LIVE_MAX_AGE`] (their agents died).
    pub fn sweep_live(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for e in dir.filter_map(Result::ok) {
            if !e.file_name().to_string_lossy().ends_with(LIVE) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > LIVE_MAX_AGE);
            if old {
                destroy(&e.path());
                n += 1;
            }
        }
        n
    }

    /// Opens the prekey layer of a `v2` envelope without using the prekey up, to read whom
    /// the inner envelope is sealed to (an agent of the pool that does not hold that key
    /// leaves the call, and its prekey, to another).
    ///
    /// # Errors
    /// As [`PrekeyStore::open_layer`].
    pub fn peek_layer(
        &self,
        envelope: &KeyEnvelope,
        context: &CallContext,
    ) -> Result<KeyEnvelope, PrekeyError> {
        let id = prekey_of(envelope)?;
        let (path, last_resort) = match self.path(&id, LAST_RESORT) {
            p if p.exists() => (p, true),
            _ => (self.path(&id, ONE_TIME), false),
        };
        let prekey = match read_prekey(&path, id, last_resort) {
            Ok(p) => p,
            Err(_) if !path.exists() => {
                return self
                    .live_inner(&id, envelope)
                    .ok_or_else(|| PrekeyError::Unknown(id.to_string()));
            }
            Err(e) => return Err(e),
        };
        open_with(&prekey, envelope, context)
    }

    /// Opens the prekey layer of a `v2` envelope and answers the inner `v1` envelope (still
    /// sealed to the oracle's long-term key). A one-time prekey is destroyed once its layer
    /// opened; if it does not open, the prekey is kept.
    ///
    /// # Errors
    /// [`PrekeyError::NotPrekeyEnvelope`], [`PrekeyError::Unknown`], [`PrekeyError::Open`],
    /// [`PrekeyError::Store`].
    pub fn open_layer(
        &self,
        envelope: &KeyEnvelope,
        context: &CallContext,
    ) -> Result<KeyEnvelope, PrekeyError> {
        let id = prekey_of(envelope)?;
        // The last-resort prekey is kept: opening it is what a peek does.
        if self.path(&id, LAST_RESORT).exists() {
            return self.peek_layer(envelope, context);
        }
        // A one-time prekey is taken: only the process whose rename succeeds may use it.
        let path = self.path(&id, ONE_TIME);
        let taken = self.dir.join(format!(
            "{}.opening-{}-{:016x}",
            id.to_hex(),
            std::process::id(),
            rand::random::<u64>()
        ));
        match std::fs::rename(&path, &taken) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Used already: by this call's first agent, if it is this call again.
                return match self.live_inner(&id, envelope) {
                    Some(inner) => {
                        info!(prekey = %id, "the call's kept inner envelope serves an agent dispatched again");
                        Ok(inner)
                    }
                    None => Err(PrekeyError::Unknown(id.to_string())),
                };
            }
            Err(e) => return Err(store_err(&path, e)),
        }
        let opened =
            read_prekey(&taken, id, false).and_then(|prekey| open_with(&prekey, envelope, context));
        match &opened {
            Ok(inner) => {
                // Kept for an agent dispatched again, until the call is over.
                let live = self.path(&id, LIVE);
                let _ = std::fs::remove_file(&live);
                if let Err(e) = write_secret(
                    &live,
                    format!("{}\n{}", envelope.as_str(), inner.as_str()).as_bytes(),
                ) {
                    warn!(prekey = %id, error = %e, "could not keep the inner envelope; a dispatch after a crash cannot rejoin");
                }
                destroy(&taken);
                info!(prekey = %id, "one-time prekey used and destroyed");
            }
            Err(e) => {
                warn!(prekey = %id, error = %e, "the prekey layer did not open; the prekey is kept");
                if let Err(e) = std::fs::rename(&taken, &path) {
                    warn!(prekey = %id, error = %e, "could not put the prekey back");
                }
            }
        }
        opened
    }

    /// The age of the newest last-resort prekey, `None` when there is none.
    fn newest_last_resort_age(&self) -> Option<Duration> {
        self.last_resorts().into_iter().map(|(_, age)| age).min()
    }

    /// The last-resort prekey files with their ages.
    fn last_resorts(&self) -> Vec<(PathBuf, Duration)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(LAST_RESORT))
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                let age = SystemTime::now()
                    .duration_since(modified)
                    .unwrap_or_default();
                Some((e.path(), age))
            })
            .collect()
    }
}

/// How the key holder keeps the server stocked with prekeys.
#[derive(Clone, Copy, Debug)]
pub struct StockPolicy {
    /// Publish more when fewer one-time prekeys than this are left on the server.
    pub low_water: u64,
    /// Publish up to this many one-time prekeys.
    pub target: u64,
    /// Replace the last-resort prekey when it is older than this (calls sealed to it have
    /// forward secrecy only from its destruction on).
    pub last_resort_max_age: Duration,
}

impl Default for StockPolicy {
    fn default() -> Self {
        Self {
            low_water: 20,
            target: 100,
            last_resort_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Checks what the server holds and publishes what is missing: one-time prekeys up to
/// `policy.target` when fewer than `policy.low_water` are left, and a new last-resort prekey
/// when there is none or it is too old (the one before it is destroyed one period later).
///
/// # Errors
/// [`PrekeyError::Store`], [`PrekeyError::Publish`]; prekeys that could not be published are
/// removed from the store again.
pub async fn replenish(
    store: &PrekeyStore,
    signer: &PrekeySigningKey,
    oracle: &Did,
    server: &ServerApi,
    policy: &StockPolicy,
) -> Result<PrekeyStock, PrekeyError> {
    let mut stock = server.prekey_stock().await?;
    let rotate = match store.newest_last_resort_age() {
        None => true,
        Some(age) => age > policy.last_resort_max_age,
    };
    if !stock.last_resort || rotate {
        let made = store.generate(1, true, signer, oracle)?;
        stock = publish(store, server, made).await?;
        info!("published a new last-resort prekey");
        // Clients may still seal to the one before for a while: keep it one more period.
        for (path, age) in store.last_resorts() {
            if age > policy.last_resort_max_age.saturating_mul(2) {
                destroy(&path);
            }
        }
    }
    let swept = store.sweep_live();
    if swept > 0 {
        info!(
            swept,
            "destroyed inner envelopes kept for calls older than the limit"
        );
    }
    if stock.one_time < policy.low_water {
        // Batches of at most 100 (the server's limit per request), bounded in number.
        for _ in 0..10 {
            if stock.one_time >= policy.target {
                break;
            }
            let want = usize::try_from((policy.target - stock.one_time).min(100)).unwrap_or(100);
            let made = store.generate(want, false, signer, oracle)?;
            stock = publish(store, server, made).await?;
            info!(one_time = stock.one_time, "published one-time prekeys");
        }
    }
    Ok(stock)
}

async fn publish(
    store: &PrekeyStore,
    server: &ServerApi,
    made: Vec<SignedPrekey>,
) -> Result<PrekeyStock, PrekeyError> {
    match server.publish_prekeys(&made).await {
        Ok(stock) => Ok(stock),
        Err(e) => {
            store.forget(&made);
            Err(PrekeyError::Publish(e))
        }
    }
}

/// The prekey a `v2` envelope names.
fn prekey_of(envelope: &KeyEnvelope) -> Result<PrekeyId, PrekeyError> {
    match oracle_calls_crypto::recipient(envelope) {
        Ok(Recipient::Prekey { prekey_id, .. }) => Ok(prekey_id),
        Ok(_) => Err(PrekeyError::NotPrekeyEnvelope),
        Err(e) => Err(PrekeyError::Open(e.to_string())),
    }
}

/// Opens the prekey layer of `envelope` with `prekey`.
fn open_with(
    prekey: &Prekey,
    envelope: &KeyEnvelope,
    context: &CallContext,
) -> Result<KeyEnvelope, PrekeyError> {
    oracle_calls_crypto::open_prekey_layer(prekey, envelope, context)
        .map_err(|e| PrekeyError::Open(e.to_string()))
}

fn kind(last_resort: bool) -> &'static str {
    if last_resort { LAST_RESORT } else { ONE_TIME }
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> PrekeyError {
    PrekeyError::Store {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes a secret to a new file (never over an existing one), 0600, synced.
fn write_secret(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(secret)?;
    f.sync_all()
}

fn read_prekey(path: &Path, id: PrekeyId, last_resort: bool) -> Result<Prekey, PrekeyError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| store_err(path, e))?);
    let secret: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| store_err(path, "not a 32-byte prekey"))?;
    let secret = Zeroizing::new(secret);
    Ok(Prekey {
        id,
        secret: PrekeySecret::from_bytes(*secret),
        last_resort,
    })
}

/// Overwrites a prekey file with zeros, syncs it and removes it. Best effort: a file system
/// that keeps old blocks (copy-on-write, SSD remapping) may still hold the bytes
/// (docs/SECURITY.md states the limit).
fn destroy(path: &Path) {
    let wiped = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| {
            let len = usize::try_from(f.metadata()?.len()).unwrap_or(0).max(32);
            f.write_all(&vec![0u8; len])?;
            f.sync_all()
        });
    if let Err(e) = wiped {
        warn!(path = %path.display(), error = %e, "could not overwrite a prekey before removing it");
    }
    if let Err(e) = std::fs::remove_file(path) {
        warn!(path = %path.display(), error = %e, "could not remove a prekey");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use oracle_calls_crypto::{
        CallKey, CallType, KeyScheme, OpenedKey, OracleKeyPair, RoomName, SessionId, verify_prekey,
    };

    use super::*;

    fn ctx(session: &str) -> CallContext {
        CallContext::new(
            SessionId::parse(session).unwrap(),
            RoomName::parse("oc-00112233445566778899aabbccddeeff").unwrap(),
            Did::parse("did:ixo:user").unwrap(),
            Did::parse("did:ixo:oracle").unwrap(),
            CallType::Audio,
        )
    }

    fn temp_store() -> PrekeyStore {
        let dir = std::env::temp_dir().join(format!("oc-prekeys-{:016x}", rand::random::<u64>()));
        PrekeyStore::open(&dir).unwrap()
    }

    /// A store with `n` one-time prekeys and one last-resort prekey, their signed halves, the
    /// oracle's long-term key and its signing key.
    fn setup(
        n: usize,
    ) -> (
        PrekeyStore,
        Vec<SignedPrekey>,
        SignedPrekey,
        OracleKeyPair,
        PrekeySigningKey,
    ) {
        let mut rng = rand::rng();
        let store = temp_store();
        let signer = PrekeySigningKey::generate(&mut rng);
        let oracle = Did::parse("did:ixo:oracle").unwrap();
        let one_time = store.generate(n, false, &signer, &oracle).unwrap();
        let last = store.generate(1, true, &signer, &oracle).unwrap().remove(0);
        let lt = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
        (store, one_time, last, lt, signer)
    }

    fn seal_to(
        signed: &SignedPrekey,
        signer: &PrekeySigningKey,
        lt: &OracleKeyPair,
        ctx: &CallContext,
    ) -> (CallKey, KeyEnvelope) {
        let mut rng = rand::rng();
        let prekey = verify_prekey(
            signed,
            &signer.public_key(),
            &Did::parse("did:ixo:oracle").unwrap(),
        )
        .unwrap();
        let key = CallKey::generate(&mut rng);
        let env =
            oracle_calls_crypto::seal_with_prekey(&lt.public_key(), &prekey, &key, ctx, &mut rng)
                .unwrap();
        (key, env)
    }

    #[test]
    fn a_one_time_prekey_opens_once_and_is_destroyed() {
        let (store, one_time, _, lt, signer) = setup(3);
        let files = || std::fs::read_dir(store.dir()).unwrap().count();
        assert_eq!(files(), 4, "3 one-time + 1 last-resort, each a file");
        let (key, env) = seal_to(&one_time[1], &signer, &lt, &ctx("s"));
        let id = PrekeyId::parse(&one_time[1].prekey_id).unwrap();
        assert!(store.holds(&id));
        let inner = store.open_layer(&env, &ctx("s")).unwrap();
        let OpenedKey::Bound(opened) = oracle_calls_crypto::open(&lt, &inner, &ctx("s")).unwrap()
        else {
            panic!("unbound")
        };
        assert!(opened.ct_eq(&key));
        assert!(
            !store.path(&id, ONE_TIME).exists(),
            "the used prekey is gone"
        );
        // While the call runs, its inner envelope is kept for an agent dispatched again: the
        // same outer envelope gets the same inner one, any other envelope naming that prekey
        // gets nothing.
        assert_eq!(
            files(),
            4,
            "the used prekey's file is now the call's live file"
        );
        let again = store.open_layer(&env, &ctx("s")).unwrap();
        assert_eq!(again.as_str(), inner.as_str());
        assert_eq!(
            store.peek_layer(&env, &ctx("s")).unwrap().as_str(),
            inner.as_str()
        );
        let (_, other) = seal_to(&one_time[1], &signer, &lt, &ctx("s2"));
        for result in [
            store.open_layer(&other, &ctx("s2")),
            store.peek_layer(&other, &ctx("s2")),
        ] {
            match result {
                Err(PrekeyError::Unknown(_)) => {}
                r => panic!("another envelope under the used prekey: {r:?}"),
            }
        }
        // Once the call is over, nothing of it is left.
        store.call_over(&env);
        assert!(!store.holds(&id));
        assert_eq!(files(), 3, "nothing else removed, no leftovers");
        match store.open_layer(&env, &ctx("s")) {
            Err(PrekeyError::Unknown(_)) => {}
            other => panic!("an open after the call: {other:?}"),
        }
    }

    #[test]
    fn a_live_file_past_its_age_is_useless_and_swept() {
        let (store, one_time, _, lt, signer) = setup(1);
        let (_, env) = seal_to(&one_time[0], &signer, &lt, &ctx("s"));
        let id = PrekeyId::parse(&one_time[0].prekey_id).unwrap();
        store.open_layer(&env, &ctx("s")).unwrap();
        let live = store.path(&id, LIVE);
        let old = SystemTime::now() - LIVE_MAX_AGE - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&live)
            .unwrap()
            .set_modified(old)
            .unwrap();
        match store.open_layer(&env, &ctx("s")) {
            Err(PrekeyError::Unknown(_)) => {}
            other => panic!("a live file past its age: {other:?}"),
        }
        assert_eq!(store.sweep_live(), 1);
        assert!(!live.exists() && !store.holds(&id));
    }

    #[test]
    fn a_layer_that_does_not_open_keeps_the_prekey() {
        let (store, one_time, _, lt, signer) = setup(1);
        let (_, env) = seal_to(&one_time[0], &signer, &lt, &ctx("s"));
        // Another call's context: refused, and the prekey stays for the real call.
        assert!(matches!(
            store.open_layer(&env, &ctx("other")),
            Err(PrekeyError::Open(_))
        ));
        assert!(store.holds(&PrekeyId::parse(&one_time[0].prekey_id).unwrap()));
        assert!(store.open_layer(&env, &ctx("s")).is_ok());
        // A v1 envelope is not the store's business.
        let v1 = oracle_calls_crypto::seal(
            &lt.public_key(),
            &CallKey::generate(&mut rand::rng()),
            &ctx("s"),
            &mut rand::rng(),
        )
        .unwrap();
        assert!(matches!(
            store.open_layer(&v1, &ctx("s")),
            Err(PrekeyError::NotPrekeyEnvelope)
        ));
    }

    #[test]
    fn the_last_resort_prekey_is_kept() {
        let (store, _, last, lt, signer) = setup(0);
        for session in ["a", "b"] {
            let (_, env) = seal_to(&last, &signer, &lt, &ctx(session));
            assert!(store.open_layer(&env, &ctx(session)).is_ok());
        }
        assert!(store.holds(&PrekeyId::parse(&last.prekey_id).unwrap()));
    }

    #[test]
    fn racing_openers_of_one_prekey_get_it_exactly_once() {
        let (store, one_time, _, lt, signer) = setup(1);
        let (_, env) = seal_to(&one_time[0], &signer, &lt, &ctx("s"));
        let id = PrekeyId::parse(&one_time[0].prekey_id).unwrap();
        let store = std::sync::Arc::new(store);
        let inners: Vec<Option<String>> = (0..8)
            .map(|_| {
                let (store, env) = (store.clone(), env.clone());
                std::thread::spawn(move || {
                    store
                        .open_layer(&env, &ctx("s"))
                        .ok()
                        .map(|e| e.as_str().to_owned())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        // One rename took the prekey; openers after it got the very inner envelope it kept
        // for the call (those in between found neither): never a second opening of the layer.
        let got: std::collections::HashSet<&String> = inners.iter().flatten().collect();
        assert_eq!(got.len(), 1, "{inners:?}");
        assert!(!store.path(&id, ONE_TIME).exists());
        let leftovers = std::fs::read_dir(store.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".opening-")
            })
            .count();
        assert_eq!(leftovers, 0, "no taken prekey left behind");
        store.call_over(&env);
        assert!(!store.holds(&id));
    }

    #[test]
    fn a_prekey_envelope_to_a_key_this_agent_does_not_hold_leaves_the_prekey_to_the_pool() {
        use crate::HeldKeys;
        use crate::keys::{Opening, not_held, open_call_key};
        let (store, one_time, _, foreign, signer) = setup(1);
        let (key, env) = seal_to(&one_time[0], &signer, &foreign, &ctx("s"));
        let ours = HeldKeys::new(vec![
            OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rand::rng()).unwrap(),
        ])
        .unwrap();
        let id = PrekeyId::parse(&one_time[0].prekey_id).unwrap();
        // The agent without the inner key declines, and the prekey is not used up.
        assert!(not_held(&ours, Some(&store), &env, &ctx("s"), false).is_some());
        assert!(matches!(
            open_call_key(&ours, Some(&store), &env, &ctx("s"), false),
            Opening::NotHeld(_)
        ));
        assert!(store.holds(&id));
        // The agent of the pool that holds it opens the call, and then the prekey is gone.
        let theirs = HeldKeys::new(vec![foreign]).unwrap();
        assert!(not_held(&theirs, Some(&store), &env, &ctx("s"), false).is_none());
        match open_call_key(&theirs, Some(&store), &env, &ctx("s"), false) {
            Opening::Opened(k) => assert!(k.ct_eq(&key)),
            other => panic!("{other:?}"),
        }
        // (While the call runs the store keeps its inner envelope; once it is over, nothing.)
        store.call_over(&env);
        assert!(!store.holds(&id));
        // Without a store, or with one that lacks the prekey, it is another key holder's call.
        assert!(not_held(&theirs, None, &env, &ctx("s"), false).is_some());
        assert!(not_held(&theirs, Some(&store), &env, &ctx("s"), false).is_some());
    }

    #[cfg(unix)]
    #[test]
    fn the_store_is_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let (store, _, _, _, _) = setup(1);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        for e in std::fs::read_dir(store.dir()).unwrap() {
            assert_eq!(mode(&e.unwrap().path()), 0o600);
        }
    }
}
