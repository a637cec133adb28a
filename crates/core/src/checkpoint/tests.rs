use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, STANDARD_NO_PAD, URL_SAFE};
use proptest::prelude::*;

use super::*;
use crate::merkle::{Blake3Hasher, MerkleHasher, MerkleTree};
use crate::pb;
use crate::signing::{self, SigningDomain, SigningKey};

const ORIGIN: &str = "wasteledger.baotou.example/pilot";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn ledger() -> Digest {
    Digest([7; 32])
}

fn sample() -> Checkpoint {
    Checkpoint {
        origin: ORIGIN.to_owned(),
        size: 42,
        root: Digest([1; 32]),
        map_root: Digest([0xfb; 32]),
        time_ms: 1_700_000_000_000,
    }
}

fn b64(digest: &Digest) -> String {
    BASE64.encode(digest.as_bytes())
}

/// The sample body, spelled out independently of `Checkpoint::body`.
fn sample_body() -> String {
    let c = sample();
    format!(
        "{ORIGIN}\n42\n{}\nmap {}\ntime 1700000000000\n",
        b64(&c.root),
        b64(&c.map_root)
    )
}

// Witnesses of the test genesis: (node id, name, group, key seed).
const GEN_A: (u64, &str, &str, u8) = (1, "gen-a.example", "generator", 11);
const GEN_B: (u64, &str, &str, u8) = (2, "gen-b.example", "generator", 12);
const TRANS_A: (u64, &str, &str, u8) = (3, "trans-a.example", "transporter", 13);
const FAC_A: (u64, &str, &str, u8) = (4, "fac-a.example", "facility", 14);
const NODES: [(u64, &str, &str, u8); 4] = [GEN_A, GEN_B, TRANS_A, FAC_A];

fn node((node_id, name, group, seed): (u64, &str, &str, u8)) -> pb::NodeWitness {
    pb::NodeWitness {
        node_id,
        name: name.to_owned(),
        group: group.to_owned(),
        ed25519: key(seed).verifying_key().to_bytes().to_vec(),
    }
}

fn genesis(min_total: u32, groups: &[(&str, u32)]) -> pb::Genesis {
    pb::Genesis {
        ledger_name: ORIGIN.to_owned(),
        nodes: NODES.iter().copied().map(node).collect(),
        checkpoint_policy: Some(pb::TrustPolicy {
            min_total,
            groups: groups
                .iter()
                .map(|&(group, min_signers)| pb::GroupRequirement {
                    group: group.to_owned(),
                    min_signers,
                })
                .collect(),
        }),
        ..Default::default()
    }
}

/// "1 generator + 1 transporter + 1 facility, min_total 2".
fn three_group_set() -> WitnessSet {
    let genesis = genesis(2, &[("generator", 1), ("transporter", 1), ("facility", 1)]);
    match WitnessSet::from_genesis(&genesis) {
        Ok(set) => set,
        Err(err) => panic!("test genesis refused: {err}"),
    }
}

fn sig(witness: (u64, &str, &str, u8), checkpoint: &Checkpoint) -> NoteSignature {
    cosign(&key(witness.3), witness.1, &ledger(), checkpoint)
}

fn signed_by(witnesses: &[(u64, &str, &str, u8)]) -> SignedCheckpoint {
    let checkpoint = sample();
    SignedCheckpoint {
        signatures: witnesses.iter().map(|&w| sig(w, &checkpoint)).collect(),
        checkpoint,
    }
}

fn names(report: &PolicyReport) -> Vec<&str> {
    report.signers.iter().map(|s| s.name.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Body
// ---------------------------------------------------------------------------------------------

#[test]
fn body_has_the_exact_format() {
    let c = sample();
    assert_eq!(c.body(), sample_body());
    assert_eq!(
        c.body(),
        "wasteledger.baotou.example/pilot\n42\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n\
         map +/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/s=\ntime 1700000000000\n"
    );
    assert_eq!(c.hash(), Purpose::Checkpoint.hash(sample_body().as_bytes()));
}

#[test]
fn body_round_trips_including_extremes() {
    let extremes = [
        sample(),
        Checkpoint {
            size: 0,
            time_ms: 0,
            ..sample()
        },
        Checkpoint {
            size: u64::MAX,
            time_ms: i64::MAX,
            ..sample()
        },
        Checkpoint {
            time_ms: i64::MIN,
            ..sample()
        },
        Checkpoint {
            time_ms: -1,
            ..sample()
        },
        Checkpoint {
            origin: "x".repeat(MAX_NAME_LEN),
            ..sample()
        },
        Checkpoint {
            origin: "日志 with inner spaces".to_owned(),
            ..sample()
        },
    ];
    for checkpoint in extremes {
        assert_eq!(
            Checkpoint::parse_body(&checkpoint.body()),
            Ok(checkpoint.clone())
        );
    }
}

#[test]
fn new_validates_the_origin() {
    let c = sample();
    assert_eq!(
        Checkpoint::new(ORIGIN, c.size, c.root, c.map_root, c.time_ms),
        Ok(c.clone())
    );
    assert_eq!(
        Checkpoint::new("two\nlines", c.size, c.root, c.map_root, c.time_ms),
        Err(CheckpointError::InvalidOrigin {
            reason: "contains a control character"
        })
    );
}

#[test]
fn hash_depends_on_every_field() {
    let base = sample();
    let variants = [
        Checkpoint {
            origin: "other".to_owned(),
            ..sample()
        },
        Checkpoint {
            size: 43,
            ..sample()
        },
        Checkpoint {
            root: Digest([2; 32]),
            ..sample()
        },
        Checkpoint {
            map_root: Digest([2; 32]),
            ..sample()
        },
        Checkpoint {
            time_ms: 1,
            ..sample()
        },
    ];
    for variant in variants {
        assert_ne!(variant.hash(), base.hash(), "{variant:?}");
    }
}

#[test]
fn parser_rejects_non_canonical_bodies() {
    use CheckpointError as E;
    let good = sample_body();
    let root = b64(&sample().root);
    let map = b64(&sample().map_root);
    // Replaces one line (0-based) of the good body.
    let with_line = |index: usize, line: &str| {
        let mut lines: Vec<&str> = good.lines().collect();
        lines[index] = line;
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    let invalid_origin = |reason| E::InvalidOrigin { reason };
    let invalid_size = |text: &str| E::InvalidSize {
        text: text.to_owned(),
    };
    let invalid_root = |text: &str| E::InvalidHash {
        field: "root",
        text: text.to_owned(),
    };
    let invalid_time = |text: &str| E::InvalidTime {
        text: text.to_owned(),
    };
    let control = "contains a control character";
    let space = "starts or ends with white space";

    let cases: Vec<(&str, String, CheckpointError)> = vec![
        ("empty", String::new(), E::MissingFinalNewline),
        (
            "no final newline",
            good.trim_end_matches('\n').to_owned(),
            E::MissingFinalNewline,
        ),
        (
            "trailing blank line",
            format!("{good}\n"),
            E::BodyLineCount { found: 6 },
        ),
        (
            "extra line",
            format!("{good}extra 1\n"),
            E::BodyLineCount { found: 6 },
        ),
        (
            "missing time line",
            good.lines().take(4).map(|l| format!("{l}\n")).collect(),
            E::BodyLineCount { found: 4 },
        ),
        (
            "only newline",
            "\n".to_owned(),
            E::BodyLineCount { found: 1 },
        ),
        ("CRLF", good.replace('\n', "\r\n"), invalid_origin(control)),
        ("empty origin", with_line(0, ""), invalid_origin("is empty")),
        (
            "origin leading space",
            with_line(0, &format!(" {ORIGIN}")),
            invalid_origin(space),
        ),
        (
            "origin trailing space",
            with_line(0, &format!("{ORIGIN} ")),
            invalid_origin(space),
        ),
        (
            "origin trailing no-break space",
            with_line(0, &format!("{ORIGIN}\u{a0}")),
            invalid_origin(space),
        ),
        (
            "origin tab",
            with_line(0, "wasteledger\tpilot"),
            invalid_origin(control),
        ),
        (
            "origin DEL",
            with_line(0, "wasteledger\u{7f}"),
            invalid_origin(control),
        ),
        (
            "origin C1 control",
            with_line(0, "wasteledger\u{85}"),
            invalid_origin(control),
        ),
        (
            "origin too long",
            with_line(0, &"x".repeat(MAX_NAME_LEN + 1)),
            invalid_origin("is longer than 255 bytes"),
        ),
        (
            "size leading zero",
            with_line(1, "042"),
            invalid_size("042"),
        ),
        ("size double zero", with_line(1, "00"), invalid_size("00")),
        ("size plus", with_line(1, "+42"), invalid_size("+42")),
        ("size negative", with_line(1, "-1"), invalid_size("-1")),
        ("size empty", with_line(1, ""), invalid_size("")),
        ("size space", with_line(1, " 42"), invalid_size(" 42")),
        ("size hex", with_line(1, "0x2a"), invalid_size("0x2a")),
        ("size fraction", with_line(1, "42.0"), invalid_size("42.0")),
        ("size underscore", with_line(1, "4_2"), invalid_size("4_2")),
        (
            "size overflow",
            with_line(1, "18446744073709551616"),
            invalid_size("18446744073709551616"),
        ),
        (
            "size full-width digits",
            with_line(1, "４２"),
            invalid_size("４２"),
        ),
        (
            "root unpadded",
            with_line(2, root.trim_end_matches('=')),
            invalid_root(root.trim_end_matches('=')),
        ),
        (
            "root non-zero trailing bits",
            with_line(2, &root.replace("E=", "F=")),
            invalid_root(&root.replace("E=", "F=")),
        ),
        (
            "root trailing space",
            with_line(2, &format!("{root} ")),
            invalid_root(&format!("{root} ")),
        ),
        (
            "root hex",
            with_line(2, &sample().root.to_hex()),
            invalid_root(&sample().root.to_hex()),
        ),
        (
            "root 31 bytes",
            with_line(2, &BASE64.encode([1; 31])),
            invalid_root(&BASE64.encode([1; 31])),
        ),
        (
            "root 33 bytes",
            with_line(2, &BASE64.encode([1; 33])),
            invalid_root(&BASE64.encode([1; 33])),
        ),
        (
            "map root URL-safe alphabet",
            with_line(3, &format!("map {}", URL_SAFE.encode([0xfb; 32]))),
            E::InvalidHash {
                field: "map root",
                text: URL_SAFE.encode([0xfb; 32]),
            },
        ),
        (
            "map root unpadded",
            with_line(3, &format!("map {}", STANDARD_NO_PAD.encode([0xfb; 32]))),
            E::InvalidHash {
                field: "map root",
                text: STANDARD_NO_PAD.encode([0xfb; 32]),
            },
        ),
        (
            "map double space",
            with_line(3, &format!("map  {map}")),
            E::InvalidHash {
                field: "map root",
                text: format!(" {map}"),
            },
        ),
        (
            "map capitalised",
            with_line(3, &format!("Map {map}")),
            E::MissingExtension {
                line: 4,
                expected: "map ",
            },
        ),
        (
            "map tab",
            with_line(3, &format!("map\t{map}")),
            E::MissingExtension {
                line: 4,
                expected: "map ",
            },
        ),
        (
            "extensions swapped",
            format!("{ORIGIN}\n42\n{root}\ntime 1700000000000\nmap {map}\n"),
            E::MissingExtension {
                line: 4,
                expected: "map ",
            },
        ),
        (
            "time misspelled",
            with_line(4, "times 1700000000000"),
            E::MissingExtension {
                line: 5,
                expected: "time ",
            },
        ),
        (
            "time leading zero",
            with_line(4, "time 01"),
            invalid_time("01"),
        ),
        ("time plus", with_line(4, "time +1"), invalid_time("+1")),
        (
            "time minus zero",
            with_line(4, "time -0"),
            invalid_time("-0"),
        ),
        (
            "time minus leading zero",
            with_line(4, "time -01"),
            invalid_time("-01"),
        ),
        ("time lone minus", with_line(4, "time -"), invalid_time("-")),
        ("time empty", with_line(4, "time "), invalid_time("")),
        (
            "time double space",
            with_line(4, "time  1"),
            invalid_time(" 1"),
        ),
        (
            "time fraction",
            with_line(4, "time 1.5"),
            invalid_time("1.5"),
        ),
        (
            "time overflow",
            with_line(4, "time 9223372036854775808"),
            invalid_time("9223372036854775808"),
        ),
        (
            "time underflow",
            with_line(4, "time -9223372036854775809"),
            invalid_time("-9223372036854775809"),
        ),
    ];
    for (name, text, expected) in cases {
        assert_eq!(
            Checkpoint::parse_body(&text),
            Err(expected),
            "case {name:?}: {text:?}"
        );
    }
}

#[test]
fn error_text_is_bounded() {
    let long = "9".repeat(10_000);
    let text = sample_body().replace("\n42\n", &format!("\n{long}\n"));
    let err = Checkpoint::parse_body(&text).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.len() < 300));
}

// ---------------------------------------------------------------------------------------------
// Signed note
// ---------------------------------------------------------------------------------------------

/// A signature line built by hand from raw parts.
fn line(name: &str, blob: &[u8]) -> String {
    format!("\u{2014} {name} {}\n", BASE64.encode(blob))
}

fn good_blob() -> Vec<u8> {
    let s = sig(GEN_A, &sample());
    [&s.key_hint[..], &s.signature[..]].concat()
}

#[test]
fn note_has_the_exact_format_and_round_trips() {
    let note = signed_by(&[GEN_A, TRANS_A]);
    let text = note.to_note();
    let a = &note.signatures[0];
    let t = &note.signatures[1];
    let expected = format!(
        "{}\n\u{2014} gen-a.example {}\n\u{2014} trans-a.example {}\n",
        sample_body(),
        BASE64.encode([&a.key_hint[..], &a.signature[..]].concat()),
        BASE64.encode([&t.key_hint[..], &t.signature[..]].concat()),
    );
    assert_eq!(text, expected);
    assert_eq!(SignedCheckpoint::parse_note(&text), Ok(note));
}

#[test]
fn cosign_uses_key_hint_and_checkpoint_domain() {
    let k = key(GEN_A.3);
    let s = sig(GEN_A, &sample());
    assert_eq!(s.name, GEN_A.1);
    assert_eq!(
        s.key_hint[..],
        signing::key_id(&k.verifying_key()).as_bytes()[..4]
    );
    assert_eq!(key_hint(&k.verifying_key()), s.key_hint);
    let body = sample().body();
    assert!(
        signing::verify(
            &k.verifying_key(),
            SigningDomain::Checkpoint,
            &ledger(),
            body.as_bytes(),
            &s.signature
        )
        .is_ok()
    );
    assert!(
        signing::verify(
            &k.verifying_key(),
            SigningDomain::Event,
            &ledger(),
            body.as_bytes(),
            &s.signature
        )
        .is_err()
    );
}

#[test]
fn note_limits() {
    let body = sample_body();
    let one = line("w", &good_blob());
    let hundred = format!("{body}\n{}", one.repeat(MAX_SIGNATURES));
    assert_eq!(
        SignedCheckpoint::parse_note(&hundred).map(|n| n.signatures.len()),
        Ok(MAX_SIGNATURES)
    );
    let too_many = format!("{hundred}{one}");
    assert_eq!(
        SignedCheckpoint::parse_note(&too_many),
        Err(CheckpointError::TooManySignatures {
            max: MAX_SIGNATURES
        })
    );

    // Exactly at the size limit is fine, one byte over is not.
    let prefix = format!("{body}\n");
    let fixed = prefix.len() + "\u{2014}  ".len() + BASE64.encode(good_blob()).len() + 1;
    let at_limit = format!(
        "{prefix}{}",
        line(&"n".repeat(MAX_NOTE_LEN - fixed), &good_blob())
    );
    assert_eq!(at_limit.len(), MAX_NOTE_LEN);
    // The long name is refused, but by the line parser, not by the size limit.
    assert!(matches!(
        SignedCheckpoint::parse_note(&at_limit),
        Err(CheckpointError::MalformedSignatureLine { line: 7, .. })
    ));
    let over = format!("{at_limit}x");
    assert_eq!(
        SignedCheckpoint::parse_note(&over),
        Err(CheckpointError::NoteTooLarge {
            len: MAX_NOTE_LEN + 1,
            max: MAX_NOTE_LEN
        })
    );
}

#[test]
fn parser_rejects_malformed_notes() {
    use CheckpointError as E;
    let body = sample_body();
    let blob = good_blob();
    let good_line = line("gen-a.example", &blob);
    let encoded = BASE64.encode(&blob);
    let malformed = |line, reason| E::MalformedSignatureLine { line, reason };
    let no_dash = "it does not start with an em dash (U+2014) and a space";
    let no_space = "it has no space between the signer name and the signature";
    let bad_base64 = "the signature is not canonical padded standard base64";
    let bad_len = "the signature is not a 4-byte key hint followed by a 64-byte ed25519 signature";

    let cases: Vec<(&str, String, CheckpointError)> = vec![
        ("body only", body.clone(), E::MissingSignatureSeparator),
        (
            "no blank line",
            format!("{body}{good_line}"),
            E::MissingSignatureSeparator,
        ),
        ("no signatures", format!("{body}\n"), E::NoSignatures),
        (
            "two blank lines",
            format!("{body}\n\n{good_line}"),
            malformed(7, no_dash),
        ),
        (
            "trailing blank line",
            format!("{body}\n{good_line}\n"),
            malformed(8, no_dash),
        ),
        (
            "garbage between signatures",
            format!("{body}\n{good_line}garbage\n{good_line}"),
            malformed(8, no_dash),
        ),
        (
            "last line without newline",
            format!("{body}\n{}", good_line.trim_end_matches('\n')),
            malformed(7, "it does not end with a newline"),
        ),
        (
            "hyphen instead of em dash",
            format!("{body}\n- gen-a.example {encoded}\n"),
            malformed(7, no_dash),
        ),
        (
            "en dash instead of em dash",
            format!("{body}\n\u{2013} gen-a.example {encoded}\n"),
            malformed(7, no_dash),
        ),
        (
            "no space after dash",
            format!("{body}\n\u{2014}gen-a.example {encoded}\n"),
            malformed(7, no_dash),
        ),
        (
            "no signature",
            format!("{body}\n\u{2014} gen-a.example\n"),
            malformed(7, no_space),
        ),
        (
            "two spaces before signature",
            format!("{body}\n\u{2014} gen-a.example  {encoded}\n"),
            malformed(7, bad_base64),
        ),
        (
            "trailing space",
            format!("{body}\n\u{2014} gen-a.example {encoded} \n"),
            malformed(7, bad_base64),
        ),
        (
            "CRLF",
            format!("{body}\n\u{2014} gen-a.example {encoded}\r\n"),
            malformed(7, bad_base64),
        ),
        (
            "empty name",
            format!("{body}\n\u{2014}  {encoded}\n"),
            malformed(7, "is empty"),
        ),
        (
            "plus in name",
            format!("{body}\n{}", line("gen+a", &blob)),
            malformed(7, "contains `+`"),
        ),
        (
            "no-break space in name",
            format!("{body}\n{}", line("gen\u{a0}a", &blob)),
            malformed(7, "contains white space"),
        ),
        (
            "control character in name",
            format!("{body}\n{}", line("gen\u{1}a", &blob)),
            malformed(7, "contains a control character"),
        ),
        (
            "name too long",
            format!("{body}\n{}", line(&"n".repeat(MAX_NAME_LEN + 1), &blob)),
            malformed(7, "is longer than 255 bytes"),
        ),
        (
            "unpadded signature",
            format!(
                "{body}\n\u{2014} gen-a.example {}\n",
                encoded.trim_end_matches('=')
            ),
            malformed(7, bad_base64),
        ),
        (
            "URL-safe signature",
            format!("{body}\n\u{2014} w {}\n", URL_SAFE.encode([0xfb; 68])),
            malformed(7, bad_base64),
        ),
        (
            "signature too short",
            format!("{body}\n{}", line("gen-a.example", &blob[..67])),
            malformed(7, bad_len),
        ),
        (
            "signature too long",
            format!(
                "{body}\n{}",
                line("gen-a.example", &[&blob[..], &[0]].concat())
            ),
            malformed(7, bad_len),
        ),
        (
            "timestamped cosignature (76 bytes)",
            format!("{body}\n{}", line("gen-a.example", &[0; 76])),
            malformed(7, bad_len),
        ),
        (
            "bad body",
            format!("{}\n{good_line}", body.replace("\n42\n", "\n042\n")),
            E::InvalidSize {
                text: "042".to_owned(),
            },
        ),
    ];
    for (name, text, expected) in cases {
        assert_eq!(
            SignedCheckpoint::parse_note(&text),
            Err(expected),
            "case {name:?}: {text:?}"
        );
    }
}

#[test]
fn unknown_and_duplicate_lines_are_kept_by_the_parser() {
    let mut note = signed_by(&[GEN_A, GEN_A]);
    note.signatures.push(NoteSignature {
        name: "stranger".to_owned(),
        key_hint: [9; 4],
        signature: [9; 64],
    });
    assert_eq!(SignedCheckpoint::parse_note(&note.to_note()), Ok(note));
}

// ---------------------------------------------------------------------------------------------
// Witness set and policy
// ---------------------------------------------------------------------------------------------

#[test]
fn three_groups_satisfy_the_policy() {
    let set = three_group_set();
    let note = signed_by(&[TRANS_A, FAC_A, GEN_A]);
    // Through the text, as a verifier receives it.
    let parsed = SignedCheckpoint::parse_note(&note.to_note());
    let report = parsed.and_then(|n| set.verify(&ledger(), &n, ORIGIN));
    let report = match report {
        Ok(report) => report,
        Err(err) => panic!("refused: {err}"),
    };
    // Genesis order, not note order.
    assert_eq!(
        report.signers,
        vec![
            Cosigner {
                node_id: 1,
                name: GEN_A.1.to_owned(),
                group: "generator".to_owned()
            },
            Cosigner {
                node_id: 3,
                name: TRANS_A.1.to_owned(),
                group: "transporter".to_owned()
            },
            Cosigner {
                node_id: 4,
                name: FAC_A.1.to_owned(),
                group: "facility".to_owned()
            },
        ]
    );
    assert_eq!(report.unknown_lines, 0);
}

#[test]
fn missing_group_fails() {
    let set = three_group_set();
    let note = signed_by(&[GEN_A, GEN_B, TRANS_A]);
    assert_eq!(
        set.verify(&ledger(), &note, ORIGIN),
        Err(CheckpointError::GroupQuorumNotMet {
            group: "facility".to_owned(),
            have: 0,
            need: 1
        })
    );
}

#[test]
fn duplicate_lines_count_once() {
    let set = match WitnessSet::from_genesis(&genesis(2, &[])) {
        Ok(set) => set,
        Err(err) => panic!("{err}"),
    };
    let note = signed_by(&[GEN_A, GEN_A, GEN_A]);
    assert_eq!(
        set.verify(&ledger(), &note, ORIGIN),
        Err(CheckpointError::QuorumNotMet { have: 1, need: 2 })
    );
    let note = signed_by(&[GEN_A, GEN_A, GEN_B]);
    let report = set.verify(&ledger(), &note, ORIGIN);
    assert_eq!(report.as_ref().map(names), Ok(vec![GEN_A.1, GEN_B.1]));
}

#[test]
fn no_signatures_fail_the_quorum() {
    let set = three_group_set();
    let note = signed_by(&[]);
    assert_eq!(
        set.verify(&ledger(), &note, ORIGIN),
        Err(CheckpointError::QuorumNotMet { have: 0, need: 2 })
    );
}

#[test]
fn signature_for_another_ledger_fails() {
    let set = three_group_set();
    let checkpoint = sample();
    let mut note = signed_by(&[GEN_A, TRANS_A, FAC_A]);
    note.signatures[1] = cosign(&key(TRANS_A.3), TRANS_A.1, &Digest([8; 32]), &checkpoint);
    assert!(matches!(
        set.verify(&ledger(), &note, ORIGIN),
        Err(CheckpointError::BadSignature { witness, .. }) if witness == TRANS_A.1
    ));
    // And the whole note fails for the other ledger.
    assert!(matches!(
        set.verify(&Digest([8; 32]), &signed_by(&[GEN_A]), ORIGIN),
        Err(CheckpointError::BadSignature { witness, .. }) if witness == GEN_A.1
    ));
}

#[test]
fn signature_for_another_body_fails() {
    let set = three_group_set();
    let mut note = signed_by(&[GEN_A, TRANS_A, FAC_A]);
    note.checkpoint.size += 1;
    assert!(matches!(
        set.verify(&ledger(), &note, ORIGIN),
        Err(CheckpointError::BadSignature { witness, .. }) if witness == GEN_A.1
    ));
    let mut note = signed_by(&[GEN_A, TRANS_A, FAC_A]);
    note.signatures[2].signature[0] ^= 1;
    assert!(matches!(
        set.verify(&ledger(), &note, ORIGIN),
        Err(CheckpointError::BadSignature { witness, .. }) if witness == FAC_A.1
    ));
}

#[test]
fn wrong_origin_fails() {
    let set = three_group_set();
    let note = signed_by(&[GEN_A, TRANS_A, FAC_A]);
    assert_eq!(
        set.verify(&ledger(), &note, "another.example/log"),
        Err(CheckpointError::OriginMismatch {
            expected: "another.example/log".to_owned(),
            found: ORIGIN.to_owned()
        })
    );
}

#[test]
fn unknown_signers_are_ignored() {
    let set = three_group_set();
    let checkpoint = sample();
    let mut note = signed_by(&[GEN_A, TRANS_A, FAC_A]);
    // A stranger with a valid signature, a stranger with garbage, and a known name with a key
    // it does not have (a retired or future key): none is checked, none counts.
    note.signatures
        .insert(0, cosign(&key(99), "stranger", &ledger(), &checkpoint));
    note.signatures.push(NoteSignature {
        name: "garbage".to_owned(),
        key_hint: [0; 4],
        signature: [0; 64],
    });
    note.signatures.push(NoteSignature {
        signature: [0; 64],
        ..cosign(&key(98), GEN_B.1, &ledger(), &checkpoint)
    });
    let report = set.verify(&ledger(), &note, ORIGIN);
    assert_eq!(
        report.as_ref().map(names),
        Ok(vec![GEN_A.1, TRANS_A.1, FAC_A.1])
    );
    assert_eq!(report.map(|r| r.unknown_lines), Ok(3));

    // Strangers alone never make a quorum.
    let strangers = SignedCheckpoint {
        signatures: (90..95)
            .map(|seed| cosign(&key(seed), &format!("s{seed}"), &ledger(), &checkpoint))
            .collect(),
        checkpoint,
    };
    assert_eq!(
        set.verify(&ledger(), &strangers, ORIGIN),
        Err(CheckpointError::QuorumNotMet { have: 0, need: 2 })
    );
}

#[test]
fn witness_set_accessors() {
    let set = three_group_set();
    assert_eq!(set.witnesses().len(), 4);
    assert_eq!(set.min_total(), 2);
    assert_eq!(
        set.group_requirements().collect::<Vec<_>>(),
        vec![("generator", 1), ("transporter", 1), ("facility", 1)]
    );
    let witness = set.witness(FAC_A.1);
    assert_eq!(witness.map(|w| w.node_id), Some(4));
    assert_eq!(
        witness.map(|w| w.key_hint),
        Some(key_hint(&key(FAC_A.3).verifying_key()))
    );
    assert!(set.witness("nobody").is_none());
}

#[test]
fn genesis_validation() {
    use CheckpointError as E;
    let base = || genesis(2, &[("generator", 1)]);
    let with_node = |index: usize, edit: &dyn Fn(&mut pb::NodeWitness)| {
        let mut g = base();
        edit(&mut g.nodes[index]);
        g
    };
    let with_policy = |min_total: u32, groups: &[(&str, u32)]| genesis(min_total, groups);
    let mut identity = [0u8; 32];
    identity[0] = 1;

    let cases: Vec<(&str, pb::Genesis, CheckpointError)> = vec![
        (
            "short key",
            with_node(1, &|n| n.ed25519.truncate(31)),
            E::InvalidWitnessKey {
                name: GEN_B.1.to_owned(),
                source: signing::SignatureError::KeyLength(31),
            },
        ),
        (
            "weak key",
            with_node(1, &|n| n.ed25519 = identity.to_vec()),
            E::InvalidWitnessKey {
                name: GEN_B.1.to_owned(),
                source: signing::SignatureError::WeakKey,
            },
        ),
        (
            "duplicate name",
            with_node(2, &|n| n.name = GEN_A.1.to_owned()),
            E::DuplicateWitnessName {
                name: GEN_A.1.to_owned(),
            },
        ),
        (
            "duplicate key",
            with_node(3, &|n| {
                n.ed25519 = key(GEN_B.3).verifying_key().to_bytes().to_vec()
            }),
            E::DuplicateWitnessKey {
                first: GEN_B.1.to_owned(),
                second: FAC_A.1.to_owned(),
            },
        ),
        (
            "duplicate node id",
            with_node(3, &|n| n.node_id = 1),
            E::DuplicateNodeId { node_id: 1 },
        ),
        (
            "empty group",
            with_node(0, &|n| n.group.clear()),
            E::EmptyWitnessGroup {
                name: GEN_A.1.to_owned(),
            },
        ),
        (
            "empty name",
            with_node(0, &|n| n.name.clear()),
            E::InvalidWitnessName {
                name: String::new(),
                reason: "is empty",
            },
        ),
        (
            "name with space",
            with_node(0, &|n| n.name = "gen a".to_owned()),
            E::InvalidWitnessName {
                name: "gen a".to_owned(),
                reason: "contains white space",
            },
        ),
        (
            "no policy",
            pb::Genesis {
                checkpoint_policy: None,
                ..base()
            },
            E::MissingTrustPolicy,
        ),
        (
            "min_total zero",
            with_policy(0, &[]),
            E::InvalidMinTotal {
                min_total: 0,
                witnesses: 4,
            },
        ),
        (
            "min_total above witnesses",
            with_policy(5, &[]),
            E::InvalidMinTotal {
                min_total: 5,
                witnesses: 4,
            },
        ),
        (
            "no witnesses",
            pb::Genesis {
                nodes: Vec::new(),
                ..with_policy(1, &[])
            },
            E::InvalidMinTotal {
                min_total: 1,
                witnesses: 0,
            },
        ),
        (
            "unknown group",
            with_policy(2, &[("generator", 1), ("regulator", 1)]),
            E::UnknownPolicyGroup {
                group: "regulator".to_owned(),
            },
        ),
        (
            "empty group requirement",
            with_policy(2, &[("", 0)]),
            E::UnknownPolicyGroup {
                group: String::new(),
            },
        ),
        (
            "group too small",
            with_policy(2, &[("generator", 3)]),
            E::GroupTooSmall {
                group: "generator".to_owned(),
                members: 2,
                need: 3,
            },
        ),
        (
            "duplicate requirement",
            with_policy(2, &[("generator", 1), ("facility", 1), ("generator", 2)]),
            E::DuplicateGroupRequirement {
                group: "generator".to_owned(),
            },
        ),
    ];
    for (name, genesis, expected) in cases {
        assert_eq!(
            WitnessSet::from_genesis(&genesis).err(),
            Some(expected),
            "case {name:?}"
        );
    }
    // The limits themselves are accepted.
    assert!(
        WitnessSet::from_genesis(&with_policy(4, &[("generator", 2), ("facility", 0)])).is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Witness rule
// ---------------------------------------------------------------------------------------------

/// A ledger tree with `size` leaves `entry 0`, `entry 1`, ….
fn tree(size: u64) -> MerkleTree<Blake3Hasher> {
    let mut tree = MerkleTree::default();
    for i in 0..size {
        tree.append(format!("entry {i}").as_bytes());
    }
    tree
}

fn head(tree: &MerkleTree<Blake3Hasher>, size: u64) -> Checkpoint {
    let root = match tree.root_at(size) {
        Ok(root) => root,
        Err(err) => panic!("{err}"),
    };
    Checkpoint {
        size,
        root,
        ..sample()
    }
}

fn proof(tree: &MerkleTree<Blake3Hasher>, old: u64, new: u64) -> Vec<Digest> {
    match tree.consistency_proof(old, new) {
        Ok(proof) => proof,
        Err(err) => panic!("{err}"),
    }
}

#[test]
fn witness_advances_along_a_consistent_log() {
    let log = tree(20);
    let mut state = WitnessState::new();
    assert_eq!(state.last_signed(), None);
    assert_eq!(state.check_and_advance(&head(&log, 3), &[]), Ok(()));
    assert_eq!(state.last_signed(), Some((3, head(&log, 3).root)));
    // Idempotent re-sign of the same head.
    assert_eq!(state.check_and_advance(&head(&log, 3), &[]), Ok(()));
    for (old, new) in [(3, 4), (4, 8), (8, 13), (13, 20)] {
        assert_eq!(
            state.check_and_advance(&head(&log, new), &proof(&log, old, new)),
            Ok(()),
            "{old} -> {new}"
        );
        assert_eq!(state.last_signed().map(|(size, _)| size), Some(new));
    }
}

#[test]
fn witness_refuses_rollback_fork_and_inconsistency() {
    let log = tree(10);
    // A fork: the same first 6 entries, then different ones.
    let mut fork = tree(6);
    for i in 6..10 {
        fork.append(format!("forged {i}").as_bytes());
    }
    let signed = head(&log, 8);
    let start = WitnessState::restore(8, signed.root);

    let mut state = start;
    assert_eq!(
        state.check_and_advance(&head(&log, 7), &[]),
        Err(WitnessError::Rollback {
            signed_size: 8,
            size: 7
        })
    );
    assert_eq!(
        state.check_and_advance(&head(&fork, 8), &[]),
        Err(WitnessError::Fork {
            size: 8,
            signed_root: signed.root,
            root: head(&fork, 8).root
        })
    );
    // The fork's own honest proof from 8 to 10 starts from the fork's root, not ours.
    assert!(matches!(
        state.check_and_advance(&head(&fork, 10), &proof(&fork, 8, 10)),
        Err(WitnessError::Inconsistent {
            signed_size: 8,
            size: 10,
            ..
        })
    ));
    // A proof for the real log does not vouch for the fork's head either.
    assert!(matches!(
        state.check_and_advance(&head(&fork, 10), &proof(&log, 8, 10)),
        Err(WitnessError::Inconsistent { .. })
    ));
    // A missing proof is no proof.
    assert!(matches!(
        state.check_and_advance(&head(&log, 10), &[]),
        Err(WitnessError::Inconsistent { .. })
    ));
    // Refusals leave the state alone.
    assert_eq!(state, start);
    assert_eq!(
        state.check_and_advance(&head(&log, 10), &proof(&log, 8, 10)),
        Ok(())
    );
    assert_eq!(state.last_signed(), Some((10, head(&log, 10).root)));
}

#[test]
fn witness_never_signs_two_inconsistent_checkpoints() {
    // However an attacker interleaves heads of two logs that diverge after 5 entries, the
    // witness signs heads of at most one of them past the fork point.
    let honest = tree(12);
    let mut forged = tree(5);
    for i in 5..12 {
        forged.append(format!("forged {i}").as_bytes());
    }
    let logs = [&honest, &forged];
    let offers: Vec<(usize, u64)> = vec![
        (0, 2),
        (1, 6),
        (0, 7),
        (1, 9),
        (1, 12),
        (0, 12),
        (0, 3),
        (1, 12),
    ];
    let mut state = WitnessState::new();
    let mut signed: Vec<(usize, u64)> = Vec::new();
    for &(which, size) in &offers {
        let log = logs[which];
        let proof = match state.last_signed() {
            Some((old, _)) if old > 0 && old < size => proof(log, old, size),
            _ => Vec::new(),
        };
        if state.check_and_advance(&head(log, size), &proof).is_ok() {
            signed.push((which, size));
        }
    }
    // The first head past the fork point decides which log this witness follows; the repeated
    // offer of the same head is re-signed.
    assert_eq!(signed, vec![(0, 2), (1, 6), (1, 9), (1, 12), (1, 12)]);
    let past_fork: std::collections::HashSet<usize> = signed
        .iter()
        .filter(|&&(_, size)| size > 5)
        .map(|&(which, _)| which)
        .collect();
    assert_eq!(past_fork.len(), 1);
}

#[test]
fn witness_empty_tree() {
    let log = tree(3);
    let empty = Checkpoint {
        size: 0,
        root: Blake3Hasher::empty_root(),
        ..sample()
    };
    let mut state = WitnessState::new();
    assert_eq!(state.check_and_advance(&empty, &[]), Ok(()));
    // Every tree extends the empty tree: no proof exists or is needed.
    assert_eq!(state.check_and_advance(&head(&log, 3), &[]), Ok(()));
    assert_eq!(
        state.check_and_advance(&empty, &[]),
        Err(WitnessError::Rollback {
            signed_size: 3,
            size: 0
        })
    );
    let bogus = Checkpoint {
        size: 0,
        root: Digest([5; 32]),
        ..sample()
    };
    assert_eq!(
        WitnessState::new().check_and_advance(&bogus, &[]),
        Err(WitnessError::EmptyTreeRoot {
            root: Digest([5; 32]),
            expected: Blake3Hasher::empty_root()
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// The note the tamper properties mutate, the witness set it verifies under, and the byte ranges
/// of the lines a verifier ignores.
struct Fixture {
    text: String,
    set: WitnessSet,
    report: PolicyReport,
    ignored: Vec<std::ops::Range<usize>>,
}

fn fixture() -> Fixture {
    // Both known signatures are needed (one generator, one facility), so losing either fails.
    // Two keeps the exhaustive test affordable: ed25519 is slow in unoptimised test builds.
    let genesis = genesis(2, &[("generator", 1), ("facility", 1)]);
    let set = match WitnessSet::from_genesis(&genesis) {
        Ok(set) => set,
        Err(err) => panic!("{err}"),
    };
    let checkpoint = sample();
    let unknown = [
        cosign(&key(99), "stranger.example", &ledger(), &checkpoint),
        // A known name with a key the set does not know: ignored too.
        cosign(&key(98), GEN_B.1, &ledger(), &checkpoint),
    ];
    let note = SignedCheckpoint {
        signatures: vec![
            unknown[0].clone(),
            sig(GEN_A, &checkpoint),
            unknown[1].clone(),
            sig(FAC_A, &checkpoint),
        ],
        checkpoint,
    };
    let text = note.to_note();
    let ignored = unknown
        .iter()
        .map(|s| {
            let line = s.line();
            let start = text.find(&line).unwrap_or(usize::MAX);
            start..start + line.len()
        })
        .collect();
    let report = match set.verify(&ledger(), &note, ORIGIN) {
        Ok(report) => report,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(report.unknown_lines, 2);
    Fixture {
        text,
        set,
        report,
        ignored,
    }
}

/// The fixture, built once: signing and verifying are slow in unoptimised test builds.
fn shared_fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(fixture)
}

/// Asserts that `bytes`, a one-byte change at `index` of the fixture note, is refused, unless
/// the change lies inside an ignored line and the verdict is exactly the original one. Returns
/// whether the change was accepted.
fn check_tampered(fixture: &Fixture, index: usize, bytes: Vec<u8>) -> bool {
    let Ok(text) = String::from_utf8(bytes) else {
        return false; // Not even text: refused before any parser sees it.
    };
    let Ok(note) = SignedCheckpoint::parse_note(&text) else {
        return false;
    };
    let Ok(report) = fixture.set.verify(&ledger(), &note, ORIGIN) else {
        return false;
    };
    assert_eq!(
        note.checkpoint,
        sample(),
        "change at {index} altered an accepted checkpoint"
    );
    assert_eq!(
        report, fixture.report,
        "change at {index} altered the signers"
    );
    assert!(
        fixture.ignored.iter().any(|range| range.contains(&index)),
        "change at {index} outside an ignored line was accepted: {text:?}"
    );
    true
}

#[test]
fn every_single_bit_flip_is_caught() {
    let fixture = shared_fixture();
    assert!(fixture.ignored.iter().all(|r| r.end <= fixture.text.len()));
    let mut accepted = 0;
    for index in 0..fixture.text.len() {
        // One flip per byte keeps this affordable; the proptest below tries arbitrary bytes.
        let mut bytes = fixture.text.clone().into_bytes();
        bytes[index] ^= 0x01;
        accepted += usize::from(check_tampered(fixture, index, bytes));
    }
    // Some changes inside the ignored lines are benign; make sure the test really meets them.
    assert!(accepted > 0);
}

fn origin_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9./:_-][a-zA-Z0-9./:_ -]{0,40}[a-zA-Z0-9./:_-]|[a-z]"
}

fn digest_strategy() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn checkpoint_strategy() -> impl Strategy<Value = Checkpoint> {
    (
        origin_strategy(),
        any::<u64>(),
        digest_strategy(),
        digest_strategy(),
        any::<i64>(),
    )
        .prop_map(|(origin, size, root, map_root, time_ms)| Checkpoint {
            origin,
            size,
            root,
            map_root,
            time_ms,
        })
}

fn signature_strategy() -> impl Strategy<Value = NoteSignature> {
    (
        "[!-*,-~]{1,20}",
        any::<[u8; 4]>(),
        proptest::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(name, key_hint, raw)| {
            let mut signature = [0; 64];
            signature.copy_from_slice(&raw);
            NoteSignature {
                name,
                key_hint,
                signature,
            }
        })
}

proptest! {
    #[test]
    fn any_body_round_trips(checkpoint in checkpoint_strategy()) {
        prop_assert_eq!(Checkpoint::parse_body(&checkpoint.body()), Ok(checkpoint));
    }

    #[test]
    fn any_note_round_trips(
        checkpoint in checkpoint_strategy(),
        signatures in proptest::collection::vec(signature_strategy(), 1..8),
    ) {
        let note = SignedCheckpoint { checkpoint, signatures };
        prop_assert_eq!(SignedCheckpoint::parse_note(&note.to_note()), Ok(note));
    }

    #[test]
    fn any_single_byte_change_is_caught(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let fixture = shared_fixture();
        let index = position.index(fixture.text.len());
        let mut bytes = fixture.text.clone().into_bytes();
        prop_assume!(bytes[index] != byte);
        bytes[index] = byte;
        check_tampered(fixture, index, bytes);
    }

    #[test]
    fn parsers_never_panic(text in "(?s).{0,400}") {
        let _ = Checkpoint::parse_body(&text);
        let _ = SignedCheckpoint::parse_note(&text);
    }
}
