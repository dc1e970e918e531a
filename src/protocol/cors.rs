//! CORS for the browser calls (ticket, stats, broadcast, usage), as the platform's Hono
//! `cors()` answers them (platform-protocol.md §7.5), with the origins from `CORS_ORIGINS`.
//!
//! `CORS_ORIGINS` is a comma-separated list of entries: an exact origin
//! (`https://happy.app`), `localhost` (an http or https origin whose host is `localhost` or
//! `127.0.0.1`, any port), or `*` (echo any origin, as the platform does outside production).
//!
//! Origins are parsed and compared whole: scheme and host case-insensitively, the port with
//! the scheme's default filled in. The platform's `localhost` rule is a substring test
//! (`https://localhost.evil.tld` passes it, with credentials); ours looks at the parsed host.

use url::Url;

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
    exact: Vec<Origin>,
    localhost: bool,
    any: bool,
}

/// An origin as compared: lowercase scheme and host, and the port with the default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]`, http or https, with nothing else: no userinfo, path,
    /// query or fragment, and no character the URL parser would silently drop or rewrite.
    fn parse(text: &str) -> Option<Origin> {
        let (_, rest) = text.split_once("://")?;
        // The parser strips tabs and newlines, reads `\` as `/`, and makes `https://a/` and
        // `https://a` alike; an origin has none of these.
        if rest.is_empty()
            || !text.bytes().all(|b| b.is_ascii_graphic())
            || rest.contains(['/', '\\', '?', '#', '@'])
        {
            return None;
        }
        let url = Url::parse(text).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        Some(Origin {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }

    /// What the `localhost` entry allows: the host itself, not a name containing it.
    fn is_local(&self) -> bool {
        matches!(self.host.as_str(), "localhost" | "127.0.0.1")
    }
}

/// A `CORS_ORIGINS` entry that is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an origin; entries are `*`, `localhost` or http(s)://host[:port] with no path, query or user")]
pub struct CorsError(pub String);

impl CorsPolicy {
    /// Parses `CORS_ORIGINS`; the error says which entry is wrong and what is allowed.
    pub fn parse(value: &str) -> Result<Self, CorsError> {
        let mut p = CorsPolicy::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry {
                "*" => p.any = true,
                "localhost" => p.localhost = true,
                o => match Origin::parse(o) {
                    Some(origin) => p.exact.push(origin),
                    None => return Err(CorsError(crate::protocol::truncate(o, 80))),
                },
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
        if self.any {
            return Some(o.to_owned());
        }
        let parsed = Origin::parse(o)?;
        let allowed = (self.localhost && parsed.is_local()) || self.exact.contains(&parsed);
        // Echoed as sent: the browser compares it with its own serialization.
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
    fn the_localhost_entry_matches_the_parsed_host_only() {
        let p = CorsPolicy::parse("localhost").unwrap();
        for o in [
            "http://localhost",
            "https://localhost",
            "http://localhost:5173",
            "https://localhost:3000",
            "http://127.0.0.1",
            "http://127.0.0.1:8081",
            "https://127.0.0.1:443",
            "HTTP://LocalHost:8080",
        ] {
            assert_eq!(p.allow_origin(Some(o)).as_deref(), Some(o), "{o}");
        }
        for o in [
            "https://localhost.evil.tld",
            "https://evil-localhost.tld",
            "https://evil.tld/localhost",
            "https://localhost@evil.tld",
            "http://127.0.0.1.evil.tld",
            "http://evil.tld:127",
            "http://localhost.",
            "ws://localhost",
            "localhost",
            "null",
            "https://localhost/",
            "https://localhost:99999",
        ] {
            assert_eq!(p.allow_origin(Some(o)), None, "{o}");
        }
    }

    #[test]
    fn exact_entries_compare_the_whole_origin() {
        let p = CorsPolicy::parse("https://happy.app,http://dev.example:8080").unwrap();
        for o in [
            "https://happy.app",
            "https://HAPPY.app",
            "HTTPS://happy.app",
            "https://happy.app:443",
            "http://dev.example:8080",
        ] {
            assert_eq!(p.allow_origin(Some(o)).as_deref(), Some(o), "{o}");
        }
        for o in [
            "https://happy.app.evil.tld",
            "https://evil.tld?https://happy.app",
            "https://happy.app:444",
            "http://happy.app",
            "https://happy.app/",
            "https://user@happy.app",
            "http://dev.example",
            "http://dev.example:80",
            "https://dev.example:8080",
        ] {
            assert_eq!(p.allow_origin(Some(o)), None, "{o}");
        }
        // An entry's own default port is normalised the same way.
        let p = CorsPolicy::parse("https://happy.app:443").unwrap();
        assert!(p.allow_origin(Some("https://happy.app")).is_some());
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
        assert!(e.to_string().contains("`happy.app`"), "{e}");
        assert!(CorsPolicy::parse("https://a.example/path").is_err());
        for bad in [
            "https://user@a.example",
            "https://a.example:99999",
            "ftp://a.example",
            "https://",
            "https://a.example?q",
        ] {
            assert!(CorsPolicy::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(CorsPolicy::parse("").unwrap(), CorsPolicy::default());
    }
}
