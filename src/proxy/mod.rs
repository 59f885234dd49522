//! The edge proxy: one decision, two transports.
//!
//! - [`decide`]: what crossfade does with a request ([`decide::plan`], a pure function) and the
//!   headers it sets on answers; no I/O.
//! - [`conn`]: the client connection (limits, the head clock, request framing, the loop that
//!   offers each HTTP/1 request to the fast transport and hands the rest to pingora).
//! - [`fast`]: the HTTP/1.1 fast transport: plain hits from the cache, known passes relayed by
//!   its own origin client.
//! - [`hooks`]: pingora's `ProxyHttp` for crossfade, the transport for everything else (HTTP/2,
//!   misses, revalidations, ranges, bodies).
//!
//! Both transports call [`decide::plan`] and the shared builders; what differs is only how bytes
//! are read and written.

pub mod conn;
pub mod decide;
pub mod fast;
pub mod hooks;

pub use hooks::EdgeProxy;
