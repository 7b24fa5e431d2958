//! The `openssl ca` baseline: one process per certificate, as CA scripts
//! around OpenSSL issue them, with a file key of the same type as ours.

use std::path::Path;
use std::time::Instant;

use signer_testsupport::ca::openssl;

/// A self-signed CA certificate `ca.pem` with its file key `ca.key` in `dir`.
pub fn self_signed(dir: &Path, newkey: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=openssl CA",
        "-days",
        "30",
    ]);
    let (ok, text) = openssl(dir, &args);
    anyhow::ensure!(ok, "{text}");
    Ok(())
}

/// A CA with a file key in `dir` (`rsa2048` or `p256`), ready for `openssl ca`.
fn setup(dir: &Path, key: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("certs"))?;
    let newkey: &[&str] = if key == "rsa2048" {
        &["-newkey", "rsa:2048"]
    } else {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    self_signed(dir, newkey)?;
    std::fs::write(dir.join("index.txt"), "")?;
    std::fs::write(dir.join("serial"), "2100000000000001\n")?;
    std::fs::write(
        dir.join("openssl.cnf"),
        "[ca]\ndefault_ca = CA_default\n[CA_default]\ndir = .\ndatabase = index.txt\nserial = serial\n\
         new_certs_dir = certs\ncertificate = ca.pem\nprivate_key = ca.key\ndefault_md = sha256\n\
         default_days = 30\npolicy = any\nunique_subject = no\nx509_extensions = ext\ncopy_extensions = none\n\
         [any]\ncommonName = supplied\n[ext]\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:bench.example.org\nsubjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n",
    )?;
    Ok(())
}

/// Certificates per second: `parallel` CAs (one per core), each issuing
/// `n / parallel` certificates with one `openssl ca` process per certificate.
pub fn rate(
    work: &Path,
    key: &str,
    csr_pem: &Path,
    n: usize,
    parallel: usize,
) -> anyhow::Result<f64> {
    let dirs: Vec<_> = (0..parallel)
        .map(|p| work.join(format!("openssl-ca-{key}-{parallel}-{p}")))
        .collect();
    for d in &dirs {
        setup(d, key)?;
        std::fs::copy(csr_pem, d.join("req.csr"))?;
    }
    let per = (n / parallel).max(1);
    let started = Instant::now();
    let handles: Vec<_> = dirs
        .into_iter()
        .map(|d| {
            std::thread::spawn(move || -> anyhow::Result<()> {
                for i in 0..per {
                    let out = format!("c{i}.pem");
                    let (ok, text) = openssl(
                        &d,
                        &[
                            "ca",
                            "-batch",
                            "-config",
                            "openssl.cnf",
                            "-in",
                            "req.csr",
                            "-out",
                            &out,
                            "-notext",
                            "-subj",
                            "/CN=bench.example.org",
                        ],
                    );
                    anyhow::ensure!(ok, "{text}");
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("openssl thread panicked"))??;
    }
    Ok((per * parallel) as f64 / started.elapsed().as_secs_f64())
}
