//! `bluesminds demo`: the gateway, an in-process mock upstream, a demo admin and an API key.

use std::sync::Arc;

use anyhow::Context as _;
use gateway_auth::NewKey;
use gateway_core::Scope;

use crate::App;
use crate::config::{Config, UpstreamSeed};

pub const DEMO_EMAIL: &str = "demo@bluesminds.local";

/// Runs the demo until `shutdown` resolves.
#[allow(clippy::print_stdout)]
pub async fn run(
    mut config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the mock upstream")?;
    let mock_addr = mock_listener.local_addr()?;
    let (mock_stop, mock_stopped) = tokio::sync::oneshot::channel::<()>();
    let mock = tokio::spawn(bluesminds_mock::run(
        mock_listener,
        bluesminds_mock::MockConfig::default(),
        Arc::default(),
        async {
            let _ = mock_stopped.await;
        },
    ));
    config.upstreams.push(UpstreamSeed {
        url: format!("http://{mock_addr}"),
        api_key: None,
        models: bluesminds_mock::MockConfig::default().models,
    });

    let bind = config.server.bind.clone();
    let app = Arc::new(App::build(config).await?);
    let password = crate::secrets::random_password()?;
    let user = app
        .accounts
        .create_or_promote_admin(DEMO_EMAIL, &password)
        .await
        .context("cannot create the demo user")?;
    let issued = app
        .accounts
        .create_key(
            user.id,
            NewKey::named("demo", vec![Scope::ChatCompletions, Scope::Embeddings, Scope::Models]),
        )
        .await
        .context("cannot create the demo API key")?;
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    let key = &issued.key;
    println!(
        "\nBluesMinds demo is running.\n\
         \n  gateway   http://{addr}\
         \n  upstream  http://{mock_addr}  (in-process bluesminds-mock)\
         \n  user      {DEMO_EMAIL} / {password}  (admin)\
         \n  API key   {key}\
         \n            shown once; the database keeps only its bcrypt hash\n\
         \nTry it:\n\
         \n  curl http://{addr}/api/v1/chat/completions \\\
         \n    -H \"Authorization: Bearer {key}\" \\\
         \n    -H \"Content-Type: application/json\" \\\
         \n    -d '{{\"model\":\"gpt-4\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n\
         \nStreamed, or with the OpenAI SDK (base_url http://{addr}/api/v1):\n\
         \n  curl -N http://{addr}/api/v1/chat/completions -H \"Authorization: Bearer {key}\" \\\
         \n    -d '{{\"model\":\"gpt-4\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'\n\
         \nPress Ctrl-C to stop.\n"
    );
    crate::run(listener, app, shutdown).await;
    let _ = mock_stop.send(());
    let _ = mock.await;
    Ok(())
}
