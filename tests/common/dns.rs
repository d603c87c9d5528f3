//! A DNS server the test controls, for `dns:///` upstreams: [`TestDns`] answers `A` queries over
//! UDP on a free loopback port with the addresses a test set for each name (TTL 0), an empty
//! answer for `AAAA`, `SERVFAIL` for a name set to fail, `NXDOMAIN` for any other name.
//!
//! One server per test binary ([`TestDns::shared`]): nodes find it through
//! `PPP_TEST_DNS_SERVER`, an environment variable of the whole process, set once before the
//! first node of the binary starts. Tests keep to names of their own.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex, OnceLock},
};

use hickory_resolver::proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
};

/// What the server answers for one name.
#[derive(Debug, Clone)]
pub enum DnsAnswer {
    /// These addresses (none: an empty answer).
    Addresses(Vec<Ipv4Addr>),
    /// `SERVFAIL`: the resolution fails.
    Fail,
}

/// The test's DNS server: a cheap handle.
#[derive(Clone)]
pub struct TestDns {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    names: Arc<Mutex<HashMap<String, DnsAnswer>>>,
}

impl TestDns {
    /// The binary's server, started (and `PPP_TEST_DNS_SERVER` set) on first use.
    pub fn shared() -> Self {
        static SHARED: OnceLock<TestDns> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let dns = Self::start();
                // SAFETY: set once, before any node of this binary starts (each test calls this
                // before starting one), and nothing else in the binary writes the environment.
                unsafe { std::env::set_var("PPP_TEST_DNS_SERVER", dns.addr.to_string()) };
                dns
            })
            .clone()
    }

    /// Starts a server on its own thread (it outlives every test's runtime).
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dns = Self { addr: socket.local_addr().unwrap(), names: Arc::default() };
        let names = dns.names.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if let Some(reply) = answer(&names, &buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        dns
    }

    /// Sets what `name` resolves to.
    pub fn set(&self, name: &str, answer: DnsAnswer) {
        self.names.lock().unwrap().insert(key(name), answer);
    }
}

/// Names are matched without case and without the final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The reply to one query message, if it is one.
fn answer(names: &Mutex<HashMap<String, DnsAnswer>>, packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    let question = query.queries.first()?.clone();
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(question.clone());
    let known = names.lock().unwrap().get(&key(&question.name().to_string())).cloned();
    match known {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(DnsAnswer::Fail) => reply.metadata.response_code = ResponseCode::ServFail,
        Some(DnsAnswer::Addresses(ips)) if question.query_type() == RecordType::A => {
            for ip in ips {
                reply.add_answer(Record::from_rdata(question.name().clone(), 0, RData::A(A(ip))));
            }
        }
        Some(DnsAnswer::Addresses(_)) => {}
    }
    reply.to_vec().ok()
}
