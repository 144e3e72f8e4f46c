//! Source addresses for the load generator's connections: one address
//! has about 28,000 ephemeral ports toward one server port, so a million
//! connections from one machine spread over many (`--source-ips
//! 127.0.0.2-127.0.0.200`, every address of 127.0.0.0/8 is local).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::str::FromStr;

use anyhow::{Context, bail};

/// Addresses to bind before connecting, used in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIps(Vec<IpAddr>);

/// Addresses one range may hold.
const ADDRESSES_MAX: u32 = 1 << 16;

impl FromStr for SourceIps {
    type Err = anyhow::Error;

    /// `A-B` (IPv4, inclusive) or a comma-separated list of addresses.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        if let Some((first, last)) = text.split_once('-') {
            let first: Ipv4Addr = first.trim().parse().with_context(|| format!("{first:?} is not an IPv4 address"))?;
            let last: Ipv4Addr = last.trim().parse().with_context(|| format!("{last:?} is not an IPv4 address"))?;
            let (low, high) = (u32::from(first), u32::from(last));
            if high < low {
                bail!("the range {text} runs backwards");
            }
            if high - low >= ADDRESSES_MAX {
                bail!("the range {text} holds more than {ADDRESSES_MAX} addresses");
            }
            return Ok(SourceIps((low..=high).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))).collect()));
        }
        let ips = text
            .split(',')
            .map(|ip| ip.trim().parse::<IpAddr>().with_context(|| format!("{ip:?} is not an IP address")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if ips.is_empty() {
            bail!("no source address");
        }
        Ok(SourceIps(ips))
    }
}

impl std::fmt::Display for SourceIps {
    /// The addresses as a comma-separated list (which parses back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(IpAddr::to_string).collect();
        f.write_str(&list.join(","))
    }
}

impl SourceIps {
    /// The address for connection `n`.
    pub fn for_connection(&self, n: usize) -> IpAddr {
        self.0[n % self.0.len()]
    }
}

/// A socket bound to `source`, connecting (not blocking) to `target`.
fn bound(source: IpAddr, target: SocketAddr) -> std::io::Result<socket2::Socket> {
    let domain = if target.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    // Many connections share one address and port range: let the kernel
    // pick the port at connect time, per destination.
    if source.is_ipv4() {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the right size.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => Ok(socket),
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(error) => Err(error),
    }
}

/// A glommio stream from `source` to `target`. The connect finishes in the
/// background; the first write waits for it (io_uring polls the socket).
pub fn glommio_stream(source: IpAddr, target: SocketAddr) -> anyhow::Result<glommio::net::TcpStream> {
    let socket = bound(source, target).with_context(|| format!("connecting from {source} to {target}"))?;
    // SAFETY: the descriptor is a TCP socket this function owns; the stream
    // takes it over.
    Ok(unsafe { glommio::net::TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// A blocking std stream from `source` to `target`.
pub fn std_stream(source: IpAddr, target: SocketAddr) -> anyhow::Result<std::net::TcpStream> {
    let socket = bound(source, target).with_context(|| format!("connecting from {source} to {target}"))?;
    socket.set_nonblocking(false)?;
    let stream: std::net::TcpStream = socket.into();
    // Wait for the connect to finish (writable) before handing it over.
    let mut poll = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&stream), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
    if ready != 1 {
        bail!("connecting from {source} to {target}: timed out");
    }
    if let Some(error) = stream.take_error()? {
        return Err(error).with_context(|| format!("connecting from {source} to {target}"));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists_parse() {
        let range: SourceIps = "127.0.0.2-127.0.0.4".parse().unwrap();
        assert_eq!(range.for_connection(3), range.for_connection(0), "three addresses, in turn");
        assert_eq!(range.for_connection(0), "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(range.for_connection(4), "127.0.0.3".parse::<IpAddr>().unwrap());
        let list: SourceIps = "127.0.0.9, 127.0.0.7".parse().unwrap();
        assert_eq!(list.for_connection(1), "127.0.0.7".parse::<IpAddr>().unwrap());
        assert!("127.0.0.9-127.0.0.1".parse::<SourceIps>().is_err());
        assert!("10.0.0.0-10.2.0.0".parse::<SourceIps>().is_err());
        assert!("nope".parse::<SourceIps>().is_err());
        assert_eq!(range.to_string().parse::<SourceIps>().unwrap(), range, "the list form parses back");
    }

    #[test]
    fn a_std_stream_connects_from_its_source() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std_stream("127.0.0.3".parse().unwrap(), listener.local_addr().unwrap()).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(stream.local_addr().unwrap().ip(), peer.ip());
    }

    #[test]
    fn a_glommio_stream_connects_from_its_source_and_writes_once_connected() {
        use futures_lite::AsyncWriteExt;
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let accepted = std::thread::spawn(move || {
            let (mut stream, peer) = listener.accept().unwrap();
            let mut text = [0u8; 5];
            stream.read_exact(&mut text).unwrap();
            (peer.ip(), text)
        });
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 << 10)
            .spawn(move || async move {
                let mut stream = glommio_stream("127.0.0.5".parse().unwrap(), target).unwrap();
                stream.write_all(b"hello").await.unwrap();
                stream.flush().await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        let (peer, text) = accepted.join().unwrap();
        assert_eq!(peer, "127.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(&text, b"hello");
    }
}
