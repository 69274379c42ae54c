//! A private nats-server per test: the binary `scripts/testenv` installs, a config file written into a
//! temporary directory, a port the server picks itself on 127.0.0.1, and the process killed on drop.
//! Also the material the authenticated setups need: a CA with server and client certificates, and
//! operator, account and user JWTs signed as the NATS JWT format prescribes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair as CertKey, KeyUsagePurpose,
};
use serde_json::{Value, json};

const NATS_VERSION: &str = "2.15.1";

/// The nats-server binary: `ITG_NATS_SERVER`, else where `scripts/testenv` installs it.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ITG_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("ITG_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("itg")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/itg")))
        .expect("HOME, XDG_CACHE_HOME or ITG_CACHE_DIR set");
    let bin = cache.join(format!("nats-server-{NATS_VERSION}/bin/nats-server"));
    assert!(
        bin.is_file(),
        "{} missing: run `scripts/testenv up` once (it installs nats-server {NATS_VERSION}), or set ITG_NATS_SERVER",
        bin.display()
    );
    bin
}

/// A running nats-server with its own directory; killed when dropped.
pub struct NatsServer {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl NatsServer {
    /// Starts a server whose config is `body` (the listen address is added) in a fresh directory made
    /// by `prepare`, which can write files there (certificates, JWTs) and returns the config body.
    pub fn start(prepare: impl FnOnce(&Path) -> String) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let body = prepare(dir.path());
        let conf = dir.path().join("nats-server.conf");
        // Port -1: the server binds a free port itself and logs it, so two tests never race for one.
        std::fs::write(&conf, format!("listen: \"127.0.0.1:-1\"\n{body}\n")).expect("write conf");
        let mut child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut port = None;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                        port = rest
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.trim().parse::<u16>().ok());
                    }
                    let ready = line.contains("Server is ready");
                    log.lock().unwrap().push(line);
                    if ready {
                        let _ = tx.send(port);
                    }
                }
                let _ = tx.send(None);
            });
        }
        let mut server = NatsServer {
            child,
            dir,
            port: 0,
            log,
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => server.port = port,
            other => panic!(
                "nats-server did not become ready ({other:?}); config:\n{}\nlog:\n{}",
                std::fs::read_to_string(&conf).unwrap_or_default(),
                server.log()
            ),
        }
        server
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// What the server logged so far, for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL: the node dies at once, its directory stays.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A path inside the server's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config string as a quoted value for the nats-server config or YAML (both accept JSON strings).
pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

// ---------------------------------------------------------------- certificates

/// A certificate authority able to issue server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, CertKey>,
}

/// A PEM certificate and its PKCS#8 key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = CertKey::generate().expect("ca key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, cn: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params = CertificateParams::new(sans).expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = CertKey::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Issued {
        self.issue(
            "nats-test-server",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    pub fn client(&self, cn: &str) -> Issued {
        self.issue(cn, vec![], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

// ---------------------------------------------------------------- JWTs

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A NATS v2 JWT: header `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims with `iss` set to the
/// signer's public key, and the Ed25519 signature of `header.claims`, each part base64url without padding.
pub fn sign_jwt(mut claims: Value, signer: &KeyPair) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    claims["iat"] = json!(now);
    claims["iss"] = json!(signer.public_key());
    claims["jti"] = json!(
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .to_ascii_uppercase()
    );
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64(&serde_json::to_vec(&claims).expect("claims"));
    let signing_input = format!("{header}.{body}");
    let sig = signer.sign(signing_input.as_bytes()).expect("sign jwt");
    format!("{signing_input}.{}", b64(&sig))
}

/// An operator and one account it signed, for a server in operator mode with a memory resolver.
pub struct Operator {
    pub operator: KeyPair,
    pub account: KeyPair,
    pub operator_jwt: String,
    pub account_jwt: String,
}

impl Operator {
    pub fn new() -> Operator {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let operator_jwt = sign_jwt(
            json!({
                "sub": operator.public_key(),
                "name": "itg-test-operator",
                "nats": { "type": "operator", "version": 2 },
            }),
            &operator,
        );
        let account_jwt = sign_jwt(
            json!({
                "sub": account.public_key(),
                "name": "itg-test-account",
                "nats": {
                    "type": "account",
                    "version": 2,
                    "limits": {
                        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                        "wildcards": true, "conn": -1, "leaf": -1,
                    },
                },
            }),
            &operator,
        );
        Operator {
            operator,
            account,
            operator_jwt,
            account_jwt,
        }
    }

    /// The server config body: the operator JWT written to `dir`, the account preloaded.
    pub fn server_config(&self, dir: &Path) -> String {
        let op = write(dir, "operator.jwt", &self.operator_jwt);
        format!(
            "operator: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n}}\n",
            quoted(&op.display().to_string()),
            self.account.public_key(),
            quoted(&self.account_jwt)
        )
    }
}

/// A user JWT signed by `account`, for a fresh user key.
pub fn user_creds(account: &KeyPair, name: &str) -> String {
    let user = KeyPair::new_user();
    let jwt = sign_jwt(
        json!({
            "sub": user.public_key(),
            "name": name,
            "nats": {
                "type": "user",
                "version": 2,
                "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1,
            },
        }),
        account,
    );
    creds_file_text(&jwt, &user.seed().expect("user seed"))
}

/// The `.creds` layout `nsc` writes.
pub fn creds_file_text(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}
