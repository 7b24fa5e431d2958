use super::*;

/// Test vectors exactly as printed in docs/protocol.md ("Test vectors").
/// Each is (content hex, frame hex).
const HELLO: (&str, &str) = (
    "9401010182a96d61785f6672616d65cd1000a6636c69656e74a464656d6f",
    "129401010182a96d61785f6672616d65cd1011a6636c69656e74a464656d6fe7e19bcf00",
);
const HEALTH: (&str, &str) = ("9401020280", "0a94010202808612246400");
const UNKNOWN_COMMAND: (&str, &str) = (
    "9601030c0001c42081a76d657373616765b6756e6b6e6f776e20636f6d6d616e6420307830306666",
    "059601030c2801c42081a76d657373616765b6756e6b6e6f776e20636f6d6d616e6420307830306666a4398dec00",
);
const STARTING: (&str, &str) = (
    "960105340001c41281a76d657373616765a87374617274696e67",
    "05960105341a01c41281a76d657373616765a87374617274696e67b813562100",
);
const FETCH_PARTS: (&str, &str) = (
    "9401040382a2696403a57061727473920102",
    "179401040382a2696403a5706172747392010214177f8f00",
);

fn check_frame(vector: (&str, &str)) -> Vec<u8> {
    let content = hex::decode(vector.0).unwrap();
    assert_eq!(hex::encode(signer_frame::encode(&content)), vector.1);
    content
}

#[test]
fn hello_request_vector() {
    let content = check_frame(HELLO);
    let body = encode_body(&msg::Hello {
        max_frame: 4096,
        client: "demo".into(),
    });
    assert_eq!(encode_request(1, Command::HELLO, &body), content);
    let request = decode_request(&content).unwrap();
    assert_eq!((request.id, request.command), (1, Command::HELLO));
}

#[test]
fn health_request_vector() {
    let content = check_frame(HEALTH);
    assert_eq!(
        encode_request(2, Command::HEALTH, &encode_body(&msg::Empty {})),
        content
    );
}

#[test]
fn error_response_vector() {
    let content = check_frame(UNKNOWN_COMMAND);
    let body = encode_body(&msg::ErrorBody {
        message: "unknown command 0x00ff".into(),
        detail: String::new(),
    });
    let parts = encode_response(3, Status::UNKNOWN_COMMAND, &body, 4096);
    assert_eq!(parts, vec![content.clone()]);
    let part = decode_response_part(&content).unwrap();
    assert_eq!(
        (part.id, part.status, part.part, part.parts),
        (3, Status::UNKNOWN_COMMAND, 0, 1)
    );
    let err: msg::ErrorBody = decode_body(part.data).unwrap();
    assert_eq!(err.message, "unknown command 0x00ff");
}

#[test]
fn starting_response_vector() {
    let content = check_frame(STARTING);
    let body = encode_body(&msg::ErrorBody {
        message: "starting".into(),
        detail: String::new(),
    });
    assert_eq!(
        encode_response(5, Status::STARTING, &body, 4096),
        vec![content.clone()]
    );
    let part = decode_response_part(&content).unwrap();
    assert_eq!((part.id, part.status), (5, Status::STARTING));
    assert_eq!(part.status.name(), Some("starting"));
    assert!(part.status.is_retryable());
}

#[test]
fn fetch_parts_vector() {
    let content = check_frame(FETCH_PARTS);
    let body = encode_body(&msg::FetchParts {
        id: 3,
        parts: vec![1, 2],
    });
    assert_eq!(encode_request(4, Command::FETCH_PARTS, &body), content);
}

#[test]
fn unsupported_version_keeps_the_id() {
    // [2, 9, 2, {}]
    let content = hex::decode("9402090280").unwrap();
    assert_eq!(
        decode_request(&content),
        Err(EnvelopeError::UnsupportedVersion { version: 2, id: 9 })
    );
}

#[test]
fn malformed_envelopes() {
    // (content, what, the id the answer carries: None for id 0)
    for (hex, why, id) in [
        ("80", "a map", None),
        ("c1", "not msgpack", None),
        ("9101", "array of 1", None),
        ("92a17802", "version not an integer", None),
        ("9301020280", "array of 3", Some(2)),
        ("940102", "truncated", Some(2)),
        ("940102a1780080", "string command", Some(2)),
        ("94010203", "no body", Some(2)),
        ("94010203cd", "a body cut short", Some(2)),
        ("940103028081", "bytes after the array", Some(3)),
        ("95010402808080", "array of 5", Some(4)),
        (
            "940100cd000180",
            "id 0 (reserved for unreadable frames)",
            None,
        ),
    ] {
        let content = hex::decode(hex).unwrap();
        let result = decode_request(&content);
        match id {
            None => assert!(
                matches!(result, Err(EnvelopeError::Malformed(_))),
                "{why}: {result:?}"
            ),
            Some(want) => assert!(
                matches!(result, Err(EnvelopeError::MalformedRequest { id, .. }) if id == want),
                "{why}: {result:?}"
            ),
        }
    }
    // Valid envelopes; the command decides whether the body is acceptable.
    let valid = hex::decode("940102cdffff80").unwrap();
    let ok = decode_request(&valid).unwrap();
    assert_eq!(
        (ok.id, ok.command, ok.body),
        (2, Command(0xffff), &[0x80][..])
    );
    // 0x00 is a msgpack value (0): the body exists, and `{}` it is not.
    let zero = hex::decode("9401020200").unwrap();
    let zero = decode_request(&zero).unwrap();
    assert!(decode_body::<msg::Empty>(zero.body).is_err());
}

/// `fetch_crl`'s optional reply fields are left out when absent (§4:
/// optional means absent), never sent as nil.
#[test]
fn optional_reply_fields_are_absent_not_nil() {
    let reply = msg::FetchCrlReply {
        unchanged: true,
        number: vec![1],
        this_update: 1,
        next_update: 2,
        entries: 0,
        sha256: vec![0; 32],
        crl: None,
        diff: None,
    };
    let body = encode_body(&reply);
    let map: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
        rmp_serde::from_slice(&body).unwrap();
    let keys: Vec<String> = map.into_keys().collect();
    assert!(
        !keys.contains(&"crl".to_string()) && !keys.contains(&"diff".to_string()),
        "{keys:?}"
    );
    assert_eq!(decode_body::<msg::FetchCrlReply>(&body).unwrap(), reply);
}

#[test]
fn bodies_reject_unknown_fields_and_trailing_bytes() {
    let with_extra = hex::decode("81a178c3").unwrap(); // {"x": true}
    assert!(decode_body::<msg::Empty>(&with_extra).is_err());
    let trailing = hex::decode("8080").unwrap();
    assert!(decode_body::<msg::Empty>(&trailing).is_err());
}

#[test]
fn codes_print_names_or_hex() {
    assert_eq!(Status::BUSY.to_string(), "busy");
    assert_eq!(Status(999).to_string(), "0x03e7");
    assert_eq!(format!("{:?}", Command(0xff)), "Command(0x00ff)");
    assert_eq!(Command::SIGN_X509.name(), Some("sign_x509"));
}

#[test]
fn multi_part_round_trip_with_reassembly() {
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let parts = encode_response(42, Status::OK, &body, 1024);
    assert!(parts.len() > 10);
    assert!(parts.iter().all(|p| p.len() <= 1024));
    let decoded: Vec<_> = parts
        .iter()
        .map(|p| decode_response_part(p).unwrap())
        .collect();
    // Deliver in reverse, with a duplicate.
    let mut re = Reassembly::new(&decoded[decoded.len() - 1], 100).unwrap();
    assert_eq!(re.missing().len(), decoded.len() - 1);
    for p in decoded.iter().rev() {
        re.add(p).unwrap();
    }
    assert!(re.is_complete());
    assert_eq!(re.into_body().unwrap(), body);
}

#[test]
fn reassembly_rejects_mismatched_parts() {
    let parts = encode_response(1, Status::OK, &[1u8; 3000], 1024);
    let first = decode_response_part(&parts[0]).unwrap();
    let mut re = Reassembly::new(&first, 10).unwrap();
    let other = encode_response(1, Status::INTERNAL, &[1u8; 3000], 1024);
    assert!(re.add(&decode_response_part(&other[1]).unwrap()).is_err());
    assert!(Reassembly::new(&first, 1).is_err());
}

proptest::proptest! {
    #[test]
    fn random_content_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        crate::fuzzing::request(&data);
        crate::fuzzing::response(&data);
    }

    #[test]
    fn mutated_vectors_never_panic(which in 0usize..4, flips in proptest::collection::vec((0usize..64, proptest::num::u8::ANY), 1..6)) {
        let mut data = hex::decode([HELLO.0, HEALTH.0, UNKNOWN_COMMAND.0, FETCH_PARTS.0][which]).unwrap();
        for (at, value) in flips {
            let i = at % data.len();
            data[i] = value;
        }
        crate::fuzzing::request(&data);
        crate::fuzzing::response(&data);
    }

    #[test]
    fn request_round_trip(id in 1..=u64::MAX, cmd in proptest::num::u16::ANY, max_frame in proptest::num::u32::ANY) {
        let body = encode_body(&msg::Hello { max_frame, client: "p".into() });
        let content = encode_request(id, Command(cmd), &body);
        let request = decode_request(&content).unwrap();
        proptest::prop_assert_eq!(request.id, id);
        proptest::prop_assert_eq!(request.command, Command(cmd));
        proptest::prop_assert_eq!(decode_body::<msg::Hello>(request.body).unwrap().max_frame, max_frame);
    }

    #[test]
    fn response_round_trip(id in proptest::num::u64::ANY, status in proptest::num::u16::ANY,
                           body in proptest::collection::vec(proptest::num::u8::ANY, 0..5000),
                           max in 40usize..3000) {
        let parts = encode_response(id, Status(status), &body, max);
        let mut re: Option<Reassembly> = None;
        for p in &parts {
            proptest::prop_assert!(p.len() <= max.max(RESPONSE_OVERHEAD + 1));
            let part = decode_response_part(p).unwrap();
            match re.as_mut() {
                None => re = Some(Reassembly::new(&part, u32::MAX).unwrap()),
                Some(r) => r.add(&part).unwrap(),
            }
        }
        proptest::prop_assert_eq!(re.unwrap().into_body().unwrap(), body);
    }
}

/// docs/protocol.md, `sign_x509` vector.
const SIGN: (&str, &str) = (
    "9401051086aa726571756573745f6964a27231a770726f66696c65a6736572766572a3637372c4023000a77375626a6563749192a2434ea9612e6578616d706c65a473616e739182a474797065a3646e73a576616c7565a9612e6578616d706c65ad76616c69646974795f646179731e",
    "2a9401051086aa726571756573745f6964a27231a770726f66696c65a6736572766572a3637372c402304ba77375626a6563749192a2434ea9612e6578616d706c65a473616e739182a474797065a3646e73a576616c7565a9612e6578616d706c65ad76616c69646974795f646179731ee4f7b6c000",
);

#[test]
fn sign_x509_vector() {
    let content = check_frame(SIGN);
    let body = msg::SignX509 {
        request_id: "r1".into(),
        profile: "server".into(),
        csr: vec![0x30, 0x00],
        subject: vec![("CN".into(), "a.example".into())],
        sans: vec![msg::SanEntry {
            kind: "dns".into(),
            value: "a.example".into(),
        }],
        validity_days: Some(30),
    };
    assert_eq!(
        encode_request(5, Command::SIGN_X509, &encode_body(&body)),
        content
    );
    let request = decode_request(&content).unwrap();
    assert_eq!(decode_body::<msg::SignX509>(request.body).unwrap(), body);
}

#[test]
fn every_status_and_command_is_in_the_spec() {
    let spec = include_str!("../../../docs/protocol.md");
    for status in Status::ALL {
        let row = format!("| {} | {} |", status.0, status.name().unwrap());
        assert!(
            spec.contains(&row),
            "docs/protocol.md lacks the status row {row}"
        );
    }
    for command in Command::ALL {
        let row = format!("| {} | {} |", command.0, command.name().unwrap());
        assert!(
            spec.contains(&row),
            "docs/protocol.md lacks the command row {row}"
        );
    }
}

/// `certify_openpgp`, id 6 (protocol.md §10).
const CERTIFY: (&str, &str) = (
    "9401062084aa726571756573745f6964a27031a36b6579c4029900a8757365725f69647391b141203c61406578616d706c652e6f72673eaa657870697265735f6174ce6b49d200",
    "1b9401062084aa726571756573745f6964a27031a36b6579c402992ca8757365725f69647391b141203c61406578616d706c652e6f72673eaa657870697265735f6174ce6b49d205b41f6a1c00",
);

fn certify_body() -> msg::CertifyOpenpgp {
    msg::CertifyOpenpgp {
        request_id: "p1".into(),
        key: vec![0x99, 0x00],
        user_ids: vec!["A <a@example.org>".into()],
        expires_at: 1_800_000_000,
    }
}

#[test]
fn certify_openpgp_vector() {
    let built = encode_request(6, Command::CERTIFY_OPENPGP, &encode_body(&certify_body()));
    let content = check_frame(CERTIFY);
    assert_eq!(built, content);
    let request = decode_request(&content).unwrap();
    assert_eq!(
        decode_body::<msg::CertifyOpenpgp>(request.body).unwrap(),
        certify_body()
    );
    let spec = include_str!("../../../docs/protocol.md");
    assert!(spec.contains(CERTIFY.0) && spec.contains(CERTIFY.1));
}

/// docs/protocol.md §10: the audit log's requests.
const AUDIT_CHECKPOINT: (&str, &str) = ("9401073080", "0a94010730806da9b2fe00");
const AUDIT_CONSISTENCY: (&str, &str) = (
    "9401083182a36f6c6403a36e657708",
    "149401083182a36f6c6403a36e657708431c96eb00",
);
const AUDIT_ENTRIES: (&str, &str) = (
    "9401093282a5737461727400a5636f756e7402",
    "0c9401093282a573746172740ca5636f756e7402bb65e3a800",
);

#[test]
fn audit_request_vectors() {
    let spec = include_str!("../../../docs/protocol.md");
    for (content, frame) in [AUDIT_CHECKPOINT, AUDIT_CONSISTENCY, AUDIT_ENTRIES] {
        assert!(
            spec.contains(&format!("content {content}\nframe   {frame}")),
            "docs/protocol.md lacks the vector {content}"
        );
    }
    let content = check_frame(AUDIT_CHECKPOINT);
    assert_eq!(
        encode_request(7, Command::AUDIT_CHECKPOINT, &encode_body(&msg::Empty {})),
        content
    );
    let content = check_frame(AUDIT_CONSISTENCY);
    let body = msg::AuditConsistency { old: 3, new: 8 };
    assert_eq!(
        encode_request(8, Command::AUDIT_CONSISTENCY, &encode_body(&body)),
        content
    );
    let request = decode_request(&content).unwrap();
    assert_eq!(
        decode_body::<msg::AuditConsistency>(request.body).unwrap(),
        body
    );
    let content = check_frame(AUDIT_ENTRIES);
    let body = msg::AuditEntries { start: 0, count: 2 };
    assert_eq!(
        encode_request(9, Command::AUDIT_ENTRIES, &encode_body(&body)),
        content
    );
}

/// A body nested as deep as a frame allows takes no stack: the envelope
/// skips it as one value without recursion, and the command's decoder
/// refuses it (or an unknown field holding it) without descending.
#[test]
fn deeply_nested_bodies_do_not_exhaust_the_stack() {
    for depth in [100usize, 1_000, 2_000, 1_000_000] {
        let nested = |prefix: &[u8]| {
            let mut body = prefix.to_vec();
            body.extend(std::iter::repeat_n(0x91u8, depth));
            body.push(0x80);
            body
        };
        let bodies = [nested(&[]), nested(&[0x81, 0xa1, b'x'])];
        // On a thread with a small stack.
        let results = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                bodies
                    .iter()
                    .map(|body| {
                        let content = [&hex::decode("94010201").unwrap()[..], body].concat();
                        let len = decode_request(&content).map(|r| r.body.len());
                        let hello = decode_body::<msg::Hello>(body).is_err();
                        (len, body.len(), hello)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap();
        for (len, body_len, refused) in results {
            assert_eq!(len, Ok(body_len), "{depth}");
            assert!(refused, "{depth}");
        }
    }
    // Cut short, or a container claiming more elements than bytes remain.
    for hex_body in ["91", "dc0010", "ddffffffff", "c4", "c405", "c1"] {
        let content = hex::decode(format!("94010201{hex_body}")).unwrap();
        assert!(
            matches!(
                decode_request(&content),
                Err(EnvelopeError::MalformedRequest { id: 2, .. })
            ),
            "{hex_body}"
        );
    }
}
