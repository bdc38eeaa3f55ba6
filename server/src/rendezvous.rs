//! Where a gang may meet. c10d's rendezvous is unauthenticated: whoever node 0's claim names as the
//! rendezvous receives every member's connection, the broadcast state and every gradient. So a
//! claim may name only the address it came from, or one inside a network the operator declared
//! for gangs (`server serve --rendezvous-network CIDR`); a host name is resolved here and each of
//! its addresses checked the same way.
use std::net::IpAddr;
use std::time::Duration;

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let base: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a network such as 10.0.0.0/8 or fd00::/8"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => max,
            p => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Network { base, prefix })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                masked(u32::from(b).into(), u32::from(a).into(), self.prefix, 32)
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => masked(b.into(), a.into(), self.prefix, 128),
            _ => false,
        }
    }
}

/// Whether `a` and `b` agree in their first `prefix` bits of `width`.
fn masked(b: u128, a: u128, prefix: u8, width: u32) -> bool {
    let shift = width - u32::from(prefix);
    shift >= width || (a >> shift) == (b >> shift)
}

/// An IPv4 address carried in IPv6 (`::ffff:a.b.c.d`, as a dual-stack socket reports a v4 peer)
/// is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How long a rendezvous host name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Ok when `addr` (an address or a host name) is `peer`'s own address or lies inside one of
/// `networks`; else why not, for the claim's 422.
pub async fn check(addr: &str, peer: Option<IpAddr>, networks: &[Network]) -> Result<(), String> {
    let ips: Vec<IpAddr> = match addr.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => resolve(addr).await?,
    };
    let allowed = |ip: IpAddr| own_address(peer, ip) || networks.iter().any(|n| n.contains(ip));
    match ips.iter().find(|&&ip| !allowed(ip)) {
        None => Ok(()),
        Some(ip) => Err(format!(
            "rendezvous: {addr} ({ip}) is neither the address this claim came from ({}) nor inside a \
             network the coordinator allows for gangs ({}); a gang's node 0 must offer its own \
             address (worker run --advertise-addr), or the operator names the cluster's network \
             with server serve --rendezvous-network CIDR",
            peer.map_or("unknown".to_string(), |p| canonical(p).to_string()),
            match networks {
                [] => "none set".to_string(),
                n => n.iter().map(Network::to_string).collect::<Vec<_>>().join(", "),
            }
        )),
    }
}

/// `ip` is the claim's own host: its address, or any loopback address for a claim over loopback
/// (`localhost` resolves to both 127.0.0.1 and ::1).
fn own_address(peer: Option<IpAddr>, ip: IpAddr) -> bool {
    let (ip, Some(peer)) = (canonical(ip), peer.map(canonical)) else {
        return false;
    };
    ip == peer || (ip.is_loopback() && peer.is_loopback())
}

async fn resolve(name: &str) -> Result<Vec<IpAddr>, String> {
    let lookup = tokio::net::lookup_host((name, 0));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => {
            let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            match ips.is_empty() {
                true => Err(format!("rendezvous: {name} resolves to no address here")),
                false => Ok(ips),
            }
        }
        Ok(Err(e)) => Err(format!("rendezvous: {name} does not resolve here ({e})")),
        Err(_) => Err(format!(
            "rendezvous: {name} did not resolve within {}s",
            RESOLVE_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain_what_they_should() {
        let n = net("10.1.0.0/16");
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()), "v4-mapped");
        assert!(net("0.0.0.0/0").contains("203.0.113.66".parse().unwrap()));
        assert!(net("192.0.2.7").contains("192.0.2.7".parse().unwrap()));
        assert!(!net("192.0.2.7").contains("192.0.2.8".parse().unwrap()));
        assert!(net("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!net("fd00::/8").contains("fe80::1".parse().unwrap()));
        assert!(!net("fd00::/8").contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "cluster", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_rendezvous_is_the_claims_own_address_or_inside_a_declared_network() {
        let peer = Some("127.0.0.1".parse().unwrap());
        assert!(check("127.0.0.1", peer, &[]).await.is_ok());
        assert!(check("localhost", peer, &[]).await.is_ok(), "resolved");
        let far = check("203.0.113.66", peer, &[]).await.unwrap_err();
        assert!(
            far.contains("203.0.113.66") && far.contains("--rendezvous-network"),
            "{far}"
        );
        assert!(check("169.254.169.254", peer, &[]).await.is_err());
        assert!(check("203.0.113.66", peer, &[net("203.0.113.0/24")])
            .await
            .is_ok());
        assert!(check("203.0.113.66", None, &[]).await.is_err());
    }
}
