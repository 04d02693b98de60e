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
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let read = (&mut stdout)
                .take(MAX_SIGNED_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map(|_| out);
            let _ = out_tx.send(read);
        });
        let mut stderr = child.stderr.take().ok_or("signer stderr")?;
        let (err_tx, err_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end (a signer must not die on a closed pipe), keep the start.
            let mut kept = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let room = 4096usize.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            let _ = err_tx.send(String::from_utf8_lossy(&kept).trim().to_owned());
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
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("signer {program:?}: {e}"));
                }
            }
        };
        drop(feeder);
        // A process the signer left running may hold its output open: wait for the rest
        // of it only until the deadline.
        let left = self.timeout.saturating_sub(started.elapsed()) + Duration::from_millis(100);
        let output = out_rx
            .recv_timeout(left)
            .map_err(|_| format!("signer {program:?} exited but its output did not end"))?
            .map_err(|e| format!("reading signer output: {e}"))?;
        let stderr = err_rx
            .recv_timeout(Duration::from_millis(100))
            .unwrap_or_default();
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
