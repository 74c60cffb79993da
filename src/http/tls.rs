//! TLS for the TCP listener: loads the certificate chain, private key and optional client CA from
//! PEM files, reloads them on request, and hands out acceptors built from the configuration in force.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{InconsistentKeys, ServerConfig};
use tokio_rustls::TlsAcceptor;

pub use crate::pem::TlsError;
use crate::pem::{KEY_FILE, RootsError, read_certificates, read_key, read_roots, rustls_message};

/// The only application protocol offered. The server speaks HTTP/1.1 and nothing else, so a client
/// must never be told through ALPN that it may use h2.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// What the TLS files are called in error messages.
const CERT_FILE: &str = "TLS certificate";
const CLIENT_CA_FILE: &str = "TLS client CA";

/// Where the listener's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain: the server's own certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM private key of the server's certificate: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
    /// PEM certificates of the CAs that client certificates must chain to. When set, every client
    /// must present such a certificate; when unset, clients are not asked for one.
    pub client_ca: Option<PathBuf>,
}

/// The listener's TLS configuration, shared by every task that accepts connections. Clones are
/// cheap and all see the same configuration, including after a reload.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    /// The configuration new handshakes use. The lock is only held to clone or replace the `Arc`,
    /// never across an await, so a plain `std` lock is enough.
    config: RwLock<Arc<ServerConfig>>,
    /// Serialises reloads, so that two overlapping ones cannot install their configurations in the
    /// opposite order to the one they read the files in.
    reloading: Mutex<()>,
}

impl Tls {
    /// Reads the files and builds the first configuration.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let config = build_config(&files)?;
        Ok(Tls {
            inner: Arc::new(Inner {
                files,
                config: RwLock::new(Arc::new(config)),
                reloading: Mutex::new(()),
            }),
        })
    }

    /// Reads the files again and, if they make a usable configuration, puts it in force. New
    /// handshakes then use it; connections already open keep the one they were made with. On any
    /// error the configuration in force is kept, so a half-replaced or broken file never takes the
    /// listener down.
    ///
    /// The files are read synchronously; they are small, but a caller on a busy runtime may prefer
    /// to call this from `spawn_blocking`.
    pub fn reload(&self) -> Result<(), TlsError> {
        // A poisoned lock only means another reload panicked; the unit it guards holds nothing
        // that could be left half-changed.
        let _one_at_a_time = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let config = Arc::new(build_config(&self.inner.files)?);
        // Replacing an `Arc` cannot be interrupted halfway, so a poisoned lock still guards a
        // whole configuration.
        *self
            .inner
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// An acceptor for one connection. It keeps the configuration that was in force when it was
    /// made, so take a fresh one for each accepted connection (it costs one `Arc` clone) rather
    /// than once at start-up, or reloads will never be seen.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current())
    }

    /// Whether clients must present a certificate from the configured client CA.
    pub fn verifies_clients(&self) -> bool {
        self.inner.files.client_ca.is_some()
    }

    fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .inner
                .config
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

// Written by hand so that nothing of the rustls configuration, whose key material must not end up
// in logs, is printed.
impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.inner.files)
            .field("verifies_clients", &self.verifies_clients())
            .finish_non_exhaustive()
    }
}

/// Reads every file named in `files` and builds the configuration they describe.
fn build_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    // The provider is named explicitly so that nothing depends on a process-wide default having
    // been installed, or on which crypto crates happen to be linked in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let chain = read_certificates(CERT_FILE, &files.cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = read_key(KEY_FILE, &files.key)?;
    // The key is loaded once on its own so that a key rustls cannot use at all is reported against
    // the key file, apart from a key that is fine but belongs to another certificate.
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|err| TlsError::BadKey {
            path: files.key.clone(),
            message: rustls_message(&err),
        })?;

    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Rejected {
            message: format!(
                "the ring provider offers no safe TLS version: {}",
                rustls_message(&err)
            ),
        })?;
    let builder = match &files.client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, &provider)?),
        None => builder.with_no_client_auth(),
    };
    // `with_single_cert` compares the public key in the first certificate with the one derived
    // from the private key, so a key that belongs to another certificate is refused here rather
    // than at the first handshake.
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|err| refused(files, &err))?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// A verifier that requires every client to present a certificate chaining to a CA in `path`.
fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |message: String| TlsError::BadClientCa {
        path: path.to_path_buf(),
        message,
    };
    let roots = read_roots(CLIENT_CA_FILE, path).map_err(|e| match e {
        RootsError::File(e) => e,
        RootsError::Unusable(message) => bad(message),
    })?;
    // The builder's default refuses clients that present no certificate, which is what a
    // configured client CA is meant to achieve.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|err| bad(err.to_string()))
}

/// Turns rustls refusing the certificate chain with the key into an error naming both files.
fn refused(files: &TlsFiles, err: &rustls::Error) -> TlsError {
    let (cert, key) = (files.cert.display(), files.key.display());
    let message = match err {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => format!(
            "the private key in {key} does not belong to the first certificate in {cert} \
             (that file must start with the server's own certificate, followed by its \
             intermediates)"
        ),
        other => format!(
            "certificate {cert} with private key {key}: {}",
            rustls_message(other)
        ),
    };
    TlsError::Rejected { message }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
    };
    use rustls::{ClientConfig, RootCertStore};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::TlsConnector;

    use super::*;

    /// A test-only RSA key in PKCS#1 form, generated with `openssl genrsa -traditional 2048` for
    /// this test; it protects nothing. It is fixed because ring cannot generate RSA keys.
    const RSA_PKCS1_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEA3GOURAfRxLJSYAIWzX06PNXFJy5cboz1j9MkoWFgF3Qb9GpQ
oi/3x+0KIGUzY18mni/AMukBT4CJ0ec865BSXhajnA0Ei+BBkjgSImtiJlrHkjzp
XFoTODInUBAVSKq50swi5Q0jaAC8eeyy0ejHV9AARiI5LbwVQo4eQOK3zwncwJDT
fZS00rsbAVlspGLKqvw5Tt227Ul1EyrZVHpJYb4yb7Cgr0W0OMzdm6RY9RiPpJ+4
LqUMLOaEUPmdHseZJBAICj7yQRN9wIAJ/SDg21yW7kj9PbrVq7nMKWhA5T5vy1QB
85GNvbK5IZSOy+wX7071l5Usx99VyzRpjzuJ9wIDAQABAoIBAD3QSj4YiVvnfhZC
j7278XEtrhnytWcmbxuTZ5NB+g8p+EtB5HLRDGjNUclLSTIGdpDoqLo+wyjWzxEK
D/qsJIYSSHpU5mELGakWw/NWdhV24cHhBrzp4LkizAb3M9kJVYxLyD/BQxyBFFwI
KRGZ/gthoioJoEr1FWtw7Ahb7p0JTEBBgdJNDxSNxfCE+A/FVbhdC2uT6dk4pcoJ
5mEFqzb+oFJ1SMqWF1N99WKpGNY57PIzug+jcJaT57OBaMCv7LON9/FcVxAX4Epc
fc+uKWNoYECtHaldcArNzywrGMB7x3b6ygtC/DKl70mMLE0jUof8jaGTAXD6ywVb
l0JX+0UCgYEA92Pt7w883e+pmnVzegcuDCFpKqXKzhB0ZsUiyuaHqKRqaPQFrk6r
1zWpU+l0Z6SUY7JrWQcpxiWTv/jhUDMPS/m0XVwbMsEQTV0KBpdIz2jDWq4N8RNu
oPsLT/0SlVzManVDr++HGkboTRuKlALcHBy4ywlhYrbbbLF/4B7Klm0CgYEA5A8W
P7uB8Ui843IAjeBdGuC/Qfyjcg5bXHe/T0EGgWT7uM+smcLoHuEKnDQT/4Btu5hI
Pe7hy1obE2b5dJczgGrS8efQhy4Umz2PwxEANj+4KkNtwhZokc2TR2Weq3ZVNN2X
XRgTEMLdh+C/92klKEtYycD26DKlVPvy0u7jc3MCgYEAn9hAf2tgD6Jv+q4S6/DB
rvLTicvP6y80lsafgWxMkQmS+7dYCFUqsQYqH17DaMgtXPGGbOK0+iODgNGle3VS
V+vCv2Po6vVVvDb2aGXNlL4DI4880NyWaYtrtsY1AK8SIWMdVgs1RyQzqsa11oa2
g6+HMyEffHHb+zIBBuW+Tk0CgYEAqT4U+cjx/phHLNb+WEtnbLna1WJh/RNwc2ee
Pnd4F3BUaescIKOG1NuWnyL6sEKjrHKvMd7kC5/btgNWHlLS8nrT/pdUpezpd+cw
l8c3DAsvZZXSjxVIFuOjZ3mfTYksZGYJnRlvlKG3+s0sSLPr0kJQKrEbymdDUJUE
t8p2WscCgYAY9Ph56BmaRBsFWzyGtWi+g//L0nDORHNEiXDL4oZJSjzbMaiHgbk+
ckb4kVjuty8iG3N0pRgWjjLDdHnIumXMZsstHFPiYNllhJSCLrp2nLYAne8NqV73
E2DthGNlYNOMXU5yQcW7ivynKCr64nzfp3NrqGiAJcrJj1skdGhhPQ==
-----END RSA PRIVATE KEY-----
";

    /// A test-only P-256 key in SEC1 form, generated with `openssl ecparam -genkey` for this test;
    /// it protects nothing. It is fixed because neither ring nor rcgen writes SEC1.
    const EC_SEC1_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIFnfrqSg/awNkFz55T9yTMukzjqh8xk34ia2IcK+Sow8oAoGCCqGSM49
AwEHoUQDQgAEte5+qv8fl5u8J3jy6LMiSo4yfMZQkBlg7d26i6THMHBmX5CiY0UR
D2IWbCrI0xW+cad+jdvch8JrRxebOxdb0Q==
-----END EC PRIVATE KEY-----
";

    /// A certificate authority that signs the test certificates.
    struct Ca {
        pem: String,
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("CA certificate");
            Ca {
                pem: cert.pem(),
                der: cert.der().clone(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A server certificate for `localhost` and 127.0.0.1 with the common name `name`.
        fn server_cert(&self, name: &str, key: &impl PublicKeyData) -> rcgen::Certificate {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .expect("server params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params
                .signed_by(key, &self.issuer)
                .expect("server certificate")
        }

        /// A freshly generated server key with its certificate.
        fn server(&self, name: &str) -> Leaf {
            let key = KeyPair::generate().expect("server key");
            let cert = self.server_cert(name, &key);
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }

        /// A client certificate chain and key, as a client configuration wants them.
        fn client(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().expect("client key");
            let cert = params.signed_by(&key, &self.issuer).expect("client cert");
            let key = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
            (vec![cert.der().clone()], key)
        }
    }

    /// A server certificate and its key, as PEM, and the certificate as the client will see it.
    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    /// A directory holding a CA and a server certificate and key signed by it.
    struct Fixture {
        dir: tempfile::TempDir,
        ca: Ca,
        leaf: Leaf,
        files: TlsFiles,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temporary directory");
            let ca = Ca::new("test CA");
            let leaf = ca.server("first server");
            let files = TlsFiles {
                cert: write(dir.path(), "server.pem", &leaf.cert_pem),
                key: write(dir.path(), "server.key", &leaf.key_pem),
                client_ca: None,
            };
            Fixture {
                dir,
                ca,
                leaf,
                files,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write test file");
        // Private, as the agent wants a key to be, so that only the contents are at fault.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// A client that trusts `ca`, offers `alpn`, and presents `identity` if given.
    fn client_config(
        ca: &Ca,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        alpn: &[&[u8]],
    ) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).expect("trust the CA");
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots);
        let mut config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .expect("client identity"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// Both ends of one handshake over an in-memory pipe.
    struct Handshake {
        server: std::io::Result<tokio_rustls::server::TlsStream<DuplexStream>>,
        client: std::io::Result<tokio_rustls::client::TlsStream<DuplexStream>>,
    }

    async fn handshake(tls: &Tls, client: ClientConfig) -> Handshake {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tls.acceptor();
        let connector = TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").expect("server name");
        // Each side drops its end of the pipe when it fails, so the other side sees the end of
        // the stream rather than waiting forever; the timeout only guards against a bug in that.
        let (server, client) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                acceptor.accept(server_io),
                connector.connect(name, client_io)
            )
        })
        .await
        .expect("the handshake ends in time");
        Handshake { server, client }
    }

    /// The certificate the server presented, as the client saw it.
    fn served(client: &tokio_rustls::client::TlsStream<DuplexStream>) -> CertificateDer<'static> {
        client
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the server presented a certificate")
            .clone()
    }

    /// Why rustls ended a handshake, if it did.
    fn refusal<T>(result: &std::io::Result<T>) -> Option<rustls::Error> {
        let err = result.as_ref().err()?.get_ref()?;
        err.downcast_ref::<rustls::Error>().cloned()
    }

    fn load_err(files: TlsFiles) -> TlsError {
        Tls::load(files).expect_err("the files must be refused")
    }

    fn assert_names(err: &TlsError, path: &Path) {
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{message:?} does not name {}",
            path.display()
        );
    }

    #[tokio::test]
    async fn loads_and_negotiates_http11_only() {
        let fx = Fixture::new();
        let tls = Tls::load(fx.files.clone()).expect("the files load");
        assert!(!tls.verifies_clients());

        let hs = handshake(&tls, client_config(&fx.ca, None, &[b"h2", b"http/1.1"])).await;
        let client = hs.client.expect("the client completes the handshake");
        let server = hs.server.expect("the server completes the handshake");
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(server.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(served(&client), fx.leaf.der);

        let hs = handshake(&tls, client_config(&fx.ca, None, &[])).await;
        let client = hs.client.expect("a client offering no ALPN is served");
        assert_eq!(client.get_ref().1.alpn_protocol(), None);
        hs.server
            .expect("the server serves a client offering no ALPN");

        // RFC 7301 has a server with no protocol in common refuse the handshake, rather than
        // answer in a protocol the client did not offer.
        let hs = handshake(&tls, client_config(&fx.ca, None, &[b"h2"])).await;
        assert_eq!(
            refusal(&hs.server),
            Some(rustls::Error::NoApplicationProtocol)
        );

        let debug = format!("{tls:?}");
        assert!(debug.contains("server.pem"), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let fx = Fixture::new();

        let missing = fx.path("missing.pem");
        let err = load_err(TlsFiles {
            cert: missing.clone(),
            ..fx.files.clone()
        });
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: CERT_FILE,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_names(&err, &missing);

        let err = load_err(TlsFiles {
            key: missing.clone(),
            ..fx.files.clone()
        });
        assert!(
            matches!(err, TlsError::Read { what: KEY_FILE, .. }),
            "{err:?}"
        );
        assert_names(&err, &missing);

        // A certificate file that holds only a key, as when the two paths are swapped.
        let err = load_err(TlsFiles {
            cert: fx.files.key.clone(),
            ..fx.files.clone()
        });
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert_names(&err, &fx.files.key);

        let truncated = write(
            fx.dir.path(),
            "truncated.pem",
            &fx.leaf.cert_pem[..fx.leaf.cert_pem.len() / 2],
        );
        let err = load_err(TlsFiles {
            cert: truncated.clone(),
            ..fx.files.clone()
        });
        assert!(
            matches!(
                err,
                TlsError::BadPem {
                    what: CERT_FILE,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_names(&err, &truncated);

        let garbage = write(fx.dir.path(), "garbage.key", "this is not a key\n");
        let err = load_err(TlsFiles {
            key: garbage.clone(),
            ..fx.files.clone()
        });
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        assert_names(&err, &garbage);

        // Well-formed PEM around bytes that are no key at all.
        let junk = write(
            fx.dir.path(),
            "junk.key",
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n",
        );
        let err = load_err(TlsFiles {
            key: junk.clone(),
            ..fx.files.clone()
        });
        assert!(matches!(err, TlsError::BadKey { .. }), "{err:?}");
        assert_names(&err, &junk);

        let err = load_err(TlsFiles {
            client_ca: Some(garbage.clone()),
            ..fx.files.clone()
        });
        assert!(matches!(err, TlsError::BadClientCa { .. }), "{err:?}");
        assert_names(&err, &garbage);
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let fx = Fixture::new();
        let other = KeyPair::generate().expect("another key");
        let key = write(fx.dir.path(), "other.key", other.serialize_pem());
        let err = load_err(TlsFiles {
            key: key.clone(),
            ..fx.files.clone()
        });
        assert!(matches!(err, TlsError::Rejected { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("does not belong to"), "{message}");
        assert_names(&err, &key);
        assert_names(&err, &fx.files.cert);

        // A chain in the wrong order, CA first, is refused the same way.
        let backwards = write(
            fx.dir.path(),
            "backwards.pem",
            format!("{}{}", fx.ca.pem, fx.leaf.cert_pem),
        );
        let err = load_err(TlsFiles {
            cert: backwards,
            ..fx.files.clone()
        });
        assert!(err.to_string().contains("does not belong to"), "{err}");
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_and_keeps_the_old_on_error() {
        let fx = Fixture::new();
        let tls = Tls::load(fx.files.clone()).expect("the files load");
        let hs = handshake(&tls, client_config(&fx.ca, None, &[])).await;
        let mut old_client = hs.client.expect("client");
        let mut old_server = hs.server.expect("server");
        assert_eq!(served(&old_client), fx.leaf.der);

        let renewed = fx.ca.server("renewed server");
        write(fx.dir.path(), "server.pem", &renewed.cert_pem);
        write(fx.dir.path(), "server.key", &renewed.key_pem);
        tls.reload().expect("the renewed files load");

        let hs = handshake(&tls, client_config(&fx.ca, None, &[])).await;
        assert_eq!(served(&hs.client.expect("client")), renewed.der);

        // The connection made before the reload goes on carrying data.
        old_client.write_all(b"ping").await.expect("write");
        old_client.flush().await.expect("flush");
        let mut got = [0u8; 4];
        old_server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");

        // A broken key file is refused, and the renewed certificate goes on being served.
        write(fx.dir.path(), "server.key", "not a key\n");
        let err = tls.reload().expect_err("a broken key must be refused");
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        let hs = handshake(&tls, client_config(&fx.ca, None, &[])).await;
        assert_eq!(served(&hs.client.expect("client")), renewed.der);

        // So is a certificate replaced without its key, as a reload between the two writes of a
        // renewal would see.
        let third = fx.ca.server("third server");
        write(fx.dir.path(), "server.pem", &third.cert_pem);
        write(fx.dir.path(), "server.key", &renewed.key_pem);
        let err = tls.reload().expect_err("a mismatched pair must be refused");
        assert!(matches!(err, TlsError::Rejected { .. }), "{err:?}");
        let hs = handshake(&tls, client_config(&fx.ca, None, &[])).await;
        assert_eq!(served(&hs.client.expect("client")), renewed.der);
    }

    #[tokio::test]
    async fn client_ca_admits_only_clients_it_signed() {
        let fx = Fixture::new();
        let client_ca = write(fx.dir.path(), "client-ca.pem", &fx.ca.pem);
        let tls = Tls::load(TlsFiles {
            client_ca: Some(client_ca),
            ..fx.files.clone()
        })
        .expect("the files load");
        assert!(tls.verifies_clients());

        // In TLS 1.3 the client finishes its side before the server has judged its certificate,
        // so it is the server's side of each handshake that tells.
        let hs = handshake(&tls, client_config(&fx.ca, None, &[])).await;
        assert_eq!(
            refusal(&hs.server),
            Some(rustls::Error::NoCertificatesPresented)
        );

        let member = fx.ca.client("member");
        let hs = handshake(&tls, client_config(&fx.ca, Some(member), &[])).await;
        let server = hs
            .server
            .expect("a client signed by the client CA is admitted");
        assert!(server.get_ref().1.peer_certificates().is_some());
        hs.client.expect("client");

        let stranger = Ca::new("another CA").client("stranger");
        let hs = handshake(&tls, client_config(&fx.ca, Some(stranger), &[])).await;
        assert_eq!(
            refusal(&hs.server),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        );
    }

    /// A public key given by its raw bits, for rcgen to put in a certificate.
    struct RawPublicKey {
        bits: Vec<u8>,
        alg: &'static SignatureAlgorithm,
    }

    impl PublicKeyData for RawPublicKey {
        fn der_bytes(&self) -> &[u8] {
            &self.bits
        }

        fn algorithm(&self) -> &'static SignatureAlgorithm {
            self.alg
        }
    }

    /// The length of a DER element's header and of its contents.
    fn der_header(der: &[u8]) -> (usize, usize) {
        match der[1] {
            short @ 0..0x80 => (2, usize::from(short)),
            long => {
                let n = usize::from(long & 0x7f);
                let len = der[2..2 + n]
                    .iter()
                    .fold(0, |len, &b| (len << 8) | usize::from(b));
                (2 + n, len)
            }
        }
    }

    /// The key bits of a SubjectPublicKeyInfo, which rcgen wants: `SEQUENCE { AlgorithmIdentifier,
    /// BIT STRING }`, less the BIT STRING's count of unused bits, which is zero for keys.
    fn spki_key_bits(spki: &[u8]) -> Vec<u8> {
        let (outer, _) = der_header(spki);
        let body = &spki[outer..];
        let (alg_header, alg_len) = der_header(body);
        let bit_string = &body[alg_header + alg_len..];
        let (bits_header, bits_len) = der_header(bit_string);
        bit_string[bits_header + 1..bits_header + bits_len].to_vec()
    }

    #[tokio::test]
    async fn pkcs1_rsa_and_sec1_ec_keys_load() {
        let fx = Fixture::new();
        let cases: [(&str, &str, &'static SignatureAlgorithm); 2] = [
            ("rsa", RSA_PKCS1_KEY, &rcgen::PKCS_RSA_SHA256),
            ("ec", EC_SEC1_KEY, &rcgen::PKCS_ECDSA_P256_SHA256),
        ];
        for (name, key_pem, alg) in cases {
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
            assert!(
                matches!(
                    (name, &key),
                    ("rsa", PrivateKeyDer::Pkcs1(_)) | ("ec", PrivateKeyDer::Sec1(_))
                ),
                "{name}: {key:?}"
            );
            // rcgen cannot sign with these forms of key under ring, but it only needs the public
            // half to issue a certificate, which rustls derives.
            let spki = rustls::crypto::ring::default_provider()
                .key_provider
                .load_private_key(key)
                .expect("ring loads the key")
                .public_key()
                .expect("the key's public half")
                .as_ref()
                .to_vec();
            let public = RawPublicKey {
                bits: spki_key_bits(&spki),
                alg,
            };
            let cert = fx.ca.server_cert(name, &public);
            let files = TlsFiles {
                cert: write(fx.dir.path(), &format!("{name}.pem"), cert.pem()),
                key: write(fx.dir.path(), &format!("{name}.key"), key_pem),
                client_ca: None,
            };
            let tls = Tls::load(files).unwrap_or_else(|err| panic!("{name}: {err}"));
            let hs = handshake(&tls, client_config(&fx.ca, None, &[])).await;
            assert_eq!(served(&hs.client.expect("client")), *cert.der(), "{name}");
            hs.server.expect("server");
        }
    }
}
