//! Who is calling: the tokens file (SHA-256 hashes only), token generation, and the principal a token names.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of entropy in a generated token.
pub const TOKEN_BYTES: usize = 32;

/// Why the tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("cannot create tokens file {path}")]
    Create {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("tokens file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{what} {path} has mode {mode:04o}: other users may read or change it, or its group \
         may change it; restrict it (chmod 0600 {path}, or 0640 with the agent's group)"
    )]
    Exposed {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "{what} {path} belongs to uid {owner}: its owner could put anything in it, so only root \
         or the agent's own user (uid {agent}) may own it; chown it"
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        agent: u32,
    },
    #[error(
        "tokens file {path} does not exist, and the agent does not create one while its output \
         goes to the journal, which would keep the new token in clear: create the file and \
         append the entries `node-agent token new` prints, as the install steps of \
         /usr/share/doc/node-agent/docs/operations.md do"
    )]
    NotCreatedUnderJournal { path: PathBuf },
    #[error("cannot generate a random token")]
    Random(#[source] getrandom::Error),
}

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything on this node.
    Operator,
    /// Only the apps this user owns or may change through a team.
    User { user_id: String },
}

/// An authenticated caller: the token's name (for logs) and its access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub access: Access,
}

impl Principal {
    pub fn is_operator(&self) -> bool {
        self.access == Access::Operator
    }
}

/// A token's role, as written in the tokens file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    User,
}

/// One `[[token]]` table of the tokens file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// Lowercase hex SHA-256 of the token string.
    pub sha256: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug)]
struct Known {
    hash: [u8; 32],
    principal: Principal,
}

/// The accepted tokens, by hash.
#[derive(Debug, Default)]
pub struct TokenBook {
    known: Vec<Known>,
}

impl TokenBook {
    /// Parses a tokens file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<TokenBook, TokensError> {
        let invalid = |message: String| TokensError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: TokensFile = toml::from_str(text).map_err(|e| invalid(toml_error(text, &e)))?;
        let mut known = Vec::with_capacity(file.token.len());
        for (i, entry) in file.token.into_iter().enumerate() {
            let at = format!("token #{} ({:?})", i + 1, entry.name);
            if entry.name.trim().is_empty() {
                return Err(invalid(format!("{at}: `name` must not be empty")));
            }
            let hash = parse_hash(&entry.sha256).ok_or_else(|| {
                invalid(format!(
                    "{at}: `sha256` must be 64 lowercase hex digits (the hash, never the token)"
                ))
            })?;
            let access = match (entry.role, entry.user_id) {
                (Role::Operator, None) => Access::Operator,
                (Role::Operator, Some(_)) => {
                    return Err(invalid(format!(
                        "{at}: an operator token takes no `user_id`"
                    )));
                }
                (Role::User, Some(user_id)) if !user_id.trim().is_empty() => {
                    Access::User { user_id }
                }
                (Role::User, _) => {
                    return Err(invalid(format!("{at}: a user token needs a `user_id`")));
                }
            };
            if known.iter().any(|k: &Known| k.principal.name == entry.name) {
                return Err(invalid(format!("{at}: the name is used twice")));
            }
            // One token must name one principal: with two entries of one hash, whichever came
            // first in the file would win, and a token meant as a user's might act as operator.
            if let Some((j, first)) = known.iter().enumerate().find(|(_, k)| k.hash == hash) {
                return Err(invalid(format!(
                    "{at} has the same `sha256` as token #{} ({:?}): each token may have one \
                     entry; remove one of them",
                    j + 1,
                    first.principal.name
                )));
            }
            known.push(Known {
                hash,
                principal: Principal {
                    name: entry.name,
                    access,
                },
            });
        }
        Ok(TokenBook { known })
    }

    /// Reads the tokens file at `path`, which other users must not be able to read or change.
    pub fn load(path: &Path) -> Result<TokenBook, TokensError> {
        Self::parse(&read_private_file(path, TOKENS_FILE)?, path)
    }

    /// Names and roles of the tokens, in file order; never their hashes.
    pub fn summaries(&self) -> Vec<TokenSummary> {
        self.known
            .iter()
            .map(|k| TokenSummary::of(&k.principal))
            .collect()
    }

    /// The principal whose token this is. Every entry is compared, in constant time, so neither the
    /// answer's timing nor its position gives a hash away.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for k in &self.known {
            if bool::from(k.hash.ct_eq(&hash)) {
                found = Some(&k.principal);
            }
        }
        found.cloned()
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// The tokens in force, replaceable while the agent serves (SIGHUP).
#[derive(Debug, Clone)]
pub struct Tokens {
    current: Arc<RwLock<Arc<TokenBook>>>,
}

impl Tokens {
    pub fn new(book: TokenBook) -> Tokens {
        Tokens {
            current: Arc::new(RwLock::new(Arc::new(book))),
        }
    }

    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let book = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        book.authenticate(token)
    }

    pub fn replace(&self, book: TokenBook) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(book);
    }
}

/// What `token list` shows of a token: never its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSummary {
    pub name: String,
    pub role: Role,
    pub user_id: Option<String>,
}

impl TokenSummary {
    fn of(principal: &Principal) -> TokenSummary {
        let (role, user_id) = match &principal.access {
            Access::Operator => (Role::Operator, None),
            Access::User { user_id } => (Role::User, Some(user_id.clone())),
        };
        TokenSummary {
            name: principal.name.clone(),
            role,
            user_id,
        }
    }
}

/// What the tokens file is called in errors.
const TOKENS_FILE: &str = "tokens file";

/// Reads a file that holds secrets or grants, refusing it as [`check_private`] does; `what` names
/// it in errors.
pub fn read_private_file(path: &Path, what: &'static str) -> Result<String, TokensError> {
    let (text, meta) = read_through_one_handle(path, what)?;
    check_private(path, what, &meta)?;
    Ok(text)
}

/// Reads a file through one handle: its text, and the mode and owner of that same file (not of
/// whatever the path names a moment later).
fn read_through_one_handle(
    path: &Path,
    what: &'static str,
) -> Result<(String, std::fs::Metadata), TokensError> {
    let read = |err| TokensError::Read {
        what,
        path: path.to_owned(),
        err,
    };
    let (bytes, meta) = read_with_metadata(path).map_err(read)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| read(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Ok((text, meta))
}

/// A file's bytes, and the metadata of the very file they were read from (one handle), for the
/// files whose mode and owner are checked: the tokens, the report token, private keys.
pub(crate) fn read_with_metadata(path: &Path) -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok((bytes, meta))
}

/// Refuses a tokens file (or another file of secrets: a private key, the report token) that other
/// users may read or write, that its group may write, or that belongs to someone other than root or
/// the agent's own user: the hashes are not secrets an attacker should get to test guesses against,
/// and whoever may write the file may grant themselves any role. The group may read: it is the
/// service's group, which the package gives the files.
pub(crate) fn check_private(
    path: &Path,
    what: &'static str,
    meta: &std::fs::Metadata,
) -> Result<(), TokensError> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o7777;
    if mode & 0o027 != 0 {
        return Err(TokensError::Exposed {
            what,
            path: path.to_owned(),
            mode,
        });
    }
    let agent = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != agent {
        return Err(TokensError::Owner {
            what,
            path: path.to_owned(),
            owner: meta.uid(),
            agent,
        });
    }
    Ok(())
}

/// The tokens of a file as `token list` shows them, read whatever the file's mode, beside the
/// reason the agent would refuse the file, if it would.
pub fn list_tokens(path: &Path) -> Result<(Vec<TokenSummary>, Option<TokensError>), TokensError> {
    let (text, meta) = read_through_one_handle(path, TOKENS_FILE)?;
    let summaries = TokenBook::parse(&text, path)?.summaries();
    Ok((summaries, check_private(path, TOKENS_FILE, &meta).err()))
}

/// A TOML error as its message and position, without the quoted line, and with every value the
/// message quotes left out but the file's own keys and roles: a line of the tokens file may hold a
/// hash, or a token pasted by mistake, and this text reaches logs and terminals.
fn toml_error(text: &str, err: &toml::de::Error) -> String {
    const KNOWN: [&str; 7] = [
        "name", "sha256", "role", "user_id", "token", "operator", "user",
    ];
    let message: String = err
        .message()
        .split('`')
        .enumerate()
        .map(|(i, part)| match i % 2 {
            0 => part.to_owned(),
            _ if KNOWN.contains(&part) => format!("`{part}`"),
            _ => "`…`".to_owned(),
        })
        .collect();
    let Some(span) = err.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}: {message}")
}

fn parse_hash(hex_digits: &str) -> Option<[u8; 32]> {
    if hex_digits.len() != 64 || hex_digits.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

/// Lowercase hex SHA-256 of a token, as the tokens file stores it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token: [`TOKEN_BYTES`] random bytes from the operating system, hex-encoded.
pub fn generate_token() -> Result<String, TokensError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(TokensError::Random)?;
    Ok(hex::encode(bytes))
}

/// A fresh token and its tokens-file entry.
pub fn new_token(
    name: &str,
    role: Role,
    user_id: Option<String>,
) -> Result<(String, TokenEntry), TokensError> {
    let token = generate_token()?;
    let entry = TokenEntry {
        name: name.to_owned(),
        sha256: hash_token(&token),
        role,
        user_id,
    };
    Ok((token, entry))
}

/// The entry as a `[[token]]` table for the tokens file.
pub fn entry_toml(entry: &TokenEntry) -> String {
    let file = TokensFile {
        token: vec![entry.clone()],
    };
    toml::to_string(&file).unwrap_or_default()
}

/// Creates the tokens file at `path` (mode 0600, never overwriting) with one fresh operator token, and
/// returns that token so it can be shown once.
pub fn create_tokens_file(path: &Path) -> Result<String, TokensError> {
    let create = |err| TokensError::Create {
        path: path.to_owned(),
        err,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    let (token, entry) = new_token("operator", Role::Operator, None)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    let text = format!(
        "# node-agent tokens: SHA-256 hashes only. Add entries with `node-agent token new`.\n\n{}",
        entry_toml(&entry)
    );
    file.write_all(text.as_bytes()).map_err(create)?;
    file.sync_all().map_err(create)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_authenticate_and_only_hashes_are_written() {
        let (token, entry) = new_token("cp", Role::Operator, None).expect("token");
        assert_eq!(token.len(), TOKEN_BYTES * 2);
        let text = entry_toml(&entry);
        assert!(!text.contains(&token));
        let book = TokenBook::parse(&text, Path::new("t")).expect("valid");
        let p = book.authenticate(&token).expect("known");
        assert_eq!(p.name, "cp");
        assert!(p.is_operator());
        assert_eq!(book.authenticate("nope"), None);
        assert_eq!(book.authenticate(""), None);
    }

    #[test]
    fn user_tokens_carry_user_id() {
        let (token, entry) = new_token("k", Role::User, Some("u1".into())).expect("token");
        let book = TokenBook::parse(&entry_toml(&entry), Path::new("t")).expect("valid");
        assert_eq!(
            book.authenticate(&token).expect("known").access,
            Access::User {
                user_id: "u1".into()
            }
        );
    }

    #[test]
    fn tokens_files_others_may_read_are_refused_and_listing_shows_no_hashes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens.toml");
        create_tokens_file(&path).expect("created");
        let (_, user) = new_token("keven", Role::User, Some("u1".into())).expect("token");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str(&entry_toml(&user));
        std::fs::write(&path, &text).expect("write");
        for mode in [0o600, 0o640, 0o400, 0o440] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            TokenBook::load(&path).expect("private enough");
        }
        for mode in [0o644, 0o602, 0o601, 0o660, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = TokenBook::load(&path).expect_err("exposed");
            let text = err.to_string();
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
            assert!(text.contains("other users"), "{text}");
        }
        let (listed, refusal) = list_tokens(&path).expect("listed whatever the mode");
        assert!(
            matches!(refusal, Some(TokensError::Exposed { mode: 0o620, .. })),
            "{refusal:?}"
        );
        assert_eq!(
            listed,
            vec![
                TokenSummary {
                    name: "operator".into(),
                    role: Role::Operator,
                    user_id: None
                },
                TokenSummary {
                    name: "keven".into(),
                    role: Role::User,
                    user_id: Some("u1".into())
                },
            ]
        );
    }

    #[test]
    fn contract_example_hash_matches_test() {
        // The contract's example entry is the hash of "test".
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn malformed_files_are_refused_with_reason() {
        let h = hash_token("x");
        for (text, why) in [
            (
                "[[token]]\nname = \"a\"\nsha256 = \"abc\"\nrole = \"operator\"\n",
                "sha256",
            ),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nrole = \"operator\"\n",
                    h.to_uppercase()
                ),
                "sha256",
            ),
            (
                &format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"user\"\n"),
                "user_id",
            ),
            (
                &format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"admin\"\n"),
                "line 4, column 8: unknown variant `…`, expected `operator` or `user`",
            ),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"operator\"\ntoken = \"x\"\n"
                ),
                "token",
            ),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"operator\"\n[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"operator\"\n"
                ),
                "twice",
            ),
        ] {
            let err = TokenBook::parse(text, Path::new("t")).expect_err(why);
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn two_entries_with_one_hash_are_refused_naming_both() {
        let h = hash_token("shared");
        let other = hash_token("other");
        let text = format!(
            "[[token]]\nname = \"cp\"\nsha256 = \"{h}\"\nrole = \"operator\"\n\
             [[token]]\nname = \"ops\"\nsha256 = \"{other}\"\nrole = \"operator\"\n\
             [[token]]\nname = \"keven\"\nsha256 = \"{h}\"\nrole = \"user\"\nuser_id = \"u1\"\n"
        );
        let err = TokenBook::parse(&text, Path::new("t"))
            .expect_err("one hash twice")
            .to_string();
        assert!(
            err.contains("token #3 (\"keven\")") && err.contains("token #1 (\"cp\")"),
            "{err}"
        );
        assert!(err.contains("same `sha256`") && !err.contains(&h), "{err}");
    }

    #[test]
    fn parse_errors_name_the_place_but_never_quote_the_line() {
        let secret = "5ecret-token-pasted-by-mistake";
        let h = hash_token("x");
        for (text, line) in [
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nsha256 = \"{h}\"\nrole = \"operator\"\n"
                ),
                "line 4",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"operator\"\ntoken = \"{secret}\"\n"
                ),
                "line 5",
            ),
            (format!("# tokens\n{secret}\n"), "line 2"),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"{secret}\"\n"),
                "line 4",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"operator\"\n{secret} = 1\n"
                ),
                "line 5",
            ),
            (
                "[[token]]\nname = \"a\"\nsha256 = 12345678901\nrole = \"operator\"\n".to_owned(),
                "line 3",
            ),
        ] {
            let err = TokenBook::parse(&text, Path::new("t"))
                .expect_err("invalid")
                .to_string();
            assert!(err.contains(line), "{line} not in: {err}");
            assert!(
                !err.contains(&h) && !err.contains(secret) && !err.contains("12345678901"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_tokens_file_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens.toml");
        create_tokens_file(&path).expect("created");
        // 65534 is `nobody`: neither root nor the user these tests run as (root, in CI).
        std::os::unix::fs::chown(&path, Some(65534), None)
            .expect("chown the tokens file to nobody: this test needs to run as root");
        let err = TokenBook::load(&path).expect_err("owned by nobody");
        assert!(
            matches!(err, TokensError::Owner { owner: 65534, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("uid 65534"), "{err}");
        let (_, refusal) = list_tokens(&path).expect("listed whatever the owner");
        assert!(
            matches!(refusal, Some(TokensError::Owner { .. })),
            "{refusal:?}"
        );
    }

    #[test]
    fn created_file_is_private_and_valid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/tokens.toml");
        let token = create_tokens_file(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let book = TokenBook::load(&path).expect("valid");
        assert!(book.authenticate(&token).expect("known").is_operator());
        assert!(create_tokens_file(&path).is_err(), "never overwrites");
    }
}
