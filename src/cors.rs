//! CORS for the browser calls (ticket, stats, broadcast, usage), as the platform's Hono
//! `cors()` answers them (platform-protocol.md §7.5), with the origins from `CORS_ORIGINS`.
//!
//! `CORS_ORIGINS` is a comma-separated list of entries: an exact origin
//! (`https://happy.app`), `localhost` (any origin containing `localhost` or `127.0.0.1`, as
//! the platform allows), or `*` (echo any origin, as the platform does outside production).

/// Methods a preflight allows.
pub const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, PATCH, OPTIONS";
/// Request headers a preflight allows.
pub const ALLOW_HEADERS: &str =
    "Content-Type, Authorization, X-Requested-With, X-Request-Id, X-Client-Version, X-Correlation-Id";
/// Response headers scripts may read: the platform's, plus the rate-limit and retry headers
/// our refusals carry (the platform does not expose `Retry-After`; exposing it is harmless).
pub const EXPOSE_HEADERS: &str = "Content-Length, X-Request-Id, X-RateLimit-Limit, X-RateLimit-Remaining, Retry-After, X-Response-Time, Server-Timing, X-Correlation-Id";
/// How long a browser may cache a preflight, seconds.
pub const MAX_AGE_S: u32 = 86_400;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsPolicy {
    exact: Vec<String>,
    localhost: bool,
    any: bool,
}

impl CorsPolicy {
    /// Parses `CORS_ORIGINS`; the error says which entry is wrong and what is allowed.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut p = CorsPolicy::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry {
                "*" => p.any = true,
                "localhost" => p.localhost = true,
                o if is_origin(o) => p.exact.push(o.to_owned()),
                o => {
                    return Err(format!(
                        "`{}` is not an origin; entries are `*`, `localhost` or scheme://host[:port] with no path",
                        crate::protocol::truncate(o, 80)
                    ))
                }
            }
        }
        Ok(p)
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`: `*` without one,
    /// the origin itself when allowed, nothing when refused.
    pub fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        let Some(o) = origin else {
            return Some("*".into());
        };
        let allowed = self.any
            || (self.localhost && (o.contains("localhost") || o.contains("127.0.0.1")))
            || self.exact.iter().any(|e| e == o);
        allowed.then(|| o.to_owned())
    }

    /// The headers of an answer to a request with `origin` (preflight or not).
    pub fn headers(&self, origin: Option<&str>, preflight: bool) -> Vec<(&'static str, String)> {
        let mut h = vec![("vary", "Origin".to_owned())];
        let Some(allow) = self.allow_origin(origin) else {
            return h;
        };
        if allow != "*" {
            h.push(("access-control-allow-credentials", "true".into()));
        }
        h.push(("access-control-allow-origin", allow));
        if preflight {
            h.push(("access-control-allow-methods", ALLOW_METHODS.into()));
            h.push(("access-control-allow-headers", ALLOW_HEADERS.into()));
            h.push(("access-control-max-age", MAX_AGE_S.to_string()));
        } else {
            h.push(("access-control-expose-headers", EXPOSE_HEADERS.into()));
        }
        h
    }
}

fn is_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' ', ','])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_platforms_production_rules() {
        let p = CorsPolicy::parse("localhost, https://happy.app,https://www.happy.app").unwrap();
        assert_eq!(p.allow_origin(None).as_deref(), Some("*"));
        assert_eq!(
            p.allow_origin(Some("http://localhost:5173")).as_deref(),
            Some("http://localhost:5173")
        );
        assert_eq!(
            p.allow_origin(Some("http://127.0.0.1:8081")).as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(
            p.allow_origin(Some("https://happy.app")).as_deref(),
            Some("https://happy.app")
        );
        assert_eq!(p.allow_origin(Some("https://evil.example")), None);
        let any = CorsPolicy::parse("*").unwrap();
        assert_eq!(
            any.allow_origin(Some("https://evil.example")).as_deref(),
            Some("https://evil.example")
        );
    }

    #[test]
    fn preflight_and_simple_headers() {
        let p = CorsPolicy::parse("https://happy.app").unwrap();
        let h = p.headers(Some("https://happy.app"), true);
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            Some("https://happy.app")
        );
        assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
        assert!(header(&h, "access-control-allow-headers")
            .unwrap()
            .contains("Authorization"));
        assert_eq!(header(&h, "access-control-max-age"), Some("86400"));
        let h = p.headers(Some("https://happy.app"), false);
        assert!(header(&h, "access-control-expose-headers")
            .unwrap()
            .contains("X-RateLimit-Limit"));
        let h = p.headers(Some("https://other.example"), true);
        assert_eq!(header(&h, "access-control-allow-origin"), None);
        assert_eq!(header(&h, "vary"), Some("Origin"));
    }

    #[test]
    fn bad_entries_are_named() {
        let e = CorsPolicy::parse("https://ok.example,happy.app").unwrap_err();
        assert!(e.contains("`happy.app`"), "{e}");
        assert!(CorsPolicy::parse("https://a.example/path").is_err());
        assert_eq!(CorsPolicy::parse("").unwrap(), CorsPolicy::default());
    }
}
