//! A UDP socket read in batches: `recvmmsg(2)` fills up to [`BATCH`] datagrams per system
//! call, each with its sender and the socket's drop counter (`SO_RXQ_OVFL`), so the kernel's
//! own losses on this socket are known without reading `/proc`.
//!
//! socket2 creates the socket and sizes its receive buffer; the batched receive and the
//! drop-counter control message are raw `libc` calls, since neither socket2 nor tokio offers
//! `recvmmsg`, and nix would be a new dependency for two calls.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Datagrams per `recvmmsg` call.
pub const BATCH: usize = 32;
/// Room for the largest UDP datagram.
pub const MAX_DATAGRAM: usize = 65_535;

/// Opens a non-blocking UDP socket bound to `addr` with a receive buffer of `recv_buffer`
/// bytes (the kernel doubles and caps it; `SO_RCVBUFFORCE` is tried first so root gets the
/// size asked for past `net.core.rmem_max`) and the drop counter enabled.
pub fn bind(addr: SocketAddr, recv_buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    let size = libc::c_int::try_from(recv_buffer).unwrap_or(libc::c_int::MAX);
    if setsockopt(&socket, libc::SO_RCVBUFFORCE, size).is_err() {
        socket.set_recv_buffer_size(recv_buffer)?;
    }
    setsockopt(&socket, libc::SO_RXQ_OVFL, 1)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket.into())
}

fn setsockopt(socket: &Socket, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd, SOL_SOCKET, and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive buffers for one batch, reused for every call.
pub struct Batch {
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 8]>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    filled: usize,
    /// The latest `SO_RXQ_OVFL` value seen (the socket's drops since it was opened).
    pub kernel_drops: u32,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// Buffers for [`BATCH`] datagrams of up to [`MAX_DATAGRAM`] bytes.
    pub fn new() -> Self {
        Self {
            data: vec![0; BATCH * MAX_DATAGRAM],
            // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
            names: vec![unsafe { zeroed() }; BATCH],
            controls: vec![[0; 8]; BATCH],
            lens: [0; BATCH],
            truncated: [false; BATCH],
            filled: 0,
            kernel_drops: 0,
        }
    }

    /// Receives what is queued on `socket`, up to [`BATCH`] datagrams, without waiting:
    /// `WouldBlock` when nothing is.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.data[i * MAX_DATAGRAM..].as_mut_ptr().cast(),
            iov_len: MAX_DATAGRAM,
        });
        // SAFETY: mmsghdr is plain data for which all-zero is valid.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, header) in headers.iter_mut().enumerate() {
            header.msg_hdr.msg_name = (&raw mut self.names[i]).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &raw mut iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = size_of::<[u64; 8]>();
        }
        // SAFETY: every pointer in `headers` points into buffers owned by `self` or by this
        // frame (`iovecs`), all alive and of the sizes given, for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.filled = 0;
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0).min(BATCH);
        for (i, header) in headers.iter().take(n).enumerate() {
            self.lens[i] = (header.msg_len as usize).min(MAX_DATAGRAM);
            self.truncated[i] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            if let Some(drops) = rxq_ovfl(&header.msg_hdr) {
                self.kernel_drops = drops;
            }
        }
        self.filled = n;
        Ok(n)
    }

    /// Datagram `i` of the last batch, whether it was cut short, and its sender.
    pub fn get(&self, i: usize) -> Option<(&[u8], bool, Option<SocketAddr>)> {
        if i >= self.filled {
            return None;
        }
        let data = &self.data[i * MAX_DATAGRAM..i * MAX_DATAGRAM + self.lens[i]];
        Some((data, self.truncated[i], socket_addr(&self.names[i])))
    }
}

/// The sender's address the kernel wrote.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let sin = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                sin.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                sin6.sin6_addr.s6_addr,
                u16::from_be(sin6.sin6_port),
            )))
        }
        _ => None,
    }
}

/// The `SO_RXQ_OVFL` value of a received message's control data.
fn rxq_ovfl(header: &libc::msghdr) -> Option<u32> {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen, as their contract requires.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL {
                return Some(libc::CMSG_DATA(cmsg).cast::<u32>().read_unaligned());
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holds_each_datagram_and_its_sender() {
        let socket = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let to = socket.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            sender.send_to(&[i; 100], to).unwrap();
        }
        let mut batch = Batch::new();
        let mut got = Vec::new();
        while got.len() < 3 {
            match batch.recv(&socket) {
                Ok(n) => (0..n).for_each(|i| {
                    got.push(batch.get(i).map(|(d, t, s)| (d.to_vec(), t, s)).unwrap())
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        for (i, (data, truncated, from)) in got.into_iter().enumerate() {
            assert_eq!(data, vec![i as u8; 100]);
            assert!(!truncated);
            assert_eq!(from, Some(sender.local_addr().unwrap()));
        }
        assert_eq!(batch.kernel_drops, 0);
        assert!(matches!(batch.recv(&socket), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }

    #[test]
    fn the_kernel_drop_counter_is_read() {
        // A tiny buffer overflows at once.
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        socket.set_recv_buffer_size(1).unwrap();
        setsockopt(&socket, libc::SO_RXQ_OVFL, 1).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
            .bind(&SockAddr::from(
                "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            ))
            .unwrap();
        let socket: UdpSocket = socket.into();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..64 {
            sender
                .send_to(&[0; 1000], socket.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::new();
        while batch.recv(&socket).is_ok() {}
        // What was queued before the drops carries no count; the next datagram does.
        sender
            .send_to(&[0; 10], socket.local_addr().unwrap())
            .unwrap();
        assert_eq!(batch.recv(&socket).unwrap(), 1);
        assert!(batch.kernel_drops > 0, "no drops counted");
    }
}
