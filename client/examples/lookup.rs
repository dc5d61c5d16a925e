//! Asks the agent who this process is, then follows the agent with a local
//! cache and looks this process up in it.
//!
//! `PIDMAP_SOCKET` names the agent's socket (default /run/pidmap/pidmap.sock).

use pidmap_client::{Cache, Client, Settings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env();

    // One call: a round trip over the socket.
    let mut client = Client::connect(&settings).await?;
    let me = client.who_am_i().await?;
    let container = me.container.as_ref().map_or("-", |c| c.id.as_str());
    println!(
        "whoami: pid {} comm {} container {container}",
        me.pid,
        me.comm()
    );

    // A local copy fed by Watch: lookups are in-process, no round trip.
    let cache = Cache::spawn(settings.into());
    cache.wait_synced().await;
    match cache.get(me.pid, me.start_time) {
        Some(entry) => {
            let container = entry.container.as_ref().map_or("-", |c| c.id.as_str());
            let comm = entry.process.comm();
            println!("cached: pid {} comm {comm} container {container}", me.pid);
        }
        None => println!("cached: pid {} is not in the cache yet", me.pid),
    }
    Ok(())
}
