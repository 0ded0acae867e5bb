//! Debouncing: wait for a burst of changes to settle, but never longer than a maximum delay, so
//! a thousand applies cost a handful of compiles and a steady trickle still gets published.

use std::time::Duration;

use crate::source::Changes;

/// Quiet period and maximum delay.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// How long no change must arrive before the rebuild starts.
    pub quiet: Duration,
    /// The longest a rebuild waits after the first change of a burst.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce { quiet: Duration::from_millis(50), max_delay: Duration::from_millis(500) }
    }
}

impl Debounce {
    /// Called after a first change arrived: returns once no change arrived for `quiet`, or
    /// `max_delay` after the call, whichever comes first.
    pub async fn settle(&self, changes: &Changes) {
        let deadline = tokio::time::Instant::now() + self.max_delay;
        loop {
            let quiet_until = (tokio::time::Instant::now() + self.quiet).min(deadline);
            tokio::select! {
                _ = changes.changed() => {
                    if tokio::time::Instant::now() >= deadline {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(quiet_until) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::Kind;

    /// 1,000 applies, one every 2 ms (2 s in all), cost a handful of rebuilds.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_a_thousand_changes_costs_a_handful_of_rebuilds() {
        let changes = Changes::default();
        let producer = {
            let changes = changes.clone();
            tokio::spawn(async move {
                for _ in 0..1000 {
                    changes.mark(Kind::Route);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let debounce = Debounce { quiet: Duration::from_millis(50), max_delay: Duration::from_millis(500) };
        let mut rebuilds = 0;
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => break,
            }
            debounce.settle(&changes).await;
            if changes.take().kinds.is_empty() {
                continue;
            }
            rebuilds += 1;
        }
        producer.await.unwrap_or_else(|e| panic!("{e}"));
        assert!((2..=6).contains(&rebuilds), "{rebuilds} rebuilds for 1,000 changes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_change_waits_only_the_quiet_period() {
        let changes = Changes::default();
        changes.mark(Kind::Route);
        let debounce = Debounce { quiet: Duration::from_millis(50), max_delay: Duration::from_secs(10) };
        changes.changed().await;
        let start = tokio::time::Instant::now();
        debounce.settle(&changes).await;
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }
}
