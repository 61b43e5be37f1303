//! `oracle-calls apikey create|list|revoke`: agent API keys in the server's store.

use std::path::Path;

use anyhow::Context as _;
use oracle_calls_proto::Did;
use oracle_calls_server::store::Store;
use oracle_calls_server::{apikey, now};

/// What to do.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Create a key for one oracle and print it once (it is stored only as a keyed hash).
    Create {
        /// The oracle DID the key may act for.
        #[arg(long)]
        oracle: String,
        /// A note for operators.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List keys (ids, oracles, labels, state; never the keys).
    List,
    /// Revoke a key by its id.
    Revoke {
        /// The key id (the hex part after `ocak_`).
        key_id: String,
    },
}

pub fn run(config: &Path, action: Action) -> anyhow::Result<()> {
    let (cfg, secrets) = crate::serve::load(config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        std::fs::create_dir_all(&cfg.data_dir).context("creating data_dir")?;
        let store = Store::connect(cfg.store_url(&secrets)?.dangerous_expose())
            .await
            .context("opening the store")?;
        let now_ms = now().unix_millis();
        match action {
            Action::Create { oracle, label } => {
                let did = Did::parse(&oracle).context("--oracle")?;
                let k =
                    apikey::create(&store, &secrets.api_key_pepper, did, &label, now_ms).await?;
                println!("key id: {}", k.record.key_id);
                println!("oracle: {}", k.record.oracle_did);
                println!("api key (shown once): {}", k.key.dangerous_expose());
            }
            Action::List => {
                for k in store.api_keys().await? {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!("{}  {}  {}  {}", k.key_id, k.oracle_did, state, k.label);
                }
            }
            Action::Revoke { key_id } => {
                if store.revoke_api_key(&key_id, now_ms).await? {
                    println!("revoked {key_id}");
                } else {
                    anyhow::bail!("no active key with id {key_id}");
                }
            }
        }
        Ok(())
    })
}
