//! The attacker's script: one hostile client against two gateway instances sharing Postgres and
//! Redis (with mail and payments set up), trying in turn what docs/SECURITY.md defends
//! against, each outcome asserted, and a line per attack printed:
//! - brute-forcing a password across both instances, and many emails from one address;
//! - reusing a password-reset token (on the other instance) and guessing tokens;
//! - the forgot-password endpoint as an email oracle, by its answer and by its time;
//! - payment webhooks forged, tampered with, and replayed to both instances;
//! - an oversized body and a deeply nested one on the API;
//! - a flood of headers, and headers sent too slowly (slowloris), while others are served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bluesminds_mock::creem::{CreemMock, CreemMockConfig, CreemProduct};
use serde_json::{Value, json};
use support::{Gateway, Mock, PATIENCE, Reply, call, env_refs, mailed_token, request_from};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WEBHOOK_SECRET: &str = "whsec_attacker_test_0123456789";
const CREEM_KEY: &str = "creem_attacker_test_key";

fn report(attack: &str, outcome: &str) {
    eprintln!("attack: {attack:<46} {outcome}");
}

/// The attacker's addresses (loopback, told apart from the users' 127.0.0.1): one for the
/// sign-in attacks, one for the recovery attacks, one for the rest.
const SPRAYER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);
const RESETTER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 67);
const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 68);

/// A JSON POST from `source`, without a session.
async fn post(source: Ipv4Addr, addr: SocketAddr, path: &str, body: &Value) -> Reply {
    request_from(source, addr, "POST", path, &[], body.to_string().as_bytes()).await
}

/// An SMTP server that takes connections and never says a word: a mail sent to it hangs until
/// the gateway's SMTP timeout (15 s).
async fn black_hole_smtp() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Reads what the server sends on `s` until it closes the connection (or `PATIENCE`).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let _ =
        tokio::time::timeout(PATIENCE, s.read_to_end(&mut reply)).await.expect("closed in time");
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn an_attacker_against_two_instances_gets_nowhere() {
    let sink = support::SmtpSink::start().await;
    let hole = black_hole_smtp().await;
    let mock = Mock::start().await;
    let creem = CreemMock::start(CreemMockConfig {
        api_key: CREEM_KEY.into(),
        webhook_secret: WEBHOOK_SECRET.into(),
        webhook_url: String::new(),
        products: vec![CreemProduct {
            id: "prod_small".into(),
            price_cents: 1_000,
            currency: "USD".into(),
            recurring: false,
        }],
    })
    .await
    .unwrap();
    let (_db, mut env) = support::shared_backends(&[
        ("BLUESMINDS_AUTH__LOGIN_SLOWDOWN_AFTER", "100"),
        ("BLUESMINDS_SERVER__HEADER_TIMEOUT_MS", "500"),
        ("BLUESMINDS_SERVER__MAX_BODY_BYTES", "65536"),
        ("EMAIL_FROM", "BluesMinds <noreply@example.com>"),
        ("BLUESMINDS_BILLING__CREEM__API_KEY", CREEM_KEY),
        ("BLUESMINDS_BILLING__CREEM__WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("BLUESMINDS_BILLING__CREEM__CREDIT_PACKS__SMALL__PRODUCT_ID", "prod_small"),
        ("BLUESMINDS_BILLING__CREEM__CREDIT_PACKS__SMALL__PRICE_MICROS", "10000000"),
        ("BLUESMINDS_BILLING__CREEM__CREDIT_PACKS__SMALL__CREDITS_MICROS", "10000000"),
    ])
    .await;
    env.push(("BLUESMINDS_BILLING__CREEM__API_URL".into(), creem.url()));
    env.push(("LITELLM_SERVER_1_URL".into(), mock.url()));
    env.push(("LITELLM_SERVER_1_MODELS".into(), "gpt-4".into()));
    // Instance a mails through the sink; instance b's mail server never answers.
    let mut env_a = env.clone();
    env_a.push(("SMTP_URL".into(), format!("smtp://{}", sink.addr)));
    let mut env_b = env.clone();
    env_b.push(("SMTP_URL".into(), format!("smtp://{hole}")));
    let a = Gateway::start(&[], &env_refs(&env_a)).await;
    let b = Gateway::start(&[], &env_refs(&env_b)).await;
    let both = [a.addr, b.addr];

    // --- Brute force across both instances: ten failures lock the email on both, the right
    // password included; many emails from one address lock the address.
    let victim = support::signup(a.addr, "victim@example.com").await;
    let login = async |addr: SocketAddr, email: &str, password: &str| {
        let body = json!({"email": email, "password": password});
        post(SPRAYER, addr, "/api/auth/login", &body).await
    };
    for i in 0..10 {
        let r = login(both[i % 2], "victim@example.com", &format!("guess number {i}")).await;
        assert_eq!(r.status, 401, "guess {i}: {:?}", r.body);
    }
    for addr in both {
        let r = login(addr, "victim@example.com", "correct horse battery").await;
        assert_eq!(r.status, 429, "locked on both instances, the right password too");
        assert!(r.header("retry-after").is_some());
    }
    report("login brute force, 10 guesses over 2 instances", "email locked on both (429)");
    let mut address_locked_after = None;
    for i in 0..60 {
        let r = login(both[i % 2], &format!("spray{i}@example.com"), "Password1!").await;
        if r.status == 429 {
            address_locked_after = Some(i);
            break;
        }
        assert_eq!(r.status, 401);
    }
    // The lock counts failures of any email from this address, five times the email's ten
    // (less the victim's ten already counted).
    assert_eq!(address_locked_after, Some(40), "the spraying address is locked");
    report("password spraying, one address, many emails", "address locked after 50 failures");
    // The victim's own session was never at risk.
    assert_eq!(call(a.addr, "GET", "/api/auth/me", &victim, &Value::Null).await.status, 200);

    // --- The forgot endpoint as an oracle: the same answer, in the same time, for an account
    // and for nobody, even while the instance's mail server hangs (instance b).
    let forgot = async |addr: SocketAddr, email: &str| {
        let started = Instant::now();
        let r = post(RESETTER, addr, "/api/auth/password/forgot", &json!({"email": email})).await;
        (r, started.elapsed())
    };
    let mut slowest = Duration::ZERO;
    for email in ["victim@example.com", "nobody-here@example.com"] {
        let (r, took) = forgot(b.addr, email).await;
        assert_eq!(r.status, 202);
        assert_eq!(r.json(), forgot(a.addr, "nobody-at-all@example.com").await.0.json());
        slowest = slowest.max(took);
    }
    // The account's mail hangs for 15 s at b: an answer that waited for it would show.
    assert!(slowest < Duration::from_secs(5), "the answer waited for the mail: {slowest:?}");
    report("forgot-password as an email oracle", "same answer; not waiting on the mail");

    // --- Reset tokens: one use, on either instance; guesses refused, then the address is
    // throttled.
    let (r, _) = forgot(a.addr, "victim@example.com").await;
    assert_eq!(r.status, 202);
    let mails = sink.wait_for(1).await;
    let token = mailed_token(mails.last().unwrap(), "/reset-password");
    let reset = async |addr: SocketAddr, token: &str, password: &str| {
        let body = json!({"token": token, "password": password});
        post(RESETTER, addr, "/api/auth/password/reset", &body).await
    };
    // (The link is the victim's; the attacker who intercepted it uses it, then tries again.)
    assert_eq!(reset(a.addr, &token, "the victim's new password").await.status, 200);
    let reused = reset(b.addr, &token, "the attacker's password!").await;
    assert_eq!(reused.status, 400, "a used token is dead on every instance");
    assert_eq!(reused.openai_error()["param"], "token");
    report("reset token reused on the other instance", "refused (400)");
    let mut guesses = 0;
    loop {
        guesses += 1;
        let guess = format!("{guesses:064x}");
        let r = reset(both[guesses % 2], &guess, "the attacker's password!").await;
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 400, "guess {guesses}: {:?}", r.body);
        assert!(guesses < 100, "guessing was never throttled");
    }
    // Wrong tokens count as failures of the address: five times the email lockout (10), and
    // the used token's second try was one.
    assert_eq!(guesses, 50, "throttled at the fiftieth failure");
    report("reset token guessing over 2 instances", "address throttled (429) after 50 tries");

    // --- Payment webhooks: forged, tampered with, replayed to both instances.
    let cookie = support::signup(b.addr, "payer@example.com").await;
    let checkout =
        call(a.addr, "POST", "/api/billing/checkout", &cookie, &json!({"credit_pack": "small"}))
            .await;
    assert_eq!(checkout.status, 200, "{:?}", checkout.body);
    let url = checkout.json()["url"].as_str().unwrap().to_owned();
    let id = url.rsplit('/').next().unwrap().to_owned();
    let event = creem.checkout_completed(&id, None).unwrap();
    let body = event.to_string();
    let deliver = async |addr: SocketAddr, body: &str, signature: &str| {
        request_from(
            FLOODER,
            addr,
            "POST",
            "/api/billing/webhook",
            &[("creem-signature", signature)],
            body.as_bytes(),
        )
        .await
    };
    let forged = bluesminds_mock::creem::signature("whsec_guessed", &body);
    assert_eq!(deliver(a.addr, &body, &forged).await.status, 401, "a forged signature");
    let tampered = body.replace("1000", "100000");
    let signed = bluesminds_mock::creem::signature(WEBHOOK_SECRET, &body);
    assert_eq!(deliver(b.addr, &tampered, &signed).await.status, 401, "a tampered body");
    assert_eq!(deliver(a.addr, &body, "").await.status, 401, "no signature");
    let balance = async || {
        call(a.addr, "GET", "/api/billing/ledger", &cookie, &Value::Null).await.json()
            ["balance_micros"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(balance().await, 0, "nothing was credited by the forgeries");
    let (first, second) =
        tokio::join!(deliver(a.addr, &body, &signed), deliver(b.addr, &body, &signed));
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(deliver(b.addr, &body, &signed).await.json()["outcome"], "duplicate");
    assert_eq!(balance().await, 10_000_000, "credited once");
    report("webhook forged, tampered, unsigned", "refused (401), nothing credited");
    report("webhook replayed to both instances, 3 times", "credited once");

    // --- Bodies: oversized and deeply nested; nothing reaches the upstream.
    let key = support::user_with_key(&a, "bodies@example.com", json!({"name": "k"})).await;
    let auth = format!("Bearer {key}");
    let upstream_before = mock.requests();
    let mut big = br#"{"model":"gpt-4","messages":[{"role":"user","content":""#.to_vec();
    big.resize(200_000, b'a');
    big.extend_from_slice(br#""}]}"#);
    let r = request_from(
        FLOODER,
        b.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &big,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.openai_error()["code"], "request_too_large");
    let deep = format!(
        r#"{{"model":"gpt-4","messages":[{{"role":"user","content":"hi"}}],"metadata":{}{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let r = request_from(
        FLOODER,
        a.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        deep.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(mock.requests(), upstream_before, "nothing was forwarded");
    report("oversized (200 KB) and deeply nested bodies", "413 and 400, nothing forwarded");

    // --- Header flood: too many headers, and too large a head, are refused; the instance
    // serves the next client.
    for (what, head) in [
        ("2,000 headers", "x-flood: 1\r\n".repeat(2_000)),
        ("a 1 MB header", format!("x-flood: {}\r\n", "a".repeat(1 << 20))),
    ] {
        let mut s = TcpStream::connect(a.addr).await.unwrap();
        let request = format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{head}\r\n");
        // The server may close before it has read everything: a failed write is fine.
        let _ = s.write_all(request.as_bytes()).await;
        let reply = read_to_close(&mut s).await;
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 431"), "{what}: {reply}");
    }
    assert_eq!(support::request(a.addr, "GET", "/healthz", b"").await.status, 200);
    report("header flood (2,000 headers; a 1 MB header)", "431 or closed; others served");

    // --- Slowloris: 50 connections dribbling headers are closed after the header timeout,
    // and a client meanwhile is served.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        slow.push(s);
    }
    assert_eq!(support::request(b.addr, "GET", "/healthz", b"").await.status, 200);
    for s in &mut slow {
        // One more header line, too late for some, then nothing.
        let _ = s.write_all(b"x-slow: 1\r\n").await;
        let reply = read_to_close(s).await;
        assert!(!reply.contains(" 200 "), "slow headers were served: {reply}");
    }
    report("slowloris, 50 connections", "closed after the header timeout; others served");
}
