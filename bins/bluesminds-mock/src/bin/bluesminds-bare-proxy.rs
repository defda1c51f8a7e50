//! `bluesminds-bare-proxy`: the limit line of `just bench` and `just bench-peers`. A reverse
//! proxy built from the same parts as the gateway (hyper's server, hyper-util's pooled client
//! with `TCP_NODELAY`, a multi-threaded Tokio runtime) that does nothing else: no key, no
//! limits, no usage, no inspection of the body, which it streams through. Whatever the gateway
//! spends beyond this is the price of what it does.
//!
//! ```text
//! bluesminds-bare-proxy --listen 127.0.0.1:3500 --upstream http://127.0.0.1:9401
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use clap::Parser;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "bluesminds-bare-proxy", version)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:3500")]
    listen: SocketAddr,
    /// The upstream's root, `http://host:port`.
    #[arg(long)]
    upstream: Uri,
}

type Body = BoxBody<Bytes, hyper::Error>;

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstream: &Uri,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/"));
    let mut parts = upstream.clone().into_parts();
    parts.path_and_query = Some(path);
    let Ok(uri) = Uri::from_parts(parts) else {
        return status(StatusCode::BAD_REQUEST);
    };
    *req.uri_mut() = uri;
    req.headers_mut().remove(http::header::HOST);
    match client.request(req).await {
        Ok(res) => res.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *res.status_mut() = code;
    res
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(512).build(http);
    let listener = TcpListener::bind(args.listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), args.upstream.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move { Ok::<_, Infallible>(forward(&client, &upstream, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
