//! How `itgctl` reaches NATS: the worker's own options (credentials, nkey, token, user and password, TLS),
//! from the worker's config file (`--config`), from flags or from the usual `NATS_*` variables. A flag (or
//! its variable) overrides the config's value, so one config serves every command and a flag tries another
//! credential.

use std::path::PathBuf;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Args as ClapArgs;

use crate::config::{Config, NatsConfig, TlsConfig};

/// The default server when neither a flag, a variable nor a config names one.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The connection options every subcommand takes.
#[derive(ClapArgs, Default)]
pub struct NatsArgs {
    /// The worker's config file: its `nats` and `jetstream` sections say how to connect (and `capacity`,
    /// `replay`, `reconcile` and `describe` read its resource managers). Flags below override it.
    #[arg(long, env = "ITG_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated [default: the config's nats.url, else nats://127.0.0.1:4222].
    #[arg(long, env = "NATS_URL", global = true)]
    nats_url: Option<String>,
    /// User name (with --nats-password).
    #[arg(long, env = "NATS_USER", global = true)]
    nats_user: Option<String>,
    /// Password; prefer the variable, which `ps` does not show.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true, global = true)]
    nats_password: Option<String>,
    /// Token; prefer the variable, which `ps` does not show.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, global = true)]
    nats_token: Option<String>,
    /// A file holding a user nkey seed (`SU...`).
    #[arg(long, env = "NATS_NKEY", global = true)]
    nats_nkey_seed_file: Option<PathBuf>,
    /// A credentials file (JWT and seed), as `nsc` writes it.
    #[arg(long, env = "NATS_CREDS", global = true)]
    nats_creds_file: Option<PathBuf>,
    /// Require TLS; implied by any --nats-tls-* file.
    #[arg(long, global = true)]
    nats_tls: bool,
    /// The CA that signed the server's certificate (else the system's roots).
    #[arg(long, env = "NATS_CA", global = true)]
    nats_tls_ca_file: Option<PathBuf>,
    /// A client certificate, for servers that verify clients (with --nats-tls-key-file).
    #[arg(long, env = "NATS_CERT", global = true)]
    nats_tls_cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, env = "NATS_KEY", global = true)]
    nats_tls_key_file: Option<PathBuf>,
    /// The JetStream domain to address [default: the config's jetstream.domain].
    #[arg(long, env = "NATS_JS_DOMAIN", global = true)]
    jetstream_domain: Option<String>,
}

impl NatsArgs {
    /// The worker's config with these flags applied to its `nats` and `jetstream` sections, or `None`
    /// without `--config`.
    ///
    /// # Errors
    /// The config file cannot be read or breaks a rule.
    pub(crate) fn config(&self) -> anyhow::Result<Option<Config>> {
        let Some(path) = &self.config else {
            return Ok(None);
        };
        let mut cfg = Config::load(path)?;
        cfg.nats = self.apply(cfg.nats);
        if let Some(d) = &self.jetstream_domain {
            cfg.jetstream.domain = Some(d.clone());
        }
        Ok(Some(cfg))
    }

    /// The worker's config, for the commands that need its resource managers.
    ///
    /// # Errors
    /// No `--config` was given, or it cannot be read.
    pub(crate) fn required_config(&self, command: &str) -> anyhow::Result<Config> {
        self.config()?.with_context(|| {
            format!(
                "itgctl {command} needs the worker's config: pass --config FILE or set ITG_CONFIG"
            )
        })
    }

    /// `base` with every option given on the command line (or in its variable) put over it.
    fn apply(&self, mut base: NatsConfig) -> NatsConfig {
        if let Some(u) = &self.nats_url {
            base.url = u.clone();
        }
        if self.nats_user.is_some() || self.nats_password.is_some() {
            base.user = self.nats_user.clone().or(base.user);
            base.password = self.nats_password.clone().or(base.password);
        }
        if let Some(t) = &self.nats_token {
            base.token = Some(t.clone());
        }
        if let Some(f) = &self.nats_nkey_seed_file {
            base.nkey_seed_file = Some(f.clone());
        }
        if let Some(f) = &self.nats_creds_file {
            base.creds_file = Some(f.clone());
        }
        let tls_flag = self.nats_tls
            || self.nats_tls_ca_file.is_some()
            || self.nats_tls_cert_file.is_some()
            || self.nats_tls_key_file.is_some();
        if tls_flag {
            let mut tls = base.tls.take().unwrap_or(TlsConfig {
                ca_file: None,
                cert_file: None,
                key_file: None,
            });
            tls.ca_file = self.nats_tls_ca_file.clone().or(tls.ca_file);
            tls.cert_file = self.nats_tls_cert_file.clone().or(tls.cert_file);
            tls.key_file = self.nats_tls_key_file.clone().or(tls.key_file);
            base.tls = Some(tls);
        }
        base
    }

    /// The options without a config file: flags and variables over the defaults.
    fn bare(&self) -> NatsConfig {
        self.apply(NatsConfig {
            url: DEFAULT_URL.to_owned(),
            connection_name: "itgctl".to_owned(),
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            creds_file: None,
            tls: None,
        })
    }

    /// Connects as the worker would and opens JetStream in its domain.
    ///
    /// # Errors
    /// The config cannot be read, or NATS refuses or cannot be reached (named, without secrets).
    pub(crate) async fn jetstream(&self) -> anyhow::Result<Connected> {
        let cfg = self.config()?;
        let (mut nats, domain, bucket) = match &cfg {
            Some(c) => (
                c.nats.clone(),
                c.jetstream.domain.clone(),
                c.jetstream.state_bucket.clone(),
            ),
            None => (
                self.bare(),
                self.jetstream_domain.clone(),
                "ITG_STATE".into(),
            ),
        };
        // The worker's own name would make this connection look like one more worker in the monitoring.
        nats.connection_name = "itgctl".to_owned();
        let client = crate::nats::connect(&nats).await?;
        let js = match &domain {
            Some(d) => jetstream::with_domain(client, d),
            None => jetstream::new(client),
        };
        Ok(Connected {
            js,
            bucket,
            config: cfg,
        })
    }
}

/// A JetStream context reached with the resolved options.
pub(crate) struct Connected {
    pub js: jetstream::Context,
    /// The KV bucket: the config's `jetstream.state_bucket`, else `ITG_STATE`.
    pub bucket: String,
    pub config: Option<Config>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_overrides_the_config_and_a_tls_file_requires_tls() {
        let args = NatsArgs {
            nats_token: Some("t".into()),
            nats_tls_ca_file: Some("/ca.pem".into()),
            ..NatsArgs::default()
        };
        let mut base = args.bare();
        assert_eq!(base.url, DEFAULT_URL);
        assert_eq!(base.token.as_deref(), Some("t"));
        assert_eq!(
            base.tls.as_ref().and_then(|t| t.ca_file.clone()),
            Some(PathBuf::from("/ca.pem"))
        );
        base.url = "tls://from-config:4222".into();
        base.user = Some("cfg-user".into());
        let only_password = NatsArgs {
            nats_password: Some("p".into()),
            ..NatsArgs::default()
        };
        let merged = only_password.apply(base);
        assert_eq!(merged.url, "tls://from-config:4222");
        assert_eq!(merged.user.as_deref(), Some("cfg-user"));
        assert_eq!(merged.password.as_deref(), Some("p"));
    }
}
