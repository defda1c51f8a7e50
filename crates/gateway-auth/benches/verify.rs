//! Key verification on the hot path: a cached hit (the common case), the parse that refuses a
//! malformed bearer, and a negative-cache hit for a known-wrong key.
//!
//! `cargo bench -p gateway-auth --bench verify`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_auth::{
    Accounts, AccountsConfig, AuthStores, InMemoryAuthStore, KeyVerifier, NewKey, VerifierConfig,
    apikey,
};
use gateway_core::{Scope, SystemClock};

fn bench(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = Arc::new(InMemoryAuthStore::default());
    let config = AccountsConfig { password_cost: 4, key_cost: 10, ..AccountsConfig::default() };
    let accounts = Accounts::new(AuthStores::from(store.clone()), b"session secret", config);
    let verifier = KeyVerifier::new(
        store.clone(),
        store,
        b"api key secret, 32 bytes or more",
        Arc::new(SystemClock),
        VerifierConfig { bcrypt_cost: 10, ..VerifierConfig::default() },
    );
    let (key, wrong) = rt.block_on(async {
        let user = accounts.signup("bench@example.com", "password-1", None).await.unwrap();
        let issued = accounts
            .create_key(user.id, NewKey::named("bench", Scope::ALL.to_vec()))
            .await
            .unwrap();
        verifier.verify(&issued.key).await.unwrap();
        let wrong = apikey::generate().unwrap().full();
        let _ = verifier.verify(&wrong).await;
        (issued.key, wrong)
    });
    let header = format!("Bearer {key}");

    let mut g = c.benchmark_group("key_verification");
    g.bench_function("cached_hit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(verifier.verify_header(Some(black_box(&header))).await.unwrap())
        });
    });
    g.bench_function("negative_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(verifier.verify(black_box(&wrong)).await.unwrap_err()) });
    });
    g.bench_function("malformed_refused", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(verifier.verify_header(Some("Bearer sk-not-ours")).await.unwrap_err())
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
