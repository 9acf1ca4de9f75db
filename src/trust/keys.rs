//! Ed25519 keys in the text forms of Nix's binary-cache keys (`NAME:BASE64`): parsing,
//! generating, and loading from an argument that is key text or the path of a key file (read
//! bounded, never through a final symlink); secret key material never reaches an error.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use super::*;

/// A named Ed25519 public key; its text form is `NAME:BASE64(32 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub(super) name: String,
    pub(super) key: VerifyingKey,
}

impl PublicKey {
    /// Parse `NAME:BASE64(32 bytes)` (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// [`TrustError::NotKeyText`], [`TrustError::BadName`], or [`TrustError::BadKey`] for
    /// bad base64, a wrong length, or bytes that are not a usable Ed25519 public key.
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        const KIND: &str = "public key";
        let (name, bytes) = decode_text::<PUBLIC_LEN>(KIND, text.trim(), false)?;
        let bad = |reason: &str| TrustError::BadKey {
            kind: KIND,
            name: name.clone(),
            reason: reason.into(),
        };
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| bad("the 32 bytes are not an Ed25519 public key"))?;
        if key.is_weak() {
            return Err(bad(
                "the 32 bytes are a weak (small-order) Ed25519 key, which proves nothing",
            ));
        }
        Ok(PublicKey { name, key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Check one signature of snapshot `id` with this key.
    ///
    /// # Errors
    /// [`TrustError::BadSignature`] when the signature is by another key name or does not
    /// verify (strict verification: no malleable or small-order encodings).
    pub fn verify_snapshot(&self, id: &[u8; 32], sig: &SignatureLine) -> Result<(), TrustError> {
        if sig.name == self.name
            && self
                .key
                .verify_strict(&snapshot_message(id), &sig.signature)
                .is_ok()
        {
            Ok(())
        } else {
            Err(TrustError::BadSignature {
                id: *id,
                name: self.name.clone(),
            })
        }
    }
}

impl FromStr for PublicKey {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<Self, TrustError> {
        Self::parse(s)
    }
}

impl fmt::Display for PublicKey {
    /// `NAME:BASE64(32 bytes)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A named Ed25519 secret key; its text form is `NAME:BASE64(32-byte seed || 32-byte public
/// key)`, as `nix-store --generate-binary-cache-key` writes. `Debug` does not show the key;
/// `Display` does (it is the key file's contents).
pub struct SecretKey {
    pub(super) name: String,
    pub(super) key: SigningKey,
}

impl SecretKey {
    /// Parse `NAME:BASE64(64 bytes)` (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// [`TrustError::NotKeyText`], [`TrustError::BadName`], [`TrustError::BadKey`] (bad
    /// base64 or a wrong length), or [`TrustError::KeyMismatch`] when the public half is not
    /// the public key of the seed.
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        let (name, bytes) = decode_text::<SECRET_LEN>("secret key", text.trim(), true)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&bytes[..32]);
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[32..] {
            return Err(TrustError::KeyMismatch { name });
        }
        Ok(SecretKey { name, key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Sign snapshot `id` (see [`snapshot_message`]).
    pub fn sign_snapshot(&self, id: &[u8; 32]) -> SignatureLine {
        SignatureLine {
            name: self.name.clone(),
            signature: self.key.sign(&snapshot_message(id)),
        }
    }

    /// Write the secret key to `secret_path` (mode 0600) and the public key to `public_path`
    /// (mode 0644), each as one line of key text. Neither file may exist: nothing is ever
    /// overwritten, and on failure no file made here is left behind.
    ///
    /// # Errors
    /// [`TrustError::WriteKeyFile`] naming the file (`AlreadyExists` when it exists).
    pub fn write_key_files(
        &self,
        secret_path: &Path,
        public_path: &Path,
    ) -> Result<(), TrustError> {
        let create = |path: &Path, mode: u32| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .map_err(|error| TrustError::WriteKeyFile {
                    path: path.to_owned(),
                    error,
                })
        };
        let write = |mut file: File, path: &Path, text: &str| {
            file.write_all(text.as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(|error| TrustError::WriteKeyFile {
                    path: path.to_owned(),
                    error,
                })
        };
        let secret_file = create(secret_path, 0o600)?;
        let result = create(public_path, 0o644).and_then(|public_file| {
            let secret_text = Zeroizing::new(self.to_string());
            write(secret_file, secret_path, &secret_text)
                .and_then(|()| write(public_file, public_path, &self.public().to_string()))
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(public_path);
                })
        });
        if result.is_err() {
            let _ = std::fs::remove_file(secret_path);
        }
        result
    }
}

impl FromStr for SecretKey {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<Self, TrustError> {
        Self::parse(s)
    }
}

impl fmt::Display for SecretKey {
    /// `NAME:BASE64(seed || public key)`: the secret itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        bytes[..32].copy_from_slice(self.key.as_bytes());
        bytes[32..].copy_from_slice(self.key.verifying_key().as_bytes());
        let b64 = Zeroizing::new(BASE64.encode(&bytes[..]));
        write!(f, "{}:{}", self.name, b64.as_str())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:<secret>)", self.name)
    }
}

/// Generate a new key pair named `name` from the operating system's random number generator.
///
/// # Errors
/// [`TrustError::BadName`], or [`TrustError::Random`] when no randomness is available.
pub fn generate(name: &str) -> Result<(SecretKey, PublicKey), TrustError> {
    check_name("secret key", name)?;
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut seed[..]).map_err(|e| TrustError::Random(e.to_string()))?;
    let secret = SecretKey {
        name: name.to_owned(),
        key: SigningKey::from_bytes(&seed),
    };
    let public = secret.public();
    Ok((secret, public))
}

/// Read a key file: a regular file of at most [`MAX_KEY_FILE`] bytes of UTF-8, opened without
/// following a symlink in its last component (nor blocking on a FIFO), trimmed.
fn read_key_file(path: &Path) -> Result<Zeroizing<String>, TrustError> {
    let io_err = |error: io::Error| TrustError::KeyFileIo {
        path: path.to_owned(),
        error,
    };
    let flags =
        rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(if is_link {
                TrustError::KeyFileSymlink {
                    path: path.to_owned(),
                }
            } else {
                io_err(e)
            });
        }
        Err(e) => return Err(io_err(e)),
    };
    if !file.metadata().map_err(io_err)?.is_file() {
        return Err(TrustError::KeyFileNotRegular {
            path: path.to_owned(),
        });
    }
    // Room for the whole bounded read up front: no reallocation leaves copies of a secret.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(TrustError::KeyFileTooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::str::from_utf8(&buf).map_err(|_| TrustError::KeyFileNotText {
        path: path.to_owned(),
    })?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// Load a key from an argument that is either key text or the path of a key file.
fn load_key<K>(
    kind: &'static str,
    arg: &str,
    parse: fn(&str) -> Result<K, TrustError>,
    shown: fn(&str) -> String,
) -> Result<K, TrustError> {
    if arg.trim().is_empty() {
        return Err(TrustError::EmptyArg { kind });
    }
    let as_text = match parse(arg) {
        Ok(k) => return Ok(k),
        Err(e) => e,
    };
    let path = Path::new(arg);
    match read_key_file(path) {
        Ok(text) => parse(&text).map_err(|error| TrustError::InFile {
            path: path.to_owned(),
            error: Box::new(error),
        }),
        // Maybe meant as key text and not a file that could be opened (missing, or its name
        // part leads through a file): the parse error helps more, and the argument is shown
        // only as `shown` shows it (for a secret key, not the key).
        Err(TrustError::KeyFileIo { .. }) if could_be_key_text(arg) => {
            Err(TrustError::NotKeyOrFile {
                kind,
                shown: shown(arg),
                error: Box::new(as_text),
            })
        }
        Err(e) => Err(e),
    }
}

/// Whether `arg` may be key text rather than a file's path: a name and a colon, or the base64
/// part alone (a key's length or more, as a name-less secret key would be).
fn could_be_key_text(arg: &str) -> bool {
    arg.contains(':')
        || BASE64
            .decode(arg.trim())
            .is_ok_and(|b| Zeroizing::new(b).len() >= PUBLIC_LEN)
}

/// Load a public key from `arg`: key text `NAME:BASE64`, or else the path of a file holding
/// it (a regular file, not a symlink, at most 4 KiB; surrounding whitespace ignored).
///
/// # Errors
/// The parse errors of [`PublicKey::parse`] (wrapped in [`TrustError::InFile`] for a file),
/// the `KeyFile*` errors, [`TrustError::NotKeyOrFile`] or [`TrustError::EmptyArg`].
pub fn load_public_key(arg: &str) -> Result<PublicKey, TrustError> {
    load_key("public key", arg, PublicKey::parse, |a| {
        a.chars().take(200).collect()
    })
}

/// Load a secret key from `arg`, as [`load_public_key`] does; errors show at most the name
/// part of the argument. Prefer a file: other users can read a process's arguments.
///
/// # Errors
/// As [`load_public_key`], with the parse errors of [`SecretKey::parse`].
pub fn load_secret_key(arg: &str) -> Result<SecretKey, TrustError> {
    load_key("secret key", arg, SecretKey::parse, |a| {
        match a.split_once(':') {
            Some((name, _)) => format!("{}:…", shown_name(name)),
            // No name: all of it may be the secret.
            None => "…".to_owned(),
        }
    })
}
