//! Signing written documents. Some partners require a signature inside the document
//! (ICEGATE's `digSign`, made with a Class III certificate by ICEGATE's own signing
//! utility). The gateway does not hold those keys: a configured signer does the signing,
//! as an external command that reads the unsigned document on standard input and writes
//! the signed one on standard output.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Signs a written document; returns the signed document.
pub trait Signer: Send + Sync {
    fn sign(&self, unsigned: &[u8]) -> Result<Vec<u8>, String>;
}

/// Largest signed document accepted back from a signer.
const MAX_SIGNED_BYTES: usize = 64 * 1024 * 1024;

/// An external command: `[signers] icegate-csn = ["/opt/icegate/sign", "--key", "k.pem"]`.
#[derive(Debug, Clone)]
pub struct CommandSigner {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

impl Signer for CommandSigner {
    fn sign(&self, unsigned: &[u8]) -> Result<Vec<u8>, String> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or("the signer command is empty")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start signer {program:?}: {e}"))?;
        // Feed and drain on threads so that neither pipe can fill up and stall the child.
        let mut stdin = child.stdin.take().ok_or("signer stdin")?;
        let input = unsigned.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let mut stdout = child.stdout.take().ok_or("signer stdout")?;
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            (&mut stdout)
                .take(MAX_SIGNED_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map(|_| out)
        });
        let mut stderr = child.stderr.take().ok_or("signer stderr")?;
        let errors = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = (&mut stderr).take(4096).read_to_end(&mut out);
            String::from_utf8_lossy(&out).trim().to_owned()
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < self.timeout => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "signer {program:?} did not finish within {} s",
                        self.timeout.as_secs()
                    ));
                }
                Err(e) => return Err(format!("signer {program:?}: {e}")),
            }
        };
        let _ = feeder.join();
        let output = reader
            .join()
            .map_err(|_| "signer output reader panicked")?
            .map_err(|e| format!("reading signer output: {e}"))?;
        let stderr = errors.join().unwrap_or_default();
        if !status.success() {
            return Err(format!("signer {program:?} failed ({status}): {stderr}"));
        }
        if output.len() > MAX_SIGNED_BYTES {
            return Err(format!(
                "signer {program:?} wrote more than {MAX_SIGNED_BYTES} bytes"
            ));
        }
        Ok(output)
    }
}
