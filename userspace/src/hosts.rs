//! Host names: how a request's Host (or a configured host name) is normalised, and the
//! bounded set of hosts that get their own `host` label.
//!
//! [`KnownHosts`] is built once where hosts are known (the agent, from `--host` and, in
//! Kubernetes, from Ingress and IngressRoute rules) and published to its readers: the
//! aggregator labels requests with it and the prober probes its hosts. Both therefore
//! normalise, deduplicate and bound the same way.

mod name;
#[cfg(test)]
mod tests;

pub use name::HostName;

/// DNS names are at most 253 characters; anything longer is not a host we could label.
pub const MAX_HOST_LEN: usize = 253;

/// The `host` label of anything not known.
pub const OTHER_HOST: &str = "other";

/// Bound on `host` label values (besides `other`); hosts past it count as `other`.
pub const MAX_KNOWN_HOSTS: usize = 1000;

/// A request's Host, normalised so that it can be compared with configured host names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Missing,
    /// Present but not a plausible host name (too long, control characters, non-ASCII,
    /// repeated with different values, …). Never echoed anywhere.
    Invalid,
    Name(HostName),
}

impl Host {
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n.as_str()),
            _ => None,
        }
    }
}

/// Normalise a Host header value (or configured host name): lowercase, port and trailing
/// dot stripped. Anything that is not a DNS name or an IP literal is [`Host::Invalid`].
pub fn normalize_host(raw: &[u8]) -> Host {
    let raw = raw.trim_ascii();
    if raw.is_empty() {
        return Host::Missing;
    }
    if raw.len() > MAX_HOST_LEN + 8 {
        return Host::Invalid;
    }
    let host = if raw[0] == b'[' {
        // IPv6 literal, `[::1]` or `[::1]:8080`.
        let Some(close) = raw.iter().position(|&b| b == b']') else {
            return Host::Invalid;
        };
        let (lit, rest) = raw.split_at(close + 1);
        if !valid_port_suffix(rest) || lit.len() < 3 {
            return Host::Invalid;
        }
        if !lit[1..lit.len() - 1]
            .iter()
            .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return Host::Invalid;
        }
        lit
    } else {
        let (name, rest) = match raw.iter().position(|&b| b == b':') {
            Some(i) => raw.split_at(i),
            None => (raw, &[][..]),
        };
        if !valid_port_suffix(rest) {
            return Host::Invalid;
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty() || name.len() > MAX_HOST_LEN {
            return Host::Invalid;
        }
        // One pass: letters, digits, `-`, `_` and dots, no leading dot, no empty label.
        let mut after_dot = true;
        for &b in name {
            match HOST_BYTE[usize::from(b)] {
                HostByte::Dot if after_dot => return Host::Invalid,
                HostByte::Dot => after_dot = true,
                HostByte::Label => after_dot = false,
                HostByte::Bad => return Host::Invalid,
            }
        }
        name
    };
    // Only ASCII survives the checks above.
    Host::Name(HostName::lowercase_ascii(host))
}

#[derive(Clone, Copy)]
enum HostByte {
    Bad,
    Dot,
    Label,
}

/// What each byte may be in a host name: a table lookup instead of a chain of tests.
static HOST_BYTE: [HostByte; 256] = {
    let mut t = [HostByte::Bad; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            t[b] = HostByte::Label;
        }
        b += 1;
    }
    t[b'.' as usize] = HostByte::Dot;
    t
};

fn valid_port_suffix(rest: &[u8]) -> bool {
    match rest {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// Hosts that get their own `host` label value: normalised like request Hosts
/// ([`normalize_host`]), deduplicated, at most [`MAX_KNOWN_HOSTS`] in the order given,
/// and [`OTHER_HOST`] for everything else. Derefs to the list of known hosts.
#[derive(Clone)]
pub struct KnownHosts {
    /// Label values by index: the known hosts, then [`OTHER_HOST`].
    labels: Vec<String>,
    /// Known host (its bytes, so that a request's host is looked up without a UTF-8
    /// check) → its index in `labels`.
    index: foldhash::HashMap<Box<[u8]>, usize>,
    /// Entries left out: invalid (wildcards included) or past the bound.
    dropped: usize,
}

impl KnownHosts {
    pub fn new<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut labels: Vec<String> = Vec::new();
        let mut index = foldhash::HashMap::default();
        let (mut invalid, mut over) = (0usize, 0usize);
        for h in hosts {
            if labels.len() >= MAX_KNOWN_HOSTS {
                // Past the bound a host is dropped either way, invalid or over; it is not
                // normalised (tens of thousands of tenant hosts, on every update), so a
                // spelling of a known host (`a.test:80` beside `a.test`) counts as dropped
                // too. Discovery's hosts come lowercased and deduplicated.
                over += 1;
                continue;
            }
            let Host::Name(n) = normalize_host(h.as_ref().as_bytes()) else {
                invalid += 1;
                continue;
            };
            if index.contains_key(n.as_bytes()) {
                continue;
            }
            index.insert(n.as_bytes().into(), labels.len());
            labels.push(n.as_str().to_string());
        }
        // Not logged here: the set is rebuilt on every discovery update, and whoever
        // publishes it logs a change of `dropped` (and exports it).
        labels.push(OTHER_HOST.to_string());
        KnownHosts {
            labels,
            index,
            dropped: invalid + over,
        }
    }

    /// The known hosts, without [`OTHER_HOST`].
    pub fn hosts(&self) -> &[String] {
        &self.labels[..self.labels.len() - 1]
    }

    /// Every `host` label value, [`OTHER_HOST`] last.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Entries left out: invalid (wildcards included) or past [`MAX_KNOWN_HOSTS`].
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// The index of [`OTHER_HOST`] in [`labels`](Self::labels).
    pub fn other(&self) -> usize {
        self.labels.len() - 1
    }

    /// The label index of a request's Host: a lookup of its bytes, no allocation.
    pub fn index_of(&self, host: &Host) -> usize {
        match host {
            Host::Name(n) => self
                .index
                .get(n.as_bytes())
                .copied()
                .unwrap_or(self.other()),
            _ => self.other(),
        }
    }

    /// The `host` label value of a request's Host.
    pub fn label_of(&self, host: &Host) -> &str {
        &self.labels[self.index_of(host)]
    }
}

/// The known hosts, as the list they are (without [`OTHER_HOST`]).
impl std::ops::Deref for KnownHosts {
    type Target = [String];

    fn deref(&self) -> &[String] {
        self.hosts()
    }
}

impl Default for KnownHosts {
    fn default() -> Self {
        KnownHosts::new(std::iter::empty::<&str>())
    }
}

/// Two sets are the same when they label the same hosts the same way.
impl PartialEq for KnownHosts {
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels
    }
}

impl Eq for KnownHosts {}

/// Compares the known hosts (without [`OTHER_HOST`]) with a list of names.
impl<S: AsRef<str>> PartialEq<Vec<S>> for KnownHosts {
    fn eq(&self, other: &Vec<S>) -> bool {
        self.hosts().len() == other.len()
            && self.hosts().iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl std::fmt::Debug for KnownHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownHosts")
            .field("hosts", &self.hosts())
            .field("dropped", &self.dropped)
            .finish()
    }
}
