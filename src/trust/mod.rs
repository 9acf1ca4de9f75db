//! Signed snapshots: which snapshots a restore may trust.
//!
//! A CI cache can be written by whoever can write the CI cache (another branch, a pull request
//! job, a compromised build step), and restore usually runs as root and registers what it
//! writes as valid in the daemon's DB. Checksums catch damage, not malice: a hostile writer can
//! add a well-formed snapshot of their own. So when trusted keys are given, a snapshot is used
//! only if its id (the BLAKE3 of the whole sealed snapshot file, checked on every read) carries
//! a valid Ed25519 signature by one of them; the snapshot names every tree and NAR SHA-256 that
//! decides what is registered, so signing the id covers all of it. Not covered: freshness (an
//! attacker can offer an older snapshot signed by a trusted key), denial of service (deleting or
//! damaging the cache), and leaked secret keys. Keys use the text forms of Nix's binary-cache
//! keys (`NAME:BASE64`); key files are read bounded and never through a final symlink, and
//! secret key material never appears in an error message.

use std::io;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Longest key name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Largest key file read, in bytes.
pub const MAX_KEY_FILE: u64 = 4096;
/// Largest signature file accepted, in bytes.
pub const MAX_SIG_FILE: usize = 16 * 1024;
/// Most signatures (lines) a signature file may hold.
pub const MAX_SIG_LINES: usize = 64;
/// The environment variable naming trusted keys (see [`TrustedKeys::from_env`]).
pub const TRUSTED_KEYS_ENV: &str = "STORESYNC_TRUSTED_KEYS";
/// Prefix of every signed message: keeps these signatures from meaning anything elsewhere.
pub const SIGNATURE_CONTEXT: &[u8; 32] = b"storesync snapshot signature v1\0";

const PUBLIC_LEN: usize = 32;
const SECRET_LEN: usize = 64;
const SIGNATURE_LEN: usize = 64;
/// Longest base64 part decoded.
const MAX_BASE64: usize = 1024;

/// Errors of key handling and signature checks. Each says what is wrong and, where there is
/// one, which file; none contains secret key material.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A key name breaks the naming rules.
    #[error("{kind} name {name:?} is not valid: {reason}")]
    BadName {
        /// "public key", "secret key" or "signature".
        kind: &'static str,
        /// The name, cut to 64 characters.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Text that is not `NAME:BASE64` at all.
    #[error(
        "{kind} is not of the form NAME:BASE64 (as `nix-store --generate-binary-cache-key` writes)"
    )]
    NotKeyText {
        /// "public key", "secret key" or "signature".
        kind: &'static str,
    },
    /// The base64 part is not base64, or decodes to the wrong number of bytes, or is not an
    /// Ed25519 key.
    #[error("{kind} `{name}`: {reason}")]
    BadKey {
        /// "public key", "secret key" or "signature".
        kind: &'static str,
        /// The key name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The public half of a secret key is not the public key of its seed.
    #[error(
        "secret key `{name}`: its public half does not match its seed (the key text is damaged \
         or was pieced together from two keys)"
    )]
    KeyMismatch {
        /// The key name.
        name: String,
    },
    /// A key file's contents are wrong.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its contents.
        #[source]
        error: Box<TrustError>,
    },
    /// An argument is neither key text nor the name of an existing file.
    #[error("{kind} argument `{shown}` is neither a valid key ({error}) nor an existing file")]
    NotKeyOrFile {
        /// "public key" or "secret key".
        kind: &'static str,
        /// The argument (for a secret key only its name part).
        shown: String,
        /// Why it is not a valid key.
        #[source]
        error: Box<TrustError>,
    },
    /// An empty key argument.
    #[error("empty {kind} argument (give key text NAME:BASE64 or the path of a key file)")]
    EmptyArg {
        /// "public key" or "secret key".
        kind: &'static str,
    },
    /// A key file cannot be opened or read.
    #[error("key file {}: {error}", path.display())]
    KeyFileIo {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        error: io::Error,
    },
    /// A key file path names a symbolic link.
    #[error(
        "key file {}: is a symbolic link; key files are opened without following links, so \
         pass the file it points to (`readlink -f`)",
        path.display()
    )]
    KeyFileSymlink {
        /// The key file.
        path: PathBuf,
    },
    /// A key file path names a directory, device, FIFO or socket.
    #[error("key file {}: not a regular file", path.display())]
    KeyFileNotRegular {
        /// The key file.
        path: PathBuf,
    },
    /// A key file larger than [`MAX_KEY_FILE`].
    #[error("key file {}: larger than {MAX_KEY_FILE} bytes, so not a key file", path.display())]
    KeyFileTooLarge {
        /// The key file.
        path: PathBuf,
    },
    /// A key file that is not UTF-8 text.
    #[error("key file {}: not UTF-8 text, so not a key file", path.display())]
    KeyFileNotText {
        /// The key file.
        path: PathBuf,
    },
    /// A key file cannot be created or written (an existing file is never replaced).
    #[error("cannot write key file {}: {error}", path.display())]
    WriteKeyFile {
        /// The key file.
        path: PathBuf,
        /// The I/O error (`AlreadyExists` when the file exists).
        #[source]
        error: io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("cannot generate a key: the operating system's random number generator failed: {0}")]
    Random(String),
    /// [`TRUSTED_KEYS_ENV`] is set but holds no key (as when a CI variable is undefined).
    #[error(
        "{TRUSTED_KEYS_ENV} is set but names no key; unset it to restore without signature \
         checks, or give it key texts or key file paths"
    )]
    EnvEmpty,
    /// [`TRUSTED_KEYS_ENV`] is not valid UTF-8.
    #[error("{TRUSTED_KEYS_ENV} is not valid UTF-8")]
    EnvNotUnicode,
    /// An entry of [`TRUSTED_KEYS_ENV`] is not a usable key.
    #[error("{TRUSTED_KEYS_ENV}: {error}")]
    Env {
        /// What is wrong with the entry.
        #[source]
        error: Box<TrustError>,
    },
    /// A signature file that cannot be decoded (too large, not text, a malformed line).
    #[error("{}signature file is malformed: {reason}", snapshot_prefix(id.as_ref()))]
    BadSignatureFile {
        /// The snapshot the file belongs to, when known.
        id: Option<[u8; 32]>,
        /// What is wrong.
        reason: String,
    },
    /// Trusted keys were given but the snapshot has no signature.
    #[error(
        "snapshot {} is not signed; refusing it because trusted keys were given \
         (--trusted-key / {TRUSTED_KEYS_ENV})",
        short(id)
    )]
    Unsigned {
        /// The snapshot id.
        id: [u8; 32],
    },
    /// The snapshot's signatures are all by keys not trusted here.
    #[error(
        "snapshot {} is signed only by keys not trusted here ({}); refusing it (trusted: {})",
        short(id), names.join(", "), trusted.join(", ")
    )]
    NoTrustedSignature {
        /// The snapshot id.
        id: [u8; 32],
        /// Names of the keys that signed it.
        names: Vec<String>,
        /// Names of the trusted keys.
        trusted: Vec<String>,
    },
    /// A signature by a trusted key name that does not verify.
    #[error(
        "snapshot {}: the signature by trusted key `{name}` does not verify (the snapshot or \
         its signature was modified, or another key has the same name); refusing it",
        short(id)
    )]
    BadSignature {
        /// The snapshot id.
        id: [u8; 32],
        /// The trusted key name.
        name: String,
    },
}

fn short(id: &[u8; 32]) -> String {
    crate::hex::hex(&id[..6])
}

fn snapshot_prefix(id: Option<&[u8; 32]>) -> String {
    id.map(|id| format!("snapshot {}: ", short(id)))
        .unwrap_or_default()
}

/// A name as it may appear in a message: at most 64 characters (messages print it escaped).
fn shown_name(name: &str) -> String {
    name.chars().take(64).collect()
}

/// Check the naming rules: non-empty, at most [`MAX_NAME_LEN`] bytes, no `:`, `,`,
/// whitespace or control characters (`,` separates keys in [`TRUSTED_KEYS_ENV`]).
fn check_name(kind: &'static str, name: &str) -> Result<(), TrustError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 128 bytes"
    } else if name.contains(':') {
        "it contains `:`"
    } else if name.contains(',') {
        "it contains `,`"
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(TrustError::BadName {
        kind,
        name: shown_name(name),
        reason,
    })
}

/// Split `NAME:BASE64` and decode the base64 part into exactly `N` bytes. For secret keys
/// (`secret`) no detail of the base64 part is put in an error.
fn decode_text<const N: usize>(
    kind: &'static str,
    text: &str,
    secret: bool,
) -> Result<(String, Zeroizing<[u8; N]>), TrustError> {
    let (name, b64) = text
        .split_once(':')
        .ok_or(TrustError::NotKeyText { kind })?;
    check_name(kind, name)?;
    let bad = |reason: String| TrustError::BadKey {
        kind,
        name: name.to_owned(),
        reason,
    };
    // Keys and signatures are under 100 characters; far longer text is not decoded.
    if b64.len() > MAX_BASE64 {
        return Err(bad(format!(
            "the base64 part is {} characters, far too long for {N} bytes",
            b64.len()
        )));
    }
    let decoded = Zeroizing::new(BASE64.decode(b64).map_err(|e| {
        if secret {
            bad("the part after the name is not valid base64".into())
        } else {
            bad(format!("the part after the name is not valid base64 ({e})"))
        }
    })?);
    if decoded.len() != N {
        let hint = match (kind, decoded.len()) {
            ("public key", SECRET_LEN) => " (is this the secret key?)",
            ("secret key", PUBLIC_LEN) => " (is this the public key?)",
            _ => "",
        };
        return Err(bad(format!(
            "expected {N} bytes after base64 decoding, got {}{hint}",
            decoded.len()
        )));
    }
    let mut out = Zeroizing::new([0u8; N]);
    out.copy_from_slice(&decoded);
    Ok((name.to_owned(), out))
}

/// The message signed for a snapshot: [`SIGNATURE_CONTEXT`] followed by the 32-byte id.
pub fn snapshot_message(id: &[u8; 32]) -> [u8; 64] {
    let mut m = [0u8; 64];
    m[..32].copy_from_slice(SIGNATURE_CONTEXT);
    m[32..].copy_from_slice(id);
    m
}

/// Key of the detached signature file of a snapshot in the cache: `snapshots/<id>.sig`.
pub fn signature_key(id: &[u8; 32]) -> String {
    format!("snapshots/{}.sig", crate::hex::hex(id))
}

mod keys;
mod sigfile;
mod trusted;

pub use keys::{generate, load_public_key, load_secret_key, PublicKey, SecretKey};
pub use sigfile::{decode_signatures, encode_signatures, merge, SignatureLine};
pub use trusted::TrustedKeys;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    // RFC 8032 test 1's key; the signature below was made by another implementation (Python
    // `cryptography`) over `SIGNATURE_CONTEXT || 00 01 .. 1f`.
    const SECRET: &str = "test-1:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2DXWpgBgrEKt9VL/tPJZAc6DuFy89qmIyWvAhpo9wdRGg==";
    const PUBLIC: &str = "test-1:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    const GOLDEN_SIG: &str = "test-1:usX5JdVXof42cLwrvnEBf6477WEsXqyt+2DvZzKu1rYLlCVXpEZTE8AwKZYO3cllWHD1XjirWfZudkkNDQXyBQ==";
    // The public key of cache.nixos.org, as Nix users write it.
    const NIXOS: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    fn id(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn counting_id() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn key_texts_round_trip() {
        let secret = SecretKey::parse(SECRET).unwrap();
        assert_eq!(secret.to_string(), SECRET);
        assert_eq!(secret.public().to_string(), PUBLIC);
        assert_eq!(PublicKey::parse(PUBLIC).unwrap(), secret.public());
        assert_eq!(PublicKey::parse(NIXOS).unwrap().to_string(), NIXOS);
        assert_eq!(
            PublicKey::parse(&format!(" {NIXOS}\n")).unwrap().name(),
            "cache.nixos.org-1"
        );
        let (s, p) = generate("ci-2025").unwrap();
        assert_eq!(s.public(), p);
        assert_eq!(SecretKey::parse(&s.to_string()).unwrap().public(), p);
        assert_eq!(p.to_string().parse::<PublicKey>().unwrap(), p);
        assert!(!format!("{s:?}").contains(&s.to_string()[8..]));
    }

    #[test]
    fn signature_matches_another_implementation() {
        let secret = SecretKey::parse(SECRET).unwrap();
        let sig = secret.sign_snapshot(&counting_id());
        assert_eq!(sig.to_string(), GOLDEN_SIG);
        assert_eq!(SignatureLine::parse(GOLDEN_SIG).unwrap(), sig);
        let trusted = TrustedKeys::from_args(&[PUBLIC.to_owned()]).unwrap();
        let file = encode_signatures(&[sig]);
        assert_eq!(
            trusted.check_snapshot(&counting_id(), Some(&file)).unwrap(),
            "test-1"
        );
    }

    #[test]
    fn a_secret_key_with_a_foreign_public_half_is_refused() {
        let (a, _) = generate("k").unwrap();
        let (_, b) = generate("k").unwrap();
        let mut bytes = BASE64
            .decode(a.to_string().split_once(':').unwrap().1)
            .unwrap();
        bytes[32..].copy_from_slice(b.key.as_bytes());
        let err = SecretKey::parse(&format!("k:{}", BASE64.encode(&bytes))).unwrap_err();
        assert!(matches!(err, TrustError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not match its seed"), "{err}");
    }

    #[test]
    fn bad_key_texts_are_refused_with_reasons() {
        let msg = |t: &str| PublicKey::parse(t).unwrap_err().to_string();
        assert!(msg("no-colon").contains("NAME:BASE64"));
        assert!(msg(":11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").contains("empty"));
        assert!(msg("a b:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").contains("whitespace"));
        assert!(msg("a,b:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").contains("`,`"));
        assert!(msg("a\u{7}:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").contains("control"));
        let long = "n".repeat(129);
        assert!(msg(&format!(
            "{long}:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        ))
        .contains("128"));
        assert!(PublicKey::parse(&format!(
            "{}:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
            &long[1..]
        ))
        .is_ok());
        assert!(msg("k:not base64!").contains("not valid base64"));
        // Non-canonical padding and trailing bits are refused too.
        assert!(msg("k:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo").contains("base64"));
        assert!(msg("k:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURp=").contains("base64"));
        // The identity point is a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(msg(&format!("k:{}", BASE64.encode(identity))).contains("weak"));
    }

    #[test]
    fn wrong_length_base64_is_refused() {
        for (n, len) in [(31, 32), (33, 32)] {
            let t = format!("k:{}", BASE64.encode(vec![9u8; n]));
            let e = PublicKey::parse(&t).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "expected {len} bytes after base64 decoding, got {n}"
                )),
                "{e}"
            );
        }
        let e = SecretKey::parse(&format!("k:{}", BASE64.encode([1u8; 32])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected 64 bytes") && e.contains("got 32 (is this the public key?)"),
            "{e}"
        );
        let e = SignatureLine::parse(&format!("k:{}", BASE64.encode([1u8; 63])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected 64 bytes") && e.contains("got 63"),
            "{e}"
        );
        let e = PublicKey::parse(&format!("k:{}", "A".repeat(10_000)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn secret_key_errors_do_not_show_the_key() {
        let bad = SECRET.replace('n', "!");
        let e = SecretKey::parse(&bad).unwrap_err().to_string();
        assert!(!e.contains(&bad[8..20]), "{e}");
        let e = load_secret_key(&bad).unwrap_err().to_string();
        assert!(e.contains("test-1:…") && !e.contains(&bad[8..20]), "{e}");
    }

    /// A secret key argument that is no file is not shown either when it is key text without
    /// its `NAME:` (the base64 alone), nor when it cannot be opened for another reason than
    /// ENOENT (here ENOTDIR: a name part that leads through a file). Found by review: both
    /// were said as a key file's path, the secret in full on stderr (`STORESYNC_SIGN_KEY` too).
    #[test]
    fn a_secret_key_argument_that_is_no_file_is_not_shown() {
        let b64 = SECRET.split_once(':').unwrap().1;
        let e = load_secret_key(b64).unwrap_err().to_string();
        assert!(!e.contains(&b64[..20]) && e.contains("neither"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, "").unwrap();
        let damaged = format!("{}/{}", file.display(), SECRET.replace('n', "!"));
        let e = load_secret_key(&damaged).unwrap_err().to_string();
        assert!(!e.contains(&damaged[damaged.len() - 40..]), "{e}");
        // A key file that is not there is still named.
        let missing = d.path().join("ci.sec");
        let e = load_secret_key(missing.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ci.sec") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn a_tampered_id_is_refused() {
        let (s, p) = generate("ci").unwrap();
        let trusted = TrustedKeys::from_args(&[p.to_string()]).unwrap();
        let file = encode_signatures(&[s.sign_snapshot(&id(1))]);
        assert_eq!(trusted.check_snapshot(&id(1), Some(&file)).unwrap(), "ci");
        let mut other = id(1);
        other[31] ^= 1;
        let err = trusted.check_snapshot(&other, Some(&file)).unwrap_err();
        assert!(
            matches!(&err, TrustError::BadSignature { name, .. } if name == "ci"),
            "{err}"
        );
        assert!(err.to_string().contains("does not verify"), "{err}");
        // A modified signature byte too.
        let mut sig = s.sign_snapshot(&id(1)).to_bytes();
        sig[5] ^= 0x40;
        let line = format!("ci:{}", BASE64.encode(sig));
        let err = trusted
            .check_snapshot(&id(1), Some(line.as_bytes()))
            .unwrap_err();
        assert!(matches!(err, TrustError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn signatures_by_untrusted_keys_are_refused() {
        let (mallory, _) = generate("ci").unwrap(); // same name, other key
        let (other, _) = generate("someone-else").unwrap();
        let (_, ours) = generate("ci").unwrap();
        let trusted = TrustedKeys::from_args(&[ours.to_string()]).unwrap();
        let file = encode_signatures(&[other.sign_snapshot(&id(2))]);
        let err = trusted.check_snapshot(&id(2), Some(&file)).unwrap_err();
        match &err {
            TrustError::NoTrustedSignature { names, trusted, .. } => {
                assert_eq!(
                    (names.as_slice(), trusted.as_slice()),
                    (&["someone-else".to_owned()][..], &["ci".to_owned()][..])
                );
            }
            e => panic!("{e}"),
        }
        assert!(
            err.to_string().contains("not trusted here (someone-else)"),
            "{err}"
        );
        let file = encode_signatures(&[mallory.sign_snapshot(&id(2))]);
        assert!(matches!(
            trusted.check_snapshot(&id(2), Some(&file)),
            Err(TrustError::BadSignature { .. })
        ));
    }

    #[test]
    fn unsigned_snapshots_are_refused() {
        let (_, p) = generate("ci").unwrap();
        let trusted = TrustedKeys::from_args(&[p.to_string()]).unwrap();
        let err = trusted.check_snapshot(&id(0xab), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot abababababab is not signed; refusing it because trusted keys were given \
             (--trusted-key / STORESYNC_TRUSTED_KEYS)"
        );
        assert!(matches!(
            trusted.check_snapshot(&id(1), Some(b"\n \n")),
            Err(TrustError::Unsigned { .. })
        ));
    }

    #[test]
    fn any_trusted_signature_that_verifies_is_enough() {
        let (a, pa) = generate("a").unwrap();
        let (b, pb) = generate("b").unwrap();
        let mut trusted = TrustedKeys::from_args(&[pa.to_string()]).unwrap();
        trusted.extend(TrustedKeys::from_args(&[pb.to_string(), pa.to_string()]).unwrap());
        assert_eq!(trusted.keys().len(), 2);
        let mut broken = a.sign_snapshot(&id(9)).to_bytes();
        broken[0] ^= 1;
        let file = format!("a:{}\n{}\n", BASE64.encode(broken), b.sign_snapshot(&id(3)));
        assert_eq!(
            trusted
                .check_snapshot(&id(3), Some(file.as_bytes()))
                .unwrap(),
            "b"
        );
    }

    #[test]
    fn signature_files_round_trip_and_merge() {
        let (a, _) = generate("a").unwrap();
        let (b, _) = generate("b").unwrap();
        let (a2, _) = generate("a").unwrap();
        let file = merge(None, a.sign_snapshot(&id(1))).unwrap();
        let file = merge(Some(&file), b.sign_snapshot(&id(1))).unwrap();
        assert_eq!(
            decode_signatures(&file).unwrap(),
            vec![a.sign_snapshot(&id(1)), b.sign_snapshot(&id(1))]
        );
        let file = merge(Some(&file), a2.sign_snapshot(&id(1))).unwrap();
        assert_eq!(
            decode_signatures(&file).unwrap(),
            vec![a2.sign_snapshot(&id(1)), b.sign_snapshot(&id(1))]
        );
        assert_eq!(String::from_utf8(file).unwrap().lines().count(), 2);
        assert!(merge(Some(b"garbage"), a.sign_snapshot(&id(1))).is_err());
        // Full files take no new name, but a signature by a present name still replaces.
        let keys: Vec<_> = (0..MAX_SIG_LINES)
            .map(|i| generate(&format!("k{i}")).unwrap().0)
            .collect();
        let full = encode_signatures(
            &keys
                .iter()
                .map(|k| k.sign_snapshot(&id(1)))
                .collect::<Vec<_>>(),
        );
        assert!(full.len() <= MAX_SIG_FILE);
        assert!(merge(Some(&full), a.sign_snapshot(&id(1)))
            .unwrap_err()
            .to_string()
            .contains("no room"));
        assert!(merge(Some(&full), keys[3].sign_snapshot(&id(2))).is_ok());
        assert_eq!(
            signature_key(&id(0xab)),
            format!("snapshots/{}.sig", "ab".repeat(32))
        );
    }

    #[test]
    fn malformed_and_oversized_signature_files_are_refused() {
        let (a, _) = generate("a").unwrap();
        let line = a.sign_snapshot(&id(1)).to_string();
        let msg = |b: &[u8]| decode_signatures(b).unwrap_err().to_string();
        assert!(msg(&vec![b'\n'; MAX_SIG_FILE + 1]).contains("more than the 16384 allowed"));
        assert!(msg(&[0xff, 0xfe]).contains("not UTF-8"));
        assert!(msg(format!("{line}\nnonsense\n").as_bytes()).contains("line 2:"));
        assert!(msg(format!("{line}\n{line}\n").as_bytes()).contains("second signature by key `a`"));
        let many: String = (0..=MAX_SIG_LINES)
            .map(|i| format!("k{i}:{}\n", &line[2..]))
            .collect();
        assert!(many.len() <= MAX_SIG_FILE);
        assert!(msg(many.as_bytes()).contains("more than 64 signatures"));
        // Through check_snapshot the message names the snapshot.
        let trusted = TrustedKeys::from_args(&[a.public().to_string()]).unwrap();
        let err = trusted
            .check_snapshot(&id(0xcd), Some(b"x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("snapshot cdcdcdcdcdcd: signature file is malformed: line 1:"),
            "{err}"
        );
        // CRLF and blank lines are tolerated.
        assert_eq!(
            decode_signatures(format!("\r\n{line}\r\n\r\n").as_bytes())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn key_files_are_written_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (sp, pp) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
        let (s, p) = generate("dev").unwrap();
        s.write_key_files(&sp, &pp).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sp), 0o600);
        assert_eq!(mode(&pp) & 0o600, 0o600);
        assert_eq!(load_secret_key(sp.to_str().unwrap()).unwrap().public(), p);
        assert_eq!(load_public_key(pp.to_str().unwrap()).unwrap(), p);
        let (s2, _) = generate("dev").unwrap();
        let err = s2
            .write_key_files(&sp, &dir.path().join("other.pub"))
            .unwrap_err();
        assert!(
            matches!(&err, TrustError::WriteKeyFile { error, .. } if error.kind() == io::ErrorKind::AlreadyExists)
        );
        assert!(!dir.path().join("other.pub").exists());
        // The public file exists: the new secret file is removed again.
        let new_sec = dir.path().join("new.sec");
        assert!(s2.write_key_files(&new_sec, &pp).is_err());
        assert!(!new_sec.exists());
        assert_eq!(load_public_key(pp.to_str().unwrap()).unwrap(), p);
    }

    #[test]
    fn key_files_must_be_small_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        let arg = |n: &str| path(n).to_str().unwrap().to_owned();
        std::fs::write(path("ok.pub"), format!("\n  {PUBLIC}\n\n")).unwrap();
        assert_eq!(load_public_key(&arg("ok.pub")).unwrap().to_string(), PUBLIC);
        std::os::unix::fs::symlink(path("ok.pub"), path("link.pub")).unwrap();
        let err = load_public_key(&arg("link.pub")).unwrap_err();
        assert!(matches!(err, TrustError::KeyFileSymlink { .. }), "{err}");
        assert!(err.to_string().contains("readlink -f"));
        std::fs::create_dir(path("dir")).unwrap();
        assert!(matches!(
            load_public_key(&arg("dir")),
            Err(TrustError::KeyFileNotRegular { .. })
        ));
        let mut big = PUBLIC.to_owned();
        big.push_str(&" ".repeat(5000));
        std::fs::write(path("big.pub"), &big).unwrap();
        assert!(matches!(
            load_public_key(&arg("big.pub")),
            Err(TrustError::KeyFileTooLarge { .. })
        ));
        std::fs::write(path("bin.pub"), [0xffu8, 0, 1]).unwrap();
        assert!(matches!(
            load_public_key(&arg("bin.pub")),
            Err(TrustError::KeyFileNotText { .. })
        ));
        // A file whose contents are wrong is named with the reason.
        std::fs::write(path("sec-as-pub"), SECRET).unwrap();
        let err = load_public_key(&arg("sec-as-pub")).unwrap_err().to_string();
        assert!(
            err.starts_with(&arg("sec-as-pub")) && err.contains("got 64 (is this the secret key?)"),
            "{err}"
        );
        // A FIFO is refused without blocking.
        let fifo = path("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            load_public_key(&arg("fifo")),
            Err(TrustError::KeyFileNotRegular { .. })
        ));
        // Missing: key-looking text gets the parse error, a path the I/O error.
        let err = load_public_key("k:short").unwrap_err().to_string();
        assert!(
            err.contains("neither a valid key") && err.contains("base64"),
            "{err}"
        );
        let err = load_public_key(&arg("missing.pub")).unwrap_err();
        assert!(matches!(err, TrustError::KeyFileIo { .. }), "{err}");
        assert!(matches!(
            load_public_key(" "),
            Err(TrustError::EmptyArg { .. })
        ));
    }

    #[test]
    fn trusted_key_lists_split_on_commas_and_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ci.pub");
        let (_, p) = generate("ci").unwrap();
        std::fs::write(&file, p.to_string()).unwrap();
        let list = format!(" {PUBLIC},{NIXOS}\n\t{},,{PUBLIC} ", file.display());
        let keys = TrustedKeys::parse_list(&list).unwrap();
        let names: Vec<_> = keys.keys().iter().map(|k| k.name()).collect();
        assert_eq!(names, ["test-1", "cache.nixos.org-1", "ci"]);
        assert!(TrustedKeys::parse_list(" ,\n").unwrap().is_empty());
        assert!(TrustedKeys::parse_list(&format!("{PUBLIC},bogus:AAAA")).is_err());
        assert!(TrustedKeys::new().is_empty());
        // The environment variable itself is unset in tests: no keys.
        if std::env::var_os(TRUSTED_KEYS_ENV).is_none() {
            assert!(TrustedKeys::from_env().unwrap().is_empty());
        }
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = TrustError::Env {
            error: Box::new(TrustedKeys::parse_list("k:AAAA").unwrap_err()),
        };
        assert!(
            e.to_string()
                .starts_with("STORESYNC_TRUSTED_KEYS: public key argument `k:AAAA`"),
            "{e}"
        );
        assert!(TrustError::EnvEmpty.to_string().contains("unset it"));
    }

    proptest! {
        #[test]
        fn decode_signatures_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let _ = decode_signatures(&bytes);
        }

        #[test]
        fn decode_signatures_never_panics_on_near_misses(
            lines in proptest::collection::vec("[a-z:,\\- ]{0,12}:[A-Za-z0-9+/=]{0,100}", 0..70)
        ) {
            let _ = decode_signatures(lines.join("\n").as_bytes());
            let trusted = TrustedKeys::parse_list(PUBLIC).unwrap();
            let _ = trusted.check_snapshot(&id(1), Some(lines.join("\n").as_bytes()));
        }

        #[test]
        fn key_text_parsing_never_panics(text in "\\PC{0,120}") {
            let _ = PublicKey::parse(&text);
            let _ = SecretKey::parse(&text);
            let _ = SignatureLine::parse(&text);
        }
    }
}
