//! A private `nats-server` with JetStream on loopback, killed (and its storage removed)
//! when its guard is dropped, also when the test panics.

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis_server::{free_port, temp_dir, wait_until};

pub struct NatsServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl NatsServer {
    /// A server with JetStream on a free port.
    pub fn start() -> Self {
        for _ in 0..5 {
            let (port, dir) = (free_port(), temp_dir("nats"));
            let child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run nats-server (scripts/services.sh installs it): {e}")
                });
            let mut server = Self { child, port, dir };
            // Up, or gone: another process may have taken the port since it was found
            // free, and the server then exits; try another.
            let mut exited = false;
            let settled = wait_until(Duration::from_secs(10), || {
                exited = matches!(server.child.try_wait(), Ok(Some(_)));
                exited || TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            });
            if settled && !exited {
                return server;
            }
            assert!(exited, "nats-server did not start on port {port}");
        }
        panic!("nats-server exited at every start; is its port range taken?");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
