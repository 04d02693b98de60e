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
            format!(
                "POST /v1/seal-events HTTP/1.1\r\nHost: gateway\r\nauthorization: Bearer {}\r\n\
                 content-type: application/json\r\ncontent-length: 1000\r\n\r\n[{{\"device_id\"",
                app.admin_token
            )
            .as_bytes(),
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

/// Sends `request` on a raw connection, reads until the server closes it (within 30 s);
/// what came back and how long it took.
async fn until_closed(app: &crate::helpers::TestApp, request: &[u8]) -> (String, Duration) {
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        closed.is_ok(),
        "the connection is still open after {took:?}; got {text}"
    );
    (text, took)
}

/// The body deadline follows the declared length at the minimum rate (not the long cap),
/// and a 408 or a 413 closes the connection: the unread rest of the body cannot be taken
/// for the next request.
async fn the_deadline_follows_content_length_and_refusals_close(backend: Backend) {
    let Some(app) = spawn_app_with(backend, mappings_dir(), |s| {
        s.http.body_timeout_s = 600;
        s.http.body_grace_s = 0;
        s.http.min_body_bytes_per_s = 1_000;
    })
    .await
    else {
        return;
    };
    // 2000 bytes declared: due within 2 s. 1999 sent at once, the last never.
    let mut request = format!(
        "POST /v1/seal-events HTTP/1.1\r\nHost: gateway\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 2000\r\n\r\n",
        app.admin_token
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b' ', 1_999));
    let (text, took) = until_closed(&app, &request).await;
    assert!(text.starts_with("HTTP/1.1 408"), "after {took:?}: {text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("due within 2000 ms"), "{text}");
    assert!(took >= Duration::from_millis(1_500), "took {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // Over the limit by its declared length: 413 at once, and closed.
    let request = format!(
        "POST /v1/seal-events HTTP/1.1\r\nHost: gateway\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n[",
        app.admin_token,
        crate::helpers::TEST_BODY_LIMIT + 1
    );
    let (text, took) = until_closed(&app, request.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 413"), "after {took:?}: {text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    app.stopper.stop().await;
}

mod declared_length {
    #[tokio::test]
    async fn sqlite() {
        super::the_deadline_follows_content_length_and_refusals_close(super::Backend::Sqlite).await;
    }
}
