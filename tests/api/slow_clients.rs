//! A client that sends its headers and a few body bytes, then stalls, gets 408 within the
//! body deadline instead of holding its connection open for ever (slowloris).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, mappings_dir, spawn_app_with};

async fn a_stalled_body_gets_408(backend: Backend, minimum_rate: bool) {
    let Some(app) = spawn_app_with(backend, mappings_dir(), |s| {
        if minimum_rate {
            // A long deadline: the rate is what stops it.
            s.http.body_timeout_s = 600;
            s.http.body_grace_s = 1;
            s.http.min_body_bytes_per_s = 100;
        } else {
            s.http.body_timeout_s = 2;
        }
    })
    .await
    else {
        return;
    };
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(
            b"POST /v1/seal-events HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\n\
              content-length: 1000\r\n\r\n[{\"device_id\"",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(
        read.is_ok(),
        "no answer and the connection still open after {took:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "after {took:?}: {text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

mod deadline {
    #[tokio::test]
    async fn sqlite() {
        super::a_stalled_body_gets_408(super::Backend::Sqlite, false).await;
    }
}

mod minimum_rate {
    #[tokio::test]
    async fn sqlite() {
        super::a_stalled_body_gets_408(super::Backend::Sqlite, true).await;
    }
}
