//! Give memory the daemon has freed back to the system once it goes quiet.
//!
//! Why: glibc's malloc keeps what a thread freed in that thread's arena and only returns
//! the top of each arena, so after a burst (the start-up load of the thread views, a
//! search over 70,000 hits, an import) the process stays at its high-water mark long
//! after the memory is free: about 11 MB on the 90k-message benchmark archive. For a
//! list server that idles most of the day on a small machine that is memory taken from
//! everything else. `malloc_trim(0)` hands the free pages back.
//!
//! When: a tick every [`TICK`] reads the process's CPU time; when a tick finds the process
//! idle (under [`IDLE_TICKS`] of CPU since the last one) after it has done at least
//! [`WORK_TICKS`] of work since the last trim, it trims once. So a busy daemon never
//! trims (trimming mid-load would cost page faults later and stall allocating threads
//! while glibc walks its arenas) and an idle one trims once per burst, not every tick.
//!
//! [`limit_arenas`] caps glibc's arenas at start-up for the same reason: freed memory stays
//! in the arena it was freed in.
//!
//! These two glibc calls and `nice.rs`'s are the only uses of `unsafe` in the workspace (ARCHITECTURE.md,
//! "Memory").

use std::time::Duration;

/// How often the process's CPU time is read.
pub const TICK: Duration = Duration::from_secs(2);
/// CPU clock ticks (1/100 s) under which a tick counts as idle.
const IDLE_TICKS: u64 = 2;
/// CPU clock ticks of work since the last trim that make a trim worth it: any measurable
/// work (a trim costs about a millisecond; a few page views free megabytes).
const WORK_TICKS: u64 = 1;

/// Decides when to trim, from successive readings of the process's CPU time.
#[derive(Debug, Default)]
pub struct Trigger {
    last: Option<u64>,
    work: u64,
}

impl Trigger {
    /// Feed one reading (cumulative CPU ticks); true when the allocator should be trimmed.
    pub fn observe(&mut self, cpu: u64) -> bool {
        let Some(last) = self.last.replace(cpu) else {
            return false;
        };
        let delta = cpu.saturating_sub(last);
        self.work = self.work.saturating_add(delta);
        if delta < IDLE_TICKS && self.work >= WORK_TICKS {
            self.work = 0;
            return true;
        }
        false
    }
}

/// utime + stime of this process, in clock ticks, from `/proc/self/stat`.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_ascii_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code, reason = "malloc_trim is a plain glibc call")]
fn malloc_trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and has no preconditions; glibc serialises it
    // against other allocator calls with its own arena locks.
    unsafe { libc::malloc_trim(0) != 0 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_trim() -> bool {
    false
}

/// How many malloc arenas the daemon lets glibc make (its default is 8 per core).
const ARENAS: i32 = 2;

/// Cap glibc's malloc arenas at [`ARENAS`], unless the operator chose a number
/// (`MALLOC_ARENA_MAX` or a `glibc.malloc.arena_max` tunable). Call before any thread starts.
///
/// Why: every thread that allocates while the others hold their arenas gets one more, and an
/// arena keeps what was freed in it. Measured on the benchmark archive (ARCHITECTURE.md,
/// "Memory"): the first daemon run after a bulk import idled at 65.7 MiB PSS with one more
/// arena of 4–7 MiB, and at 62.4 MiB with two arenas. Ingest throughput did not change
/// beyond the run-to-run noise in three paired probes (an earlier measurement, with a low
/// trim threshold as well, put the cost at about 6 %). The systemd unit in `deploy/` set the same through the environment; this makes
/// every way of starting the daemon behave alike. Returns true when the cap was set here.
pub fn limit_arenas() -> bool {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    !chosen && set_arena_max(ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code, reason = "mallopt is a plain glibc call")]
fn set_arena_max(n: i32) -> bool {
    // SAFETY: mallopt takes two integers and no pointers; M_ARENA_MAX only bounds how many
    // arenas glibc creates from now on.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_: i32) -> bool {
    false
}

/// Run until the runtime shuts down: trim after each burst of work.
pub async fn run() {
    if cpu_ticks().is_none() {
        tracing::debug!("no /proc/self/stat: the allocator is never trimmed");
        return;
    }
    let mut trigger = Trigger::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cpu) = cpu_ticks() else { continue };
        if trigger.observe(cpu) {
            let released = tokio::task::spawn_blocking(malloc_trim).await.unwrap_or(false);
            tracing::debug!(released, "idle: returned freed memory to the system");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_burst_and_never_under_load() {
        let mut t = Trigger::default();
        assert!(!t.observe(100), "the first reading only sets the baseline");
        assert!(!t.observe(100), "idle without work since: nothing to give back");
        // Under load: never.
        let mut cpu = 100;
        for _ in 0..10 {
            cpu += 150;
            assert!(!t.observe(cpu));
        }
        assert!(t.observe(cpu + 1), "the first quiet tick after the burst trims");
        for _ in 0..5 {
            assert!(!t.observe(cpu + 1), "and only once: no work since");
        }
        // A few requests later (a little work, then quiet): one more trim.
        assert!(t.observe(cpu + 1 + WORK_TICKS), "quiet tick after a little work");
        assert!(!t.observe(cpu + 1 + WORK_TICKS));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_arena_cap() {
        assert!(set_arena_max(ARENAS), "mallopt(M_ARENA_MAX) refused");
    }

    #[test]
    fn reads_this_process_cpu_time() {
        let Some(a) = cpu_ticks() else {
            panic!("/proc/self/stat is readable on Linux");
        };
        // Burn a little CPU so the counter moves.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = cpu_ticks().unwrap_or(0);
        assert!(b > a, "{a} -> {b}");
    }
}
