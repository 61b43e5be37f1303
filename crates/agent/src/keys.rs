//! The oracle private keys an agent holds — one, or several while the oracle rotates its key
//! — and opening a call's envelope with the one it names.

use std::sync::Arc;

use oracle_calls_crypto::{
    CallContext, CallKey, EnvelopeError, KeyEnvelope, KeyId, KeyScheme, OpenedKey, OracleKeyPair,
    PrekeyId, Recipient,
};

use crate::prekeys::{PrekeyError, PrekeyStore};
use tracing::warn;

/// The oracle private keys this agent holds. `Debug` shows their schemes and key ids only.
#[derive(Clone)]
pub struct HeldKeys(Arc<[OracleKeyPair]>);

impl HeldKeys {
    /// The keys, in the order given; `None` when there are none. A key given twice is kept
    /// once.
    pub fn new(keys: Vec<OracleKeyPair>) -> Option<Self> {
        let mut unique: Vec<OracleKeyPair> = Vec::with_capacity(keys.len());
        for k in keys {
            if !unique.iter().any(|u| u.key_id() == k.key_id()) {
                unique.push(k);
            }
        }
        (!unique.is_empty()).then(|| Self(unique.into()))
    }

    /// The keys.
    pub fn iter(&self) -> impl Iterator<Item = &OracleKeyPair> {
        self.0.iter()
    }

    /// Which of our keys `envelope` is for, read from its clear header.
    pub(crate) fn for_envelope(&self, envelope: &KeyEnvelope) -> Choice<'_> {
        match oracle_calls_crypto::recipient(envelope) {
            Ok(Recipient::Key { scheme, key_id }) => self
                .iter()
                .find(|k| k.key_id() == key_id && k.scheme() == scheme)
                .map_or(Choice::NotHeld { scheme, key_id }, Choice::Held),
            Ok(Recipient::LegacySecp256k1) => Choice::Legacy(
                self.iter()
                    .filter(|k| k.scheme() == KeyScheme::EciesSecp256k1)
                    .collect(),
            ),
            // A recipient this crypto version does not know of: nobody here can say whose it is.
            Ok(_) => Choice::Unreadable(EnvelopeError::UnknownScheme),
            Err(e) => Choice::Unreadable(e),
        }
    }
}

impl std::fmt::Debug for HeldKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// Which held key an envelope is for.
pub(crate) enum Choice<'a> {
    /// A v1 envelope sealed to this key of ours.
    Held(&'a OracleKeyPair),
    /// A v1 envelope sealed to a key this agent does not hold (another agent may).
    NotHeld {
        /// The envelope's scheme.
        scheme: KeyScheme,
        /// The key id it names.
        key_id: KeyId,
    },
    /// A legacy envelope, which names no key: the secp256k1 keys we hold (maybe none).
    Legacy(Vec<&'a OracleKeyPair>),
    /// The envelope's text does not parse: broken for every agent.
    Unreadable(EnvelopeError),
}

/// What opening a call's envelope came to.
#[derive(Debug)]
pub(crate) enum Opening {
    /// The call key, bound to this call (or a legacy key accepted by configuration).
    Opened(CallKey),
    /// Sealed to a key this agent does not hold: not this agent's call to judge. It stays out
    /// and does not report the envelope as bad.
    NotHeld(String),
    /// The envelope does not open for this call with the key it names (or policy refuses
    /// it): the agent reports `keyDecryptionFailed`.
    Failed(String),
}

/// Why `envelope` is none of this agent's business — sealed to a key it does not hold, to a
/// prekey its store does not hold (or a legacy envelope, accepted, while it holds no secp256k1
/// key) — or `None` when it is.
///
/// For a prekey envelope the prekey layer is opened without using the prekey up (so
/// `context` is needed) to read which key the inner envelope names.
pub(crate) fn not_held(
    keys: &HeldKeys,
    prekeys: Option<&PrekeyStore>,
    envelope: &KeyEnvelope,
    context: &CallContext,
    accept_legacy: bool,
) -> Option<String> {
    if let Ok(Recipient::Prekey { scheme, prekey_id }) = oracle_calls_crypto::recipient(envelope) {
        if let Some(why) = prekey_not_held(keys, prekeys, scheme, &prekey_id) {
            return Some(why);
        }
        // A layer that does not open is the job's to report; an inner key we do not hold is
        // another agent's call.
        let inner = prekeys?.peek_layer(envelope, context).ok()?;
        return match keys.for_envelope(&inner) {
            Choice::NotHeld { scheme, key_id } => Some(not_held_reason(keys, scheme, key_id)),
            _ => None,
        };
    }
    match keys.for_envelope(envelope) {
        Choice::NotHeld { scheme, key_id } => Some(not_held_reason(keys, scheme, key_id)),
        Choice::Legacy(c) if accept_legacy && c.is_empty() => Some(legacy_not_held_reason(keys)),
        _ => None,
    }
}

/// Opens `envelope` with the held key it names, bound to `context`; a legacy envelope only
/// when `accept_legacy`, with each secp256k1 key held until one opens it.
///
/// A `v2` envelope is sealed to a prekey first: the prekey store opens that layer (and
/// destroys the one-time prekey), then the inner `v1` envelope opens with the held key it
/// names.
pub(crate) fn open_call_key(
    keys: &HeldKeys,
    prekeys: Option<&PrekeyStore>,
    envelope: &KeyEnvelope,
    context: &CallContext,
    accept_legacy: bool,
) -> Opening {
    if let Ok(Recipient::Prekey { scheme, prekey_id }) = oracle_calls_crypto::recipient(envelope) {
        if let Some(why) = prekey_not_held(keys, prekeys, scheme, &prekey_id) {
            return Opening::NotHeld(why);
        }
        let Some(store) = prekeys else {
            return Opening::NotHeld("no prekey store".to_owned());
        };
        // Whom the inner envelope is for, before the prekey is used up: a key this agent does
        // not hold leaves the prekey to the agent of the pool that holds it.
        if let Ok(inner) = store.peek_layer(envelope, context)
            && let Choice::NotHeld { scheme, key_id } = keys.for_envelope(&inner)
        {
            return Opening::NotHeld(not_held_reason(keys, scheme, key_id));
        }
        return match store.open_layer(envelope, context) {
            Ok(inner) => match oracle_calls_crypto::recipient(&inner) {
                // The inner envelope must be a v1 envelope to a key we hold: never a legacy
                // one, never another prekey layer.
                Ok(Recipient::Key { .. }) => open_call_key(keys, None, &inner, context, false),
                _ => Opening::Failed("the prekey layer holds no v1 envelope".to_owned()),
            },
            Err(PrekeyError::Unknown(why)) => Opening::NotHeld(why),
            Err(e) => Opening::Failed(e.to_string()),
        };
    }
    match keys.for_envelope(envelope) {
        Choice::Held(kp) => match oracle_calls_crypto::open(kp, envelope, context) {
            Ok(OpenedKey::Bound(k)) => Opening::Opened(k),
            Ok(_) => Opening::Failed("the envelope opened unbound to the call".to_owned()),
            Err(e) => Opening::Failed(format!("with key {}: {e}", kp.key_id())),
        },
        Choice::NotHeld { scheme, key_id } => {
            Opening::NotHeld(not_held_reason(keys, scheme, key_id))
        }
        Choice::Unreadable(e) => Opening::Failed(e.to_string()),
        Choice::Legacy(_) if !accept_legacy => Opening::Failed(
            "legacy envelope not bound to the call (accept_legacy_envelopes is off)".to_owned(),
        ),
        Choice::Legacy(candidates) if candidates.is_empty() => {
            Opening::NotHeld(legacy_not_held_reason(keys))
        }
        Choice::Legacy(candidates) => {
            let mut last = EnvelopeError::DecryptionFailed;
            for kp in candidates {
                match oracle_calls_crypto::open_legacy(kp, envelope) {
                    Ok(k) => {
                        warn!(key_id = %kp.key_id(),
                            "legacy envelope: the key is not bound to this call (accepted by configuration)");
                        return Opening::Opened(k);
                    }
                    Err(e) => last = e,
                }
            }
            Opening::Failed(format!("legacy envelope: {last}"))
        }
    }
}

/// Why a call sealed to prekey `id` (wrapping a `scheme` envelope) is not this agent's:
/// no prekey store, a store without that prekey, or no held key of that scheme.
fn prekey_not_held(
    keys: &HeldKeys,
    prekeys: Option<&PrekeyStore>,
    scheme: KeyScheme,
    id: &PrekeyId,
) -> Option<String> {
    match prekeys {
        None => Some(format!(
            "the call key is sealed to prekey {id}, and this agent has no prekey store"
        )),
        Some(store) if !store.holds(id) => Some(format!(
            "the call key is sealed to prekey {id}, which the prekey store {} does not hold",
            store.dir().display()
        )),
        Some(_) if !keys.iter().any(|k| k.scheme() == scheme) => Some(format!(
            "the call key is sealed (under a prekey) to a {scheme} key, and this agent holds {}",
            held_list(keys)
        )),
        Some(_) => None,
    }
}

fn not_held_reason(keys: &HeldKeys, scheme: KeyScheme, key_id: KeyId) -> String {
    format!(
        "the call key is sealed to {scheme} key {key_id}, which this agent does not hold \
         (it holds {})",
        held_list(keys)
    )
}

fn legacy_not_held_reason(keys: &HeldKeys) -> String {
    format!(
        "a legacy envelope needs a secp256k1 key, and this agent holds none (it holds {})",
        held_list(keys)
    )
}

fn held_list(keys: &HeldKeys) -> String {
    keys.iter()
        .map(|k| format!("{} {}", k.scheme(), k.key_id()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use oracle_calls_crypto::{CallType, Did, RoomName, SessionId, seal};
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

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

    fn key_pair(scheme: KeyScheme, rng: &mut StdRng) -> OracleKeyPair {
        OracleKeyPair::generate(scheme, rng).unwrap()
    }

    #[test]
    fn during_a_rotation_each_envelope_opens_with_the_key_it_names() {
        let mut rng = StdRng::seed_from_u64(1);
        let old = key_pair(KeyScheme::HpkeP256, &mut rng);
        let new = key_pair(KeyScheme::HpkeX25519, &mut rng);
        let (old_pub, new_pub) = (old.public_key(), new.public_key());
        let keys = HeldKeys::new(vec![old, new]).unwrap();
        for pk in [old_pub, new_pub] {
            let key = CallKey::generate(&mut rng);
            let env = seal(&pk, &key, &ctx("s"), &mut rng).unwrap();
            match open_call_key(&keys, None, &env, &ctx("s"), false) {
                Opening::Opened(k) => assert!(k.ct_eq(&key), "{}", pk.key_id()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_key_not_held_is_not_a_failure_but_a_held_key_that_fails_is() {
        let mut rng = StdRng::seed_from_u64(2);
        let ours = key_pair(KeyScheme::HpkeP256, &mut rng);
        let ours_pub = ours.public_key();
        let keys = HeldKeys::new(vec![ours]).unwrap();
        let key = CallKey::generate(&mut rng);
        // Sealed to another key of the same scheme, and to a key of another scheme.
        for scheme in [KeyScheme::HpkeP256, KeyScheme::EciesSecp256k1] {
            let other = key_pair(scheme, &mut rng);
            let env = seal(&other.public_key(), &key, &ctx("s"), &mut rng).unwrap();
            match open_call_key(&keys, None, &env, &ctx("s"), false) {
                Opening::NotHeld(why) => {
                    assert!(why.contains(&other.key_id().to_string()), "{why}");
                    assert!(why.contains(&ours_pub.key_id().to_string()), "{why}");
                }
                other => panic!("{scheme}: {other:?}"),
            }
        }
        // The availability check says the same before any job runs.
        let env = seal(
            &key_pair(KeyScheme::HpkeP256, &mut rng).public_key(),
            &key,
            &ctx("s"),
            &mut rng,
        )
        .unwrap();
        assert!(not_held(&keys, None, &env, &ctx("s"), false).is_some());
        let env = seal(&ours_pub, &key, &ctx("other"), &mut rng).unwrap();
        assert!(not_held(&keys, None, &env, &ctx("s"), false).is_none());
        // Sealed to our key for another call: ours to judge, and it fails.
        let env = seal(&ours_pub, &key, &ctx("other"), &mut rng).unwrap();
        match open_call_key(&keys, None, &env, &ctx("s"), false) {
            Opening::Failed(why) => assert!(why.contains("different call"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Sealed to our key and altered after the header: fails.
        let env = seal(&ours_pub, &key, &ctx("s"), &mut rng).unwrap();
        let mut text = env.as_str().to_owned();
        let last = text.pop().unwrap();
        text.push(if last == 'A' { 'B' } else { 'A' });
        let env = KeyEnvelope::parse(&text).unwrap();
        assert!(matches!(
            open_call_key(&keys, None, &env, &ctx("s"), false),
            Opening::Failed(_)
        ));
        // Unparseable text fails for everyone.
        let env = KeyEnvelope::parse("v9.hpke-p256.AAAA").unwrap();
        assert!(matches!(
            open_call_key(&keys, None, &env, &ctx("s"), false),
            Opening::Failed(_)
        ));
    }

    #[test]
    fn legacy_envelopes_need_the_setting_and_a_secp256k1_key() {
        let mut rng = StdRng::seed_from_u64(3);
        // Not a real legacy envelope: what matters is that nothing is tried.
        let legacy = KeyEnvelope::parse("3mJr7AoUXx2Wqd").unwrap();
        let p256 = HeldKeys::new(vec![key_pair(KeyScheme::HpkeP256, &mut rng)]).unwrap();
        assert!(matches!(
            open_call_key(&p256, None, &legacy, &ctx("s"), false),
            Opening::Failed(why) if why.contains("accept_legacy_envelopes is off")
        ));
        assert!(matches!(
            open_call_key(&p256, None, &legacy, &ctx("s"), true),
            Opening::NotHeld(why) if why.contains("secp256k1")
        ));
        assert!(not_held(&p256, None, &legacy, &ctx("s"), true).is_some());
        assert!(not_held(&p256, None, &legacy, &ctx("s"), false).is_none());
        let k1 = HeldKeys::new(vec![key_pair(KeyScheme::EciesSecp256k1, &mut rng)]).unwrap();
        assert!(matches!(
            open_call_key(&k1, None, &legacy, &ctx("s"), true),
            Opening::Failed(why) if why.contains("legacy")
        ));
    }

    #[test]
    fn a_key_given_twice_is_held_once_and_debug_shows_no_secret() {
        let mut rng = StdRng::seed_from_u64(4);
        let k = key_pair(KeyScheme::HpkeP256, &mut rng);
        let pem = k.to_pkcs8_pem().unwrap();
        let again = OracleKeyPair::from_pkcs8_pem(&pem).unwrap();
        let keys = HeldKeys::new(vec![k, again]).unwrap();
        assert_eq!(keys.iter().count(), 1);
        assert!(HeldKeys::new(Vec::new()).is_none());
        let dbg = format!("{keys:?}");
        assert!(
            dbg.contains("hpke-p256") && !dbg.contains("PRIVATE"),
            "{dbg}"
        );
    }
}
