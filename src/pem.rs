//! PEM files of certificates and private keys, read with errors that name the file and say what is
//! wrong without quoting key material; shared by the listener's TLS and the report sender's.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What the listener's private key file is called in error messages.
pub(crate) const KEY_FILE: &str = "TLS private key";

/// What the report sender's client key file is called in error messages.
pub(crate) const CLIENT_KEY_FILE: &str = "report client key";

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} file {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("the {what} file {path} is not valid PEM: {message}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(
        "the TLS certificate file {path} holds no certificate (expected a \"BEGIN CERTIFICATE\" block)"
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "the TLS private key file {path} holds no private key (expected a \"BEGIN PRIVATE KEY\", \
         \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)"
    )]
    NoKey { path: PathBuf },
    #[error(
        "the TLS private key in {path} cannot be used: {message} (usable keys are RSA of 2048 bits \
         or more, ECDSA on P-256 or P-384, and Ed25519)"
    )]
    BadKey { path: PathBuf, message: String },
    #[error("the TLS client CA file {path} cannot be used: {message}")]
    BadClientCa { path: PathBuf, message: String },
    #[error("rustls refused the TLS certificate and key: {message}")]
    Rejected { message: String },
    /// A private key that other users may read, or that is not the agent's or root's.
    #[error(transparent)]
    Exposed(crate::auth::TokensError),
}

/// The certificates in a PEM file, in order; other kinds of block are skipped.
pub(crate) fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::BadPem {
            what,
            path: path.to_path_buf(),
            message: describe_pem_error(&err),
        })
}

/// The first private key in a PEM file, whichever of PKCS#8, PKCS#1 and SEC1 it is in. The file
/// is refused as the tokens file is when others may read it: whoever reads the key may pose as the
/// agent.
pub(crate) fn read_key(
    what: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_private(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        err => TlsError::BadPem {
            what,
            path: path.to_path_buf(),
            message: describe_pem_error(&err),
        },
    })
}

/// Reads a whole file. This is done here rather than by the PEM parser so that a file that cannot
/// be read is reported with its I/O error as the source, apart from one whose contents are wrong.
fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|err| TlsError::Read {
        what,
        path: path.to_path_buf(),
        err,
    })
}

/// Reads a whole file of secrets, its mode and owner checked on the handle it is read through.
fn read_private(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let (pem, meta) = crate::auth::read_with_metadata(path).map_err(|err| TlsError::Read {
        what,
        path: path.to_path_buf(),
        err,
    })?;
    crate::auth::check_private(path, what, &meta).map_err(TlsError::Exposed)?;
    Ok(pem)
}

/// Says what is wrong with a PEM file. The parser's own messages print lines as lists of byte
/// values and may quote a character of a key, so they are rephrased here.
fn describe_pem_error(err: &pem::Error) -> String {
    match err {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a \"BEGIN {0}\" block has no \"-----END {0}-----\" line",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed line {:?}",
            String::from_utf8_lossy(line).trim_end()
        ),
        pem::Error::Base64Decode(_) => "the body of a block is not valid base64".to_owned(),
        other => other.to_string(),
    }
}

/// A rustls error as a phrase, without the "unexpected error:" that rustls puts before errors it
/// only has a string for.
pub(crate) fn rustls_message(err: &rustls::Error) -> String {
    match err {
        rustls::Error::General(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Why a file of CA certificates cannot serve as roots.
#[derive(Debug)]
pub(crate) enum RootsError {
    /// It cannot be read, or is not PEM.
    File(TlsError),
    /// It holds no certificate, or one that is not a usable CA certificate; the words say which.
    Unusable(String),
}

/// The CA certificates of a PEM file (`what` names it in errors) as a root store.
pub(crate) fn read_roots(what: &'static str, path: &Path) -> Result<RootCertStore, RootsError> {
    let cas = read_certificates(what, path).map_err(RootsError::File)?;
    if cas.is_empty() {
        return Err(RootsError::Unusable(
            "it holds no certificate (expected one or more \"BEGIN CERTIFICATE\" blocks)".into(),
        ));
    }
    let mut roots = RootCertStore::empty();
    for (n, ca) in cas.into_iter().enumerate() {
        roots.add(ca).map_err(|err| {
            RootsError::Unusable(format!(
                "certificate {} in it is not a usable CA certificate: {}",
                n + 1,
                rustls_message(&err)
            ))
        })?;
    }
    Ok(roots)
}
