//! Socket tuning: the UDP buffers.

/// The socket buffers the kernel granted, bytes (as usable for data: Linux reports twice the
/// size asked for, half of it for its own bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Receive buffer.
    pub receive: usize,
    /// Send buffer.
    pub send: usize,
}

/// Ask for `bytes` of receive and send buffer on `socket`. Unprivileged, the kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`; with `CAP_NET_ADMIN` (root) the cap is lifted.
/// Returns what was granted; the caller warns when it is less than asked.
///
/// ## Platform-specific
/// - **Linux:** `SO_RCVBUF`/`SO_SNDBUF`, then `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` if short.
/// - **Other Unix:** `SO_RCVBUF`/`SO_SNDBUF`.
/// - **Windows:** left as the system sets it (returns zeros).
pub fn size_socket_buffers(socket: &tokio::net::UdpSocket, bytes: usize) -> SocketBuffers {
    #[cfg(unix)]
    {
        use rustix::net::sockopt;
        let half = if cfg!(target_os = "linux") { 2 } else { 1 };
        let _ = sockopt::set_socket_recv_buffer_size(socket, bytes);
        let _ = sockopt::set_socket_send_buffer_size(socket, bytes);
        #[cfg(target_os = "linux")]
        {
            if sockopt::socket_recv_buffer_size(socket).unwrap_or(0) / half < bytes {
                let _ = sockopt::set_socket_recv_buffer_size_force(socket, bytes);
            }
            if sockopt::socket_send_buffer_size(socket).unwrap_or(0) / half < bytes {
                let _ = sockopt::set_socket_send_buffer_size_force(socket, bytes);
            }
        }
        SocketBuffers {
            receive: sockopt::socket_recv_buffer_size(socket).unwrap_or(0) / half,
            send: sockopt::socket_send_buffer_size(socket).unwrap_or(0) / half,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (socket, bytes);
        SocketBuffers { receive: 0, send: 0 }
    }
}
