//! The router: path segments matched against a table of resources, each with its methods.
//! No allocation: segments are borrowed from the request path.

use http::Method;

/// Every endpoint the gateway serves. Path parameters are borrowed from the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Signup,
}

impl Route {
    /// Operational endpoints are never shed by the in-flight cap, so probes keep answering
    /// under overload.
    pub fn is_ops(self) -> bool {
        matches!(self, Route::Healthz | Route::Readyz)
    }
}

/// The outcome of routing a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    Found(Route),
    /// The path exists but not with this method; the value is the `Allow` header.
    MethodNotAllowed(&'static str),
    NotFound,
}

const MAX_SEGMENTS: usize = 8;

/// Routes `method` and `path`. A trailing slash is ignored.
pub fn route(method: &Method, path: &str) -> Routed {
    let mut segs = [""; MAX_SEGMENTS];
    let mut n = 0;
    for seg in path.trim_matches('/').split('/') {
        if n == MAX_SEGMENTS {
            return Routed::NotFound;
        }
        segs[n] = seg;
        n += 1;
    }
    match &segs[..n] {
        ["healthz"] => one(method, &Method::GET, "GET, HEAD", Route::Healthz),
        ["readyz"] => one(method, &Method::GET, "GET, HEAD", Route::Readyz),
        ["api", "auth", "signup"] => one(method, &Method::POST, "POST", Route::Signup),
        _ => Routed::NotFound,
    }
}

/// A resource with a single method (HEAD is answered like GET).
fn one(method: &Method, allowed: &Method, allow: &'static str, route: Route) -> Routed {
    if method == allowed || (method == Method::HEAD && allowed == Method::GET) {
        Routed::Found(route)
    } else {
        Routed::MethodNotAllowed(allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_and_without_trailing_slash() {
        assert_eq!(route(&Method::GET, "/healthz"), Routed::Found(Route::Healthz));
        assert_eq!(route(&Method::GET, "/healthz/"), Routed::Found(Route::Healthz));
        assert_eq!(route(&Method::HEAD, "/readyz"), Routed::Found(Route::Readyz));
        assert_eq!(route(&Method::POST, "/api/auth/signup"), Routed::Found(Route::Signup));
    }

    #[test]
    fn wrong_method_is_405_with_allow_and_unknown_paths_404() {
        assert_eq!(route(&Method::POST, "/healthz"), Routed::MethodNotAllowed("GET, HEAD"));
        assert_eq!(route(&Method::GET, "/api/auth/signup"), Routed::MethodNotAllowed("POST"));
        assert_eq!(route(&Method::GET, "/nope"), Routed::NotFound);
        assert_eq!(route(&Method::GET, "/"), Routed::NotFound);
        assert_eq!(route(&Method::GET, "/a/b/c/d/e/f/g/h/i"), Routed::NotFound);
        assert_eq!(route(&Method::GET, "/healthz/extra"), Routed::NotFound);
    }
}
