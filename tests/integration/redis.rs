//! A real `redis-server` for the tests that need one: started on a random loopback port without
//! persistence, stopped by PID.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{WAIT, free_port};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        // `free_port` releases the port before redis binds it; if another test took it meanwhile,
        // redis exits at once: try again on another port.
        for _ in 0..5 {
            if let Some(server) = Self::try_start_on(free_port()).await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Starts (or restarts) a server on `port` and waits until it answers PING.
    pub async fn start_on(port: u16) -> RedisServer {
        Self::try_start_on(port).await.unwrap_or_else(|| panic!("redis-server did not start on port {port}"))
    }

    /// `None` when the server exited (the port was taken) or did not answer in time.
    async fn try_start_on(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server; .ci/run does it)");
        let mut server = RedisServer { child: Some(child), port };
        let deadline = tokio::time::Instant::now() + WAIT;
        // Give a redis that cannot bind its port the time to exit before trusting a PONG.
        tokio::time::sleep(Duration::from_millis(100)).await;
        loop {
            let exited = server.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || tokio::time::Instant::now() >= deadline {
                server.stop();
                return None;
            }
            if server.ping().await {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut buf)).await, Ok(Ok(_)))
            && &buf == b"+PONG\r\n"
    }

    /// Stops the server (by PID) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
