//! The connection: credentials, TLS and the server list, with every error naming the (redacted) URL.

use async_nats::ConnectOptions;
use itg_core::config::{self, NatsConfig};

/// A NATS or JetStream failure, naming what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server could not be reached or refused the credentials.
    #[error("cannot connect to NATS at {url}: {message}; check nats.url and the credentials")]
    Connect { url: String, message: String },
    /// A stream or consumer could not be created or read.
    #[error("JetStream {what}: {message}; check that the server runs with JetStream enabled")]
    JetStream { what: String, message: String },
    /// A call to the hub's JetStream failed at a site: the leaf-node link is down, or not up yet.
    #[error(
        "the hub (JetStream domain {hub}) cannot be reached over this site's leaf-node link: {what}: {message}; check the leaf node's remote to the hub and the WAN between them"
    )]
    Hub {
        hub: String,
        what: String,
        message: String,
    },
    /// A site's worker was given a resource manager that the hub already sources from another site.
    #[error(
        "resource manager {rm} is served at site {site}: the hub's ITG_REPLIES sources its replies from there, and a resource manager is served at one site only; remove it from resource_managers, or, to move it here, remove that source from the hub's ITG_REPLIES first"
    )]
    ServedElsewhere { rm: String, site: String },
}

pub(crate) fn js_err(what: impl Into<String>, e: impl std::fmt::Display) -> NatsError {
    NatsError::JetStream {
        what: what.into(),
        message: e.to_string(),
    }
}

/// Connects with the configured credentials and TLS.
///
/// # Errors
/// [`NatsError::Connect`] naming the URL.
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, NatsError> {
    let url = config::redacted_url(&cfg.url);
    // The client's own message may quote the URL, credentials included.
    let fail = |message: String| NatsError::Connect {
        message: config::redact_in(&message, &cfg.url),
        url: url.clone(),
    };
    let mut opts = ConnectOptions::new()
        .name(&cfg.connection_name)
        .connection_timeout(std::time::Duration::from_secs(5))
        .max_reconnects(None);
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if let Some(path) = &cfg.nkey_seed_file {
        let seed = std::fs::read_to_string(path).map_err(|e| {
            fail(format!(
                "reading nats.nkey_seed_file {}: {e}",
                path.display()
            ))
        })?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| fail(format!("reading nats.creds_file {}: {e}", path.display())))?;
    }
    if let Some(tls) = &cfg.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
            opts = opts.add_client_certificate(c.clone(), k.clone());
        }
    }
    let addrs = server_addrs(&cfg.url).map_err(fail)?;
    // The client never logs in with credentials written in a URL: use them, unless the config names others.
    let other_auth = cfg.user.is_some()
        || cfg.token.is_some()
        || cfg.nkey_seed_file.is_some()
        || cfg.creds_file.is_some();
    if !other_auth && let Some((user, password)) = url_credentials(&addrs) {
        opts = opts.user_and_password(user, password);
    }
    // The first connection is tried once, so a wrong URL, credential or certificate fails start-up at once
    // with the server's reason; once connected, the client reconnects for ever.
    opts.connect(addrs).await.map_err(|e| fail(e.to_string()))
}

/// The user and password of the first URL that holds them (`nats://user:password@host`), percent-decoded.
pub fn url_credentials(addrs: &[async_nats::ServerAddr]) -> Option<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    addrs.iter().find_map(|a| {
        let user = a.username()?;
        Some((decode(user), decode(a.password().unwrap_or_default())))
    })
}

/// The servers of a comma-separated URL list (the client's own parser takes one URL only).
///
/// # Errors
/// The URL that does not parse, and why.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{}: {e}", config::redacted_url(u)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::server_addrs;

    #[test]
    fn a_url_list_names_every_server_and_a_bad_one_is_named() {
        let addrs = server_addrs("nats://a:4222, tls://b:4223").unwrap();
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[1].port(), 4223);
        let err = server_addrs("nats://a:4222,nats://u:secret@b:notaport").unwrap_err();
        assert!(
            err.contains("b:notaport") && !err.contains("secret"),
            "{err}"
        );
    }
}
