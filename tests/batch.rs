//! `signer-client batch` as an operator uses it: a JSON-lines file and a
//! directory of CSRs, pipelined over one 115,200-baud link to a real
//! signerd, interrupted with kill -9 and run again; nothing is issued twice
//! and bad input is refused before anything is sent.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use signer_testsupport::ca::{make_csr, openssl, Ceremony, SERVER_PROFILE};
use signer_testsupport::gpg::Gpg;
use signer_testsupport::{bin, output, Bench, LinkSpec};

const SIGN: usize = 40;
const CERTIFY: usize = 4;

fn batch(device: &Path, dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    output(
        Command::new(bin("signer-client"))
            .current_dir(dir)
            .args(["--link", device.to_str().unwrap(), "batch"])
            .args(args),
    )
}

/// The result files in `out`: request id → the result line.
fn results(out: &Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_dir(out)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| {
                    let v: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                    (v["request_id"].as_str().unwrap().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_batch_interrupted_and_run_again_issues_each_request_once() {
    let mut c = Ceremony::new("p256", SERVER_PROFILE);
    c.add_openpgp();
    let bench = Bench::start_with_env(LinkSpec::baud(115_200), &c.ca_yaml, c.env());
    drop(bench.client());
    let device = bench.client_device();
    let d = c.dir().to_path_buf();
    let csr = String::from_utf8(make_csr(
        &d,
        "batch",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ))
    .unwrap();
    let gpg = Gpg::new();
    let alice = gpg.alice();
    let key = String::from_utf8(gpg.export_with(&["--armor", "--export", &alice])).unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 100 * 86_400;
    let mut lines: Vec<String> = (0..SIGN)
        .map(|i| {
            serde_json::json!({"request_id": format!("b-{i}"), "kind": "sign_x509", "body": {
                "profile": "server", "csr": csr,
                "subject": [["CN", format!("b{i}.example.org")]],
                "sans": [{"type": "dns", "value": format!("b{i}.example.org")}]}})
            .to_string()
        })
        .collect();
    lines.extend((0..CERTIFY).map(|i| {
        serde_json::json!({"request_id": format!("p/{i}"), "kind": "certify_openpgp", "body": {
            "key": key, "user_ids": ["Alice <alice@example.org>"], "expires_at": expires}})
        .to_string()
    }));
    std::fs::write(d.join("requests.jsonl"), lines.join("\n")).unwrap();

    // A bad line anywhere: refused before anything is sent.
    let mut bad = lines.clone();
    bad.insert(
        7,
        r#"{"request_id": "x", "kind": "sign_x509", "body": {"profile": "server"}}"#.into(),
    );
    std::fs::write(d.join("bad.jsonl"), bad.join("\n")).unwrap();
    let (code, out, err) = batch(&device, &d, &["bad.jsonl", "--out-dir", "bad-out"]);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(err.contains("bad.jsonl line 8"), "{err}");
    assert!(results(&d.join("bad-out")).is_empty());

    // Interrupted: kill -9 once some results are written.
    let out_dir = d.join("out");
    let mut child = Command::new(bin("signer-client"))
        .current_dir(&d)
        .args([
            "--link",
            device.to_str().unwrap(),
            "batch",
            "requests.jsonl",
            "--out-dir",
            "out",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    while results(&out_dir).len() < 8 {
        assert!(Instant::now() < until, "no results from the batch");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = results(&out_dir);
    assert!(partial.len() < SIGN + CERTIFY, "interrupted before the end");

    // Again, to the end: what was written is kept, the rest is done.
    let (code, out, err) = batch(&device, &d, &["requests.jsonl", "--out-dir", "out"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("already done before"), "{err}");
    let all = results(&out_dir);
    assert_eq!(all.len(), SIGN + CERTIFY);
    for (id, v) in &partial {
        assert_eq!(all[id], *v, "{id} kept");
    }
    assert!(all.values().all(|v| v["status"] == "ok"));
    // Each certificate verifies, in its own file; request ids that are not
    // file names are escaped.
    let (ok, text) = openssl(
        &d,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "sub.pem",
            "out/b-0.pem",
        ],
    );
    assert!(ok, "{text}");
    assert!(out_dir.join("p%2F0.asc").exists());

    // Once more without the output directory: every answer is the record of
    // the first issuance (nothing issued twice), one JSON line each.
    let (code, out, err) = batch(
        &device,
        &d,
        &["requests.jsonl", "--json", "--parallel", "8"],
    );
    assert_eq!(code, Some(0), "{err}");
    let replies: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), SIGN + CERTIFY);
    for r in &replies {
        let id = r["request_id"].as_str().unwrap();
        assert_eq!(r["result"]["replayed"], true, "{id}: {r}");
        assert_eq!(r["serial"], all[id]["serial"], "{id}");
    }
}

#[test]
fn a_directory_of_csrs_is_issued_with_the_names_they_ask_for() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    drop(bench.client());
    let device = bench.client_device();
    let d = c.dir().to_path_buf();
    let csrs = d.join("csrs");
    std::fs::create_dir(&csrs).unwrap();
    for name in ["a", "b", "c"] {
        let (ok, text) = openssl(
            &csrs,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}.example.org"),
                "-addext",
                &format!("subjectAltName=DNS:{name}.example.org,DNS:www.{name}.example.org"),
            ],
        );
        assert!(ok, "{text}");
    }
    let (code, out, err) = batch(
        &device,
        &d,
        &[
            "--csr-dir",
            "csrs",
            "--profile",
            "server",
            "--days",
            "30",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["status"], "ok", "{line}");
        let pem = line["certificate"].as_str().unwrap();
        std::fs::write(d.join("one.pem"), pem).unwrap();
        let (ok, text) = openssl(
            &d,
            &[
                "x509",
                "-in",
                "one.pem",
                "-noout",
                "-subject",
                "-nameopt",
                "RFC2253",
                "-ext",
                "subjectAltName",
            ],
        );
        assert!(ok, "{text}");
        let cn = text
            .split("subject=CN=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        assert!(text.contains(&format!("DNS:{cn}, DNS:www.{cn}")), "{text}");
        assert!(line["request_id"].as_str().unwrap().starts_with("csr-"));
    }
    // The same directory again: the same certificates.
    let (code, again, _) = batch(
        &device,
        &d,
        &[
            "--csr-dir",
            "csrs",
            "--profile",
            "server",
            "--days",
            "30",
            "--json",
        ],
    );
    assert_eq!(code, Some(0));
    assert!(
        again.lines().all(|l| l.contains(r#""replayed":true"#)),
        "{again}"
    );

    // A private key among the CSRs: refused before anything is sent.
    std::fs::copy(csrs.join("a.key"), csrs.join("zz-key.pem")).unwrap();
    let (code, out, err) = batch(
        &device,
        &d,
        &["--csr-dir", "csrs", "--profile", "server", "--json"],
    );
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("zz-key.pem") && err.contains("private key"),
        "{err}"
    );
    // With --json, the one line on standard output is the error, no results.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["kind"], "input", "{out}");
}
