//! `nats`: how to reach NATS, and the redaction that keeps credentials written into its URLs out of logs
//! and errors.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use super::rules::rule;

/// How to reach NATS. Its `Debug` never shows a password, a token or credentials written into the URL.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One URL or a comma-separated list.
    pub url: String,
    #[serde(default = "default_connection_name")]
    pub connection_name: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("url", &redacted_url(&self.url))
            .field("connection_name", &self.connection_name)
            .field("user", &self.user)
            .field("password", &hide(&self.password))
            .field("token", &hide(&self.token))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The URL list with any credentials (`user:password@`, `token@`) replaced, for logs and errors.
pub fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|u| redacted_one(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn redacted_one(u: &str) -> String {
    match url::Url::parse(u) {
        // `u:p@host:4222` parses as scheme `u` with no host: that is the bare form below.
        Ok(mut parsed)
            if parsed.has_host()
                && (!parsed.username().is_empty() || parsed.password().is_some()) =>
        {
            // Cleared through the parser, so no part of them survives; the marker is put back by hand
            // because the parser would percent-encode it.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            let bare = parsed.to_string();
            match bare.split_once("://") {
                Some((scheme, rest)) => format!("{scheme}://<redacted>@{rest}"),
                None => bare,
            }
        }
        Ok(parsed) if parsed.has_host() => u.to_owned(),
        // Not a URL the parser takes (a bare `host:port`): still never show what precedes an `@`.
        _ => match u.rsplit_once('@') {
            Some((_, host)) => format!("<redacted>@{host}"),
            None => u.to_owned(),
        },
    }
}

/// `message` with every member of the URL list `urls`, and the whole list, redacted wherever it is
/// quoted: a client's error may name only the one server it failed on.
pub fn redact_in(message: &str, urls: &str) -> String {
    let mut out = message.replace(urls, &redacted_url(urls));
    for u in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        out = out.replace(u, &redacted_one(u));
    }
    out
}

fn default_connection_name() -> String {
    "itg-worker".into()
}

/// TLS towards NATS; a client certificate makes it mutual.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl NatsConfig {
    /// The URL, credential and TLS rules of `nats`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let n = self;
        if n.url.trim().is_empty() {
            return Err(rule(
                "nats.url",
                &n.url,
                "must name at least one NATS server",
            ));
        }
        for url in n.url.split(',') {
            let url = url.trim();
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s) && url.len() > s.len());
            if !ok {
                return Err(rule(
                    "nats.url",
                    url,
                    "each URL must start with nats://, tls://, ws:// or wss:// and name a host",
                ));
            }
        }
        if n.user.is_some() != n.password.is_some() {
            return Err(rule(
                "nats.user",
                &n.user,
                "nats.user and nats.password go together",
            ));
        }
        let methods = [
            n.user.is_some(),
            n.token.is_some(),
            n.nkey_seed_file.is_some(),
            n.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(rule(
                "nats",
                "user/token/nkey_seed_file/creds_file",
                "set at most one way to authenticate",
            ));
        }
        if let Some(tls) = &n.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            {
                return Err(rule(
                    "nats.tls.cert_file",
                    &tls.cert_file,
                    "cert_file and key_file go together",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn every_member_of_a_url_list_is_redacted_wherever_it_is_quoted() {
        let urls = "nats://user:secret@a:4222, nats://s3cr3t@b:4222,nats://c:4222";
        assert_eq!(
            redacted_url(urls),
            "nats://<redacted>@a:4222,nats://<redacted>@b:4222,nats://c:4222"
        );
        // A client's error names the one server it failed on, not the whole list.
        let msg = "failed to connect to nats://s3cr3t@b:4222: connection refused";
        let out = redact_in(msg, urls);
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(out.contains("nats://<redacted>@b:4222"), "{out}");
        assert_eq!(redacted_url("u:p@host:4222"), "<redacted>@host:4222");
    }
}
