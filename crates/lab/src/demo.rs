//! The crypto demo: every step of a call's cryptography, printed as it happens.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use oracle_calls_crypto::frame::{
    Decrypted, FrameDecryptor, FrameEncryptor, FrameKind, KeyRing, KeyRingOptions,
};
use oracle_calls_crypto::{
    CallContext, CallKey, EnvelopeError, KeyDerivation, KeyScheme, OpenedKey, OracleKeyPair, open,
    seal,
};
use oracle_calls_proto::{CallType, Did, RoomName, SessionId};

pub fn run(scheme: KeyScheme) -> anyhow::Result<()> {
    let mut rng = rand::rng();
    println!("oracle-calls crypto demo ({scheme})\n");

    let t = Instant::now();
    let oracle = OracleKeyPair::generate(scheme, &mut rng).context("generating the oracle key")?;
    step(
        t,
        "oracle key pair generated",
        &format!("key id {}", oracle.key_id()),
    );

    let mut room = [0u8; 16];
    rand::RngExt::fill(&mut rng, &mut room);
    let ctx = CallContext::new(
        SessionId::parse("demo-session-1")?,
        RoomName::from_random(room),
        Did::parse("did:ixo:demo-user")?,
        Did::parse("did:ixo:demo-oracle")?,
        CallType::Audio,
    );
    println!(
        "  call context: session {}, room {}, user {}, oracle {}, {}",
        ctx.session_id(),
        ctx.room_name(),
        ctx.user_did(),
        ctx.oracle_did(),
        ctx.call_type()
    );

    let t = Instant::now();
    let call_key = CallKey::generate(&mut rng);
    step(
        t,
        "call key made on the user's device",
        "32 bytes from the OS CSPRNG (never printed)",
    );

    let t = Instant::now();
    let envelope = seal(&oracle.public_key(), &call_key, &ctx, &mut rng).context("sealing")?;
    let shown: String = envelope.as_str().chars().take(48).collect();
    step(
        t,
        "call key wrapped to the oracle's public key",
        &format!("{shown}… ({} chars)", envelope.as_str().len()),
    );

    let t = Instant::now();
    let opened = match open(&oracle, &envelope, &ctx).context("opening")? {
        OpenedKey::Bound(k) => k,
        OpenedKey::Unbound(_) => anyhow::bail!("a v1 envelope opened unbound"),
    };
    ensure!(
        opened.ct_eq(&call_key),
        "opened key differs from the sealed one"
    );
    step(
        t,
        "agent opened the envelope",
        "same key, bound to this call",
    );

    let other = CallContext::new(
        SessionId::parse("another-session")?,
        ctx.room_name().clone(),
        ctx.user_did().clone(),
        ctx.oracle_did().clone(),
        CallType::Audio,
    );
    let refused = open(&oracle, &envelope, &other);
    ensure!(
        matches!(refused, Err(EnvelopeError::ContextMismatch)),
        "the envelope opened under another call's context"
    );
    println!(
        "  ✓ the same envelope is refused in another call: {}",
        EnvelopeError::ContextMismatch
    );

    let t = Instant::now();
    let user_ring =
        KeyRing::with_call_key(&call_key, KeyDerivation::Hkdf, KeyRingOptions::default())?;
    let agent_ring =
        KeyRing::with_call_key(&opened, KeyDerivation::Hkdf, KeyRingOptions::default())?;
    step(
        t,
        "media keys derived on both sides",
        "HKDF-SHA256 → AES-128-GCM (LiveKit's keyring)",
    );

    let mut tx = FrameEncryptor::new(user_ring, &mut rng);
    let mut rx = FrameDecryptor::new(agent_ring);
    let opus: Vec<u8> = std::iter::once(0xfc)
        .chain((0u8..119).map(|i| i.wrapping_mul(37)))
        .collect();
    let t = Instant::now();
    let sealed = tx.encrypt(FrameKind::Audio, &opus)?;
    let got = rx.decrypt(FrameKind::Audio, &sealed)?;
    ensure!(
        got == Decrypted::Frame(opus.clone()),
        "frame did not round-trip"
    );
    step(
        t,
        "Opus frame encrypted by the user, decrypted by the agent",
        &format!(
            "{} → {} bytes (TOC byte clear, trailer IV|0x0c|key index 0)",
            opus.len(),
            sealed.len()
        ),
    );

    let stranger = CallKey::generate(&mut rng);
    let mut eve = FrameDecryptor::new(KeyRing::with_call_key(
        &stranger,
        KeyDerivation::Hkdf,
        KeyRingOptions::default(),
    )?);
    ensure!(
        eve.decrypt(FrameKind::Audio, &sealed).is_err(),
        "a stranger decrypted the frame"
    );
    println!(
        "  ✓ a participant with another key cannot decrypt it ({} failure counted)",
        eve.stats().failed
    );

    println!("\nall checks passed");
    Ok(())
}

fn step(t: Instant, what: &str, detail: &str) {
    println!(
        "  ✓ {what:<58} {:>8.2} ms  {detail}",
        t.elapsed().as_secs_f64() * 1e3
    );
}
