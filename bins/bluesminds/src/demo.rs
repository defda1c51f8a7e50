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
    // Payments go to a mock Creem in the same process: its checkout pages pay at once and
    // send the signed webhook, as Creem would.
    let creem = start_creem(&mut config).await?;

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
        .create_key(user.id, NewKey::named("demo", Scope::ALL.to_vec()))
        .await
        .context("cannot create the demo API key")?;
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    creem.set_webhook_url(&format!("http://{addr}/api/billing/webhook"));
    let creem_url = creem.url();
    let key = &issued.key;
    println!(
        "\nBluesMinds demo is running.\n\
         \n  gateway   http://{addr}\
         \n  dashboard http://{addr}/login  (sign in as the user below)\
         \n  upstream  http://{mock_addr}  (in-process bluesminds-mock)\
         \n  payments  {creem_url}  (in-process mock Creem: its checkout pages pay at once)\
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
         \nAnthropic's Messages API, or Anthropic's SDK (base_url http://{addr}):\n\
         \n  curl http://{addr}/v1/messages -H \"x-api-key: {key}\" \\\
         \n    -d '{{\"model\":\"gpt-4\",\"max_tokens\":16,\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'\n\
         \nPayments: sign in (POST /api/auth/login), then POST /api/billing/checkout with\
         \n{{\"tier\":\"pro\"}} or {{\"credit_pack\":\"small\"}} answers a checkout URL; opening it pays.\n\
         \nPress Ctrl-C to stop.\n"
    );
    crate::run(listener, app, shutdown).await;
    let _ = mock_stop.send(());
    let _ = mock.await;
    Ok(())
}

/// Starts the mock Creem and points the payments configuration at it (random secrets, a
/// product for every paid tier at its plan's price, a credit pack, the invoice product).
async fn start_creem(config: &mut Config) -> anyhow::Result<bluesminds_mock::creem::CreemMock> {
    use bluesminds_mock::creem::{CreemMock, CreemMockConfig, CreemProduct};
    let api_key = crate::secrets::random_password()?;
    let webhook_secret = crate::secrets::random_password()?;
    let product = |id: &str, price_micros: i64, recurring: bool| CreemProduct {
        id: id.to_owned(),
        price_cents: price_micros / 10_000,
        currency: "USD".to_owned(),
        recurring,
    };
    let mut products = vec![
        product("prod_demo_pack", 10_000_000, false),
        product("prod_demo_invoice", 10_000, false),
    ];
    let c = &mut config.billing.creem;
    for tier in
        [gateway_core::Tier::Starter, gateway_core::Tier::Pro, gateway_core::Tier::Enterprise]
    {
        let id = format!("prod_demo_{tier}");
        products.push(product(&id, tier.default_plan().price_monthly_micros, true));
        c.products.insert(tier.to_string(), id);
    }
    let creem = CreemMock::start(CreemMockConfig {
        api_key: api_key.clone(),
        webhook_secret: webhook_secret.clone(),
        webhook_url: String::new(),
        products,
    })
    .await
    .context("cannot start the mock Creem")?;
    c.api_key = api_key;
    c.webhook_secret = webhook_secret;
    c.api_url = creem.url();
    "prod_demo_invoice".clone_into(&mut c.invoice_product_id);
    c.credit_packs.insert(
        "small".to_owned(),
        crate::config::CreditPackConfig {
            product_id: "prod_demo_pack".to_owned(),
            price_micros: 10_000_000,
            credits_micros: 10_000_000,
        },
    );
    Ok(creem)
}
