//! Which URLs the browser may load: `http`/`https` only, and never a host that resolves to a
//! loopback, private, link-local or metadata address unless the configuration allowlists it.
//!
//! The same check runs before a navigation starts and, through request interception, on every
//! request the page makes afterwards (redirects, subresources). Name resolution goes through a
//! [`Resolver`], so tests can map a public-looking name to a private address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use async_trait::async_trait;
use url::{Host, Url};

/// Why a URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("`{0}` is not a valid URL")]
    Invalid(String),
    #[error("only http:// and https:// URLs can be opened, not `{0}:`")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "`{host}` resolves to {ip}, a private, loopback or link-local address; the browser does not visit those unless ECDYSIS_BROWSER_ALLOW lists them"
    )]
    Private { host: String, ip: IpAddr },
    #[error("the name `{host}` could not be resolved ({reason})")]
    Dns { host: String, reason: String },
}

/// Resolves host names to addresses.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, port))
            .await?
            .map(|a| a.ip())
            .collect())
    }
}

/// Fixed answers for some names (tests); the rest go to the system resolver, or fail when
/// built with [`StaticResolver::only`].
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
    only: bool,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names not listed fail to resolve (nothing is asked of a DNS server).
    pub fn only() -> Self {
        Self {
            only: true,
            ..Self::default()
        }
    }

    /// Answer `host` with `ips`.
    pub fn with(mut self, host: &str, ips: &[IpAddr]) -> Self {
        self.names.insert(host.to_ascii_lowercase(), ips.to_vec());
        self
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        match self.names.get(&host.to_ascii_lowercase()) {
            Some(ips) => Ok(ips.clone()),
            None if self.only => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host}: no such name"),
            )),
            None => SystemResolver.resolve(host, port).await,
        }
    }
}

/// One allowlist entry: a host name (`intranet.local`, `*.corp.example`), an address, or a CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowRule {
    Host(String),
    /// `*.example.com`: any subdomain (not the bare domain).
    Suffix(String),
    Net {
        addr: IpAddr,
        prefix: u8,
    },
}

impl AllowRule {
    /// Parse one entry of `ECDYSIS_BROWSER_ALLOW`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty entry".into());
        }
        if let Some((addr, prefix)) = text.split_once('/') {
            let addr: IpAddr = addr
                .trim_matches(['[', ']'])
                .parse()
                .map_err(|_| format!("`{text}`: `{addr}` is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix must be 0..={max}"))?;
            return Ok(Self::Net { addr, prefix });
        }
        if let Ok(addr) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Net { addr, prefix });
        }
        let host = text.to_ascii_lowercase();
        if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("`{text}` is not a valid wildcard host"));
            }
            return Ok(Self::Suffix(format!(".{suffix}")));
        }
        if host.contains(['*', ' ', ':']) {
            return Err(format!(
                "`{text}` is neither a host name, an IP address nor a CIDR"
            ));
        }
        Ok(Self::Host(host))
    }

    fn allows_host(&self, host: &str) -> bool {
        match self {
            Self::Host(h) => h == host,
            Self::Suffix(suffix) => host.ends_with(suffix.as_str()),
            Self::Net { .. } => false,
        }
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        match self {
            Self::Net { addr, prefix } => in_net(ip, *addr, *prefix),
            _ => false,
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical(ip), canonical(net)) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (for allowlist matching).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// True for addresses the browser must not reach by default: loopback, private (RFC 1918,
/// carrier-grade NAT, unique local, site-local), link-local (which holds the cloud metadata
/// service), unspecified, multicast, broadcast, reserved and documentation ranges. An IPv6
/// address that carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is judged by
/// that IPv4 address, so `[::127.0.0.1]` is loopback like `127.0.0.1`.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        // "This network" 0.0.0.0/8 and reserved 240.0.0.0/4.
        || a == 0
        || a >= 240
        // Carrier-grade NAT 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments 192.0.0.0/24 (and 192.0.0.0/29 DS-Lite).
        || (a == 192 && b == 0 && c == 0)
        // Documentation: TEST-NET-1, -2, -3.
        || (a == 192 && b == 0 && c == 2)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        // Benchmarking 198.18.0.0/15.
        || (a == 198 && (b & 0xfe) == 18)
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return v4.iter().any(|v4| forbidden_v4(*v4));
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        // Multicast ff00::/8.
        || (s[0] & 0xff00) == 0xff00
        // Unique local fc00::/7.
        || (s[0] & 0xfe00) == 0xfc00
        // Link-local fe80::/10 and the deprecated site-local fec0::/10.
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // Documentation 2001:db8::/32 and 3fff::/20.
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] & 0xfff0) == 0x3ff0
        // Discard-only 100::/64.
        || s[..4] == [0x100, 0, 0, 0]
        // NAT64 local-use 64:ff9b:1::/48: where its IPv4 address sits depends on the
        // operator's prefix length, and it only ever leads into a local network.
        || s[..3] == [0x64, 0xff9b, 1]
}

/// The IPv4 addresses an IPv6 address carries: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d` (which also covers `::` and `::1`), IPv4-translated `::ffff:0:a.b.c.d`, NAT64
/// `64:ff9b::/96`, 6to4 `2002:AABB:CCDD::/48`, and Teredo `2001:0::/32` (its server and its
/// client, whose address is stored inverted). `None` for any other address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Vec<Ipv4Addr>> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    let low = v4(s[6], s[7]);
    match s {
        [0, 0, 0, 0, 0, 0 | 0xffff, ..] => Some(vec![low]),
        [0, 0, 0, 0, 0xffff, 0, ..] => Some(vec![low]),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(vec![low]),
        [0x2002, hi, lo, ..] => Some(vec![v4(hi, lo)]),
        [0x2001, 0, server_hi, server_lo, ..] => {
            Some(vec![v4(server_hi, server_lo), v4(!s[6], !s[7])])
        }
        _ => None,
    }
}

/// The check every URL the browser loads goes through.
#[derive(Clone)]
pub struct UrlGuard {
    allow: Vec<AllowRule>,
    resolver: Arc<dyn Resolver>,
}

impl std::fmt::Debug for UrlGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlGuard")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl UrlGuard {
    /// A guard with the given allowlist entries (already validated by the configuration;
    /// invalid entries are an error here too).
    pub fn new(allow: &[String], resolver: Arc<dyn Resolver>) -> Result<Self, String> {
        let allow = allow
            .iter()
            .map(|a| AllowRule::parse(a))
            .collect::<Result<_, _>>()?;
        Ok(Self { allow, resolver })
    }

    /// Parse and check a URL typed by a person or the model. A missing scheme means `https://`.
    pub async fn check_input(&self, text: &str) -> Result<Url, UrlRefused> {
        let text = text.trim().trim_matches(['<', '>']);
        let url = match Url::parse(text) {
            Ok(url) => url,
            Err(url::ParseError::RelativeUrlWithoutBase) if !text.contains(char::is_whitespace) => {
                Url::parse(&format!("https://{text}"))
                    .map_err(|_| UrlRefused::Invalid(text.to_string()))?
            }
            Err(_) => return Err(UrlRefused::Invalid(text.to_string())),
        };
        self.check(&url).await?;
        Ok(url)
    }

    /// Check a URL: scheme, then every address its host resolves to.
    pub async fn check(&self, url: &Url) -> Result<(), UrlRefused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlRefused::Scheme(url.scheme().to_string()));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        match url.host() {
            None => Err(UrlRefused::NoHost),
            Some(Host::Ipv4(v4)) => self.check_ip(&v4.to_string(), IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => self.check_ip(&v6.to_string(), IpAddr::V6(v6)),
            Some(Host::Domain(domain)) => {
                let host = domain.trim_end_matches('.').to_ascii_lowercase();
                if self.allow.iter().any(|r| r.allows_host(&host)) {
                    return Ok(());
                }
                if host == "localhost" || host.ends_with(".localhost") {
                    return Err(UrlRefused::Private {
                        host,
                        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    });
                }
                let ips =
                    self.resolver
                        .resolve(&host, port)
                        .await
                        .map_err(|e| UrlRefused::Dns {
                            host: host.clone(),
                            reason: e.to_string(),
                        })?;
                if ips.is_empty() {
                    return Err(UrlRefused::Dns {
                        host,
                        reason: "no addresses".into(),
                    });
                }
                // Every address must pass: Chromium may pick any of them.
                for ip in ips {
                    self.check_ip(&host, ip)?;
                }
                Ok(())
            }
        }
    }

    /// Check a URL the page requests (redirects, subresources). `data:`, `blob:` and
    /// `about:` stay inside the browser and pass.
    pub async fn check_request(&self, url: &str) -> Result<(), UrlRefused> {
        let parsed = Url::parse(url).map_err(|_| UrlRefused::Invalid(url.to_string()))?;
        match parsed.scheme() {
            "data" | "blob" | "about" => Ok(()),
            _ => self.check(&parsed).await,
        }
    }

    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), UrlRefused> {
        if !is_forbidden(ip) || self.allow.iter().any(|r| r.allows_ip(ip)) {
            Ok(())
        } else {
            Err(UrlRefused::Private {
                host: host.to_string(),
                ip,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str]) -> UrlGuard {
        let resolver = StaticResolver::only()
            .with("public.example", &["93.184.216.34".parse().unwrap()])
            .with("sneaky.example", &["10.0.0.1".parse().unwrap()])
            .with(
                "mixed.example",
                &["93.184.216.34".parse().unwrap(), "::1".parse().unwrap()],
            );
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        UrlGuard::new(&allow, Arc::new(resolver)).unwrap()
    }

    #[test]
    fn forbidden_ranges() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.19.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.251",
            // IPv4-compatible: the review's `[::127.0.0.1]`, in every spelling.
            "::127.0.0.1",
            "0:0:0:0:0:0:127.0.0.1",
            "::7f00:1",
            "::a9fe:a9fe",
            "::10.0.0.1",
            // IPv4-mapped and -translated.
            "::ffff:7f00:1",
            "0:0:0:0:0:ffff:127.0.0.1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a00:1",
            // NAT64 well-known and local-use prefixes.
            "64:ff9b::7f00:1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ab::1",
            // 6to4 of loopback, private and metadata addresses.
            "2002:7f00:1::",
            "2002:7f00:1::1",
            "2002:a00:1:1::5",
            "2002:c0a8:101::1",
            "2002:a9fe:a9fe::",
            // Teredo: a private server, or a private client (stored inverted).
            "2001:0:a00:1::1",
            "2001:0:808:808:0:0:80ff:fffe",
            // Multicast, site-local, unique-local, documentation, discard.
            "ff02::1",
            "ff05::2",
            "fec0::1",
            "fed0:1::5",
            "fc12:3456::1",
            "2001:db8::1",
            "3fff:1::1",
            "100::1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "172.32.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            // Teredo with a public server and the public client 8.8.8.8 (inverted: f7f7:f7f7).
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "2a00:1450:4001:81b::200e",
        ] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn refuses_what_the_issue_lists() {
        let g = guard(&[]);
        assert_eq!(
            g.check_input("file:///etc/passwd").await,
            Err(UrlRefused::Scheme("file".into()))
        );
        assert!(matches!(
            g.check_input("http://169.254.169.254/latest/meta-data")
                .await,
            Err(UrlRefused::Private { .. })
        ));
        assert!(matches!(
            g.check_input("http://127.0.0.1:8080/").await,
            Err(UrlRefused::Private { .. })
        ));
        assert!(matches!(
            g.check_input("http://[::1]/").await,
            Err(UrlRefused::Private { .. })
        ));
        assert!(matches!(
            g.check_input("http://localhost/").await,
            Err(UrlRefused::Private { .. })
        ));
        let e = g.check_input("https://sneaky.example/").await.unwrap_err();
        assert!(e.to_string().contains("10.0.0.1"), "{e}");
        assert!(matches!(
            g.check_input("https://mixed.example/").await,
            Err(UrlRefused::Private { .. })
        ));
        assert!(matches!(
            g.check_input("javascript:alert(1)").await,
            Err(UrlRefused::Scheme(_))
        ));
        assert!(g.check_input("https://public.example/x").await.is_ok());
        assert_eq!(
            g.check_input("public.example/x").await.unwrap().as_str(),
            "https://public.example/x"
        );
    }

    #[tokio::test]
    async fn ipv6_urls_carrying_a_private_ipv4_address_are_refused() {
        let g = guard(&[]);
        for url in [
            "http://[::127.0.0.1]/",
            "http://[::127.0.0.1]:8080/admin",
            "http://[0:0:0:0:0:0:127.0.0.1]/",
            "http://[::7f00:1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b::169.254.169.254]/latest/meta-data/",
            "http://[2002:7f00:1::]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[2001:0:a00:1::1]/",
            "http://[::]/",
            "http://[ff02::1]/",
            "http://[fec0::1]/",
            "http://[fd00::1]/",
            "http://[2001:db8::1]/",
        ] {
            assert!(
                matches!(g.check_input(url).await, Err(UrlRefused::Private { .. })),
                "{url} passed"
            );
            // The page's own requests (redirects, subresources) go through the same check.
            assert!(
                g.check_request(url).await.is_err(),
                "{url} passed as a request"
            );
        }
        // A name resolving to such an address is refused as well.
        let g = UrlGuard::new(
            &[],
            Arc::new(StaticResolver::only().with(
                "rebound.example",
                &[
                    "93.184.216.34".parse().unwrap(),
                    "::7f00:1".parse().unwrap(),
                ],
            )),
        )
        .unwrap();
        assert!(g.check_input("https://rebound.example/").await.is_err());
        assert!(
            guard(&[])
                .check_input("http://[2606:4700::1111]/")
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn allowlist_opens_hosts_and_networks() {
        let g = guard(&["127.0.0.1", "sneaky.example", "fd00::/8"]);
        assert!(g.check_input("http://127.0.0.1:9000/").await.is_ok());
        assert!(g.check_input("http://127.0.0.2/").await.is_err());
        assert!(g.check_input("https://sneaky.example/").await.is_ok());
        assert!(g.check_input("http://[fd00::5]/").await.is_ok());
        let g = guard(&["10.0.0.0/8", "*.corp.example"]);
        assert!(g.check_input("https://sneaky.example/").await.is_ok());
        assert!(g.check_input("http://192.168.0.1/").await.is_err());
        let rule = AllowRule::parse("*.corp.example").unwrap();
        assert!(rule.allows_host("wiki.corp.example"));
        assert!(!rule.allows_host("corp.example"));
    }

    #[tokio::test]
    async fn requests_from_the_page() {
        let g = guard(&[]);
        assert!(g.check_request("data:text/plain,hi").await.is_ok());
        assert!(g.check_request("blob:https://x/1").await.is_ok());
        assert!(g.check_request("http://10.1.2.3/x.png").await.is_err());
        assert!(g.check_request("ftp://public.example/").await.is_err());
    }

    #[test]
    fn allow_rules_parse() {
        assert!(AllowRule::parse("10.0.0.0/8").is_ok());
        assert!(AllowRule::parse("::1").is_ok());
        assert!(AllowRule::parse("[::1]").is_ok());
        assert!(AllowRule::parse("10.0.0.0/33").is_err());
        assert!(AllowRule::parse("x/8").is_err());
        assert!(AllowRule::parse("").is_err());
        assert!(AllowRule::parse("a*b").is_err());
    }
}
